from django.urls import path

from control_plane.oauth import apis

urlpatterns = [
    path("oauth/applications", apis.ApplicationListCreateApi.as_view(), name="oauth-applications"),
    path("oauth/applications/<int:application_id>", apis.ApplicationDetailApi.as_view(),
         name="oauth-application-detail"),
    path("oauth/applications/<int:application_id>/rotate-secret", apis.ApplicationSecretRotateApi.as_view(),
         name="oauth-application-rotate-secret"),
]
