"""The authorization server's endpoints, at the server root (RFC 8414 puts the metadata under /.well-known).

The namespace is django-oauth-toolkit's, whose views reverse their siblings by these names.
"""

from django.urls import path
from oauth2_provider.views import RevokeTokenView, TokenView

from control_plane.oauth import views

app_name = "oauth2_provider"

urlpatterns = [
    path(".well-known/oauth-authorization-server", views.ServerMetadataView.as_view(), name="oauth-server-metadata"),
    path(".well-known/jwks.json", views.JwksView.as_view(), name="jwks"),
    path("oauth/authorize", views.TenantAuthorizationView.as_view(), name="authorize"),
    path("oauth/token", TokenView.as_view(), name="token"),
    path("oauth/revoke", RevokeTokenView.as_view(), name="revoke-token"),
    path("oauth/introspect", views.IntrospectView.as_view(), name="introspect"),
]
