from django.urls import path

from encryption import apis

urlpatterns = [
    path("platform/tenants/<slug:slug>/encryption", apis.PlatformTenantEncryptionApi.as_view(),
         name="platform-tenant-encryption"),
]
