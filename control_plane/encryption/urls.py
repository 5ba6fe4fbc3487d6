from django.urls import path

from control_plane.encryption import apis

urlpatterns = [
    path("platform/tenants/<slug:slug>/encryption", apis.PlatformTenantEncryptionApi.as_view(),
         name="platform-tenant-encryption"),
]
