from django.urls import path

from billing import stripe_apis as apis

urlpatterns = [
    path("billing", apis.BillingOverviewApi.as_view(), name="billing"),
    path("billing/stripe/webhook", apis.StripeWebhookApi.as_view(), name="billing-stripe-webhook"),
    path("platform/tenants/<slug:slug>/billing", apis.PlatformTenantBillingApi.as_view(),
         name="platform-tenant-billing"),
    path("platform/tenants/<slug:slug>/billing/tier", apis.PlatformTenantBillingTierApi.as_view(),
         name="platform-tenant-billing-tier"),
    path("platform/tenants/<slug:slug>/billing/cancel", apis.PlatformTenantBillingCancelApi.as_view(),
         name="platform-tenant-billing-cancel"),
]
