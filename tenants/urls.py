from django.urls import path

from tenants import apis

urlpatterns = [
    path("tenant", apis.TenantSelfApi.as_view(), name="tenant-self"),
    path("api-keys", apis.ApiKeyListCreateApi.as_view(), name="api-keys"),
    path("api-keys/<uuid:key_id>", apis.ApiKeyDetailApi.as_view(), name="api-key-detail"),
    path("api-keys/<uuid:key_id>/revoke", apis.ApiKeyRevokeApi.as_view(), name="api-key-revoke"),
    path("platform/tenants", apis.PlatformTenantListCreateApi.as_view(), name="platform-tenants"),
    path("platform/tenants/<slug:slug>", apis.PlatformTenantDetailApi.as_view(), name="platform-tenant-detail"),
    path("platform/tenants/<slug:slug>/suspend", apis.PlatformTenantSuspendApi.as_view(),
         name="platform-tenant-suspend"),
    path("platform/tenants/<slug:slug>/reactivate", apis.PlatformTenantReactivateApi.as_view(),
         name="platform-tenant-reactivate"),
    path("platform/tenants/<slug:slug>/api-keys", apis.PlatformTenantApiKeyCreateApi.as_view(),
         name="platform-tenant-api-keys"),
]
