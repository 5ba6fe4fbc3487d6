"""The API accepts our OAuth access tokens (JWTs) as ``Authorization: Bearer <token>``, beside API keys.

Like API keys, a token selects its tenant and the connection enters that tenant's schema; the principal's
scopes are what the token holds now (see control_plane.oauth.services.access_token_authenticate).
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from control_plane.oauth import services, tokens
from control_plane.oauth.services import OAuthGrant
from tenants.authentication import TenantPrincipal, auth_limiter, bearer_token, presented_credential_id
from tenants.errors import CredentialTenantMismatch, InvalidCredentials


class OAuthAccessTokenAuthentication(BaseAuthentication):
    """Authenticates an OAuth access token and enters its tenant's schema. Any bearer token that is neither an
    API key (tried before) nor one of our JWTs is refused here with a clear 401."""

    def authenticate(self, request: Request) -> tuple[TenantPrincipal, OAuthGrant] | None:
        token = bearer_token(request)
        if token is None:
            return None
        with auth_limiter().attempt(address=request.META.get("REMOTE_ADDR"),
                                    credential_id=presented_credential_id(token)):
            if not tokens.is_access_token(token):
                raise InvalidCredentials("The bearer token is neither an API key (agp_…) nor an OAuth access token.")
            grant = services.access_token_authenticate(raw=token)
        host_tenant = getattr(request._request, "tenant", None)
        if host_tenant is not None and host_tenant.schema_name != "public" and host_tenant.pk != grant.tenant.pk:
            raise CredentialTenantMismatch("This token belongs to a different tenant than this hostname.")
        connection.set_tenant(grant.tenant)
        request._request.tenant = grant.tenant
        return TenantPrincipal(tenant=grant.tenant, actor=grant.actor, scopes=grant.scopes,
                               credential=f"oauth_token:{grant.access_token_id}"), grant

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="agentplane"'


class OAuthAccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "control_plane.oauth.authentication.OAuthAccessTokenAuthentication"
    name = "OAuth2"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "oauth2", "description": "An OAuth 2.0 access token (a JWT) from /oauth/token.",
                "flows": {"clientCredentials": {"tokenUrl": "/oauth/token/", "scopes": {}},
                          "authorizationCode": {"authorizationUrl": "/oauth/authorize/", "tokenUrl": "/oauth/token/",
                                                "scopes": {}}}}
