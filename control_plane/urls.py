from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from control_plane import health
from control_plane.audit.apis import AuditChainVerifyApi, AuditEventExportApi, AuditEventListApi

api_v1 = [
    path("", include("tenants.urls")),
    path("", include("data_plane.urls")),
    path("", include("guardrails.urls")),
    path("", include("billing.urls")),  # /v1/usage…, /v1/platform/finance/report
    path("", include("billing.budget_urls")),  # /v1/budgets, /v1/budget-alerts, /v1/quotas/tokens
    path("", include("control_plane.identity.urls")),  # /v1/auth/..., /v1/members, /v1/invitations
    path("", include("control_plane.encryption.urls")),
    path("", include("billing.slo_urls")),  # /v1/slos, /v1/platform/slos
    path("", include("billing.stripe_urls")),  # /v1/billing, the Stripe webhook, operator billing routes
    path("", include("billing.quota_urls")),  # /v1/quotas
    path("audit-events", AuditEventListApi.as_view(), name="audit-events"),
    path("audit-events/verify", AuditChainVerifyApi.as_view(), name="audit-events-verify"),
    path("audit-events/export", AuditEventExportApi.as_view(), name="audit-events-export"),
    path("", include("control_plane.oauth.api_urls")),
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi-schema"),
    path("docs", SpectacularSwaggerSplitView.as_view(url_name="openapi-schema"), name="api-docs"),
    path("redoc", SpectacularRedocView.as_view(url_name="openapi-schema"), name="api-redoc"),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("v1/", include(api_v1)),
    path("accounts/", include("control_plane.identity.web_urls")),  # portal sign-in pages (LOGIN_URL)
    path("", include("control_plane.oauth.urls")),  # /oauth/… and /.well-known/… (the authorization server)
]

handler400 = "common.problems.handler400"
handler403 = "common.problems.handler403"
handler404 = "common.problems.handler404"
handler500 = "common.problems.handler500"
