"""Tenant resolution by credential: a bearer API key selects its tenant and that tenant's schema.

DRF authenticates at the start of every view, before permissions and the handler, so switching the
connection here means every query the view makes runs in the key's tenant schema. The middleware
puts the connection back on the public schema before the next request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jwt
from django.conf import settings
from django.db import connection
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from common.actors import Actor
from common.keys import parse_key
from common.rate_limits import AuthFailureLimiter, auth_failure_limiter
from tenants import services
from tenants.errors import CredentialTenantMismatch, InvalidCredentials
from tenants.models import ApiKey, OperatorKey, Tenant


@dataclass(frozen=True)
class TenantPrincipal:
    """The caller of a tenant endpoint, in one tenant, with the scopes it holds there.

    ``actor`` says who: an API key (kind api_key), a portal user (user), an OAuth client acting for itself
    (oauth_client). Every permission check reads ``scopes`` only, whatever the kind of credential.
    """

    tenant: Tenant
    actor: Actor
    scopes: frozenset[str] = field(default_factory=frozenset)
    is_authenticated: bool = True
    # The credential presented, "<kind>:<id>" (api_key:<key id>, oauth_token:<access token id>): what a token
    # derived from it (a stream token) is re-checked against.
    credential: str = ""

    @property
    def key_id(self) -> str | None:
        """The API key's id when the caller is an API key, else None."""
        return self.actor.id if self.actor.kind == "api_key" else None


@dataclass(frozen=True)
class OperatorPrincipal:
    key_id: str
    name: str
    is_authenticated: bool = True

    @property
    def actor(self) -> Actor:
        return Actor(kind="operator_key", id=self.key_id, label=self.name)


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without a header.

    Raises InvalidCredentials for any other shape of header.
    """
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidCredentials("Send the key as 'Authorization: Bearer <key>'.")
    return token.strip()


def bearer_token(request: Request) -> str | None:
    return parse_bearer(get_authorization_header(request).decode("latin-1"))


def auth_limiter() -> AuthFailureLimiter:
    """The limiter of failed authentications (AUTH_RATE_LIMIT_* settings); for every credential check,
    and for future login or OAuth endpoints."""
    return auth_failure_limiter(per_address=settings.AUTH_RATE_LIMIT_PER_ADDRESS,
                                per_credential=settings.AUTH_RATE_LIMIT_PER_CREDENTIAL,
                                redis_url=settings.RATE_LIMIT_REDIS_URL, key_prefix=settings.RATE_LIMIT_KEY_PREFIX)


def presented_credential_id(presented: str | None) -> str | None:
    """The public id of a presented credential, to count its failures by: ``agp:<lookup id>`` of a key, or
    ``stream:<key id>`` of a stream token (its unverified subject); None for anything else. Never the secret."""
    if not presented:
        return None
    token = presented.partition(" ")[2].strip() if presented.lower().startswith("bearer ") else presented.strip()
    parsed = parse_key(token)
    if parsed is not None:
        return f"{parsed.prefix}:{parsed.lookup_id}"
    try:
        subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None
    return f"stream:{str(subject)[:64]}" if subject else None


class ApiKeyAuthentication(BaseAuthentication):
    """Authenticates a tenant API key and enters the key's tenant schema. A bearer token that is not shaped
    like an API key (``agp_...``) is left to the next authentication class (OAuth access tokens)."""

    def authenticate(self, request: Request) -> tuple[TenantPrincipal, ApiKey] | None:
        presented = get_authorization_header(request).decode("latin-1")
        if not presented:
            return None
        with auth_limiter().attempt(address=request.META.get("REMOTE_ADDR"),
                                    credential_id=presented_credential_id(presented)):
            token = parse_bearer(presented) or ""
            if not token.startswith(f"{ApiKey.PREFIX}_"):
                return None  # an OAuth access token, or nothing of ours: the next class decides
            key = services.api_key_authenticate(raw=token)
        host_tenant = getattr(request._request, "tenant", None)
        if host_tenant is not None and host_tenant.schema_name != "public" and host_tenant.pk != key.tenant_id:
            raise CredentialTenantMismatch("This key belongs to a different tenant than this hostname.")
        connection.set_tenant(key.tenant)
        request._request.tenant = key.tenant
        principal = TenantPrincipal(tenant=key.tenant, actor=Actor(kind="api_key", id=str(key.id)),
                                    scopes=frozenset(key.scopes), credential=f"api_key:{key.id}")
        return principal, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="agentplane"'


class OperatorKeyAuthentication(BaseAuthentication):
    """Authenticates a platform operator key; stays in the public schema."""

    def authenticate(self, request: Request) -> tuple[OperatorPrincipal, OperatorKey] | None:
        presented = get_authorization_header(request).decode("latin-1")
        if not presented:
            return None
        with auth_limiter().attempt(address=request.META.get("REMOTE_ADDR"),
                                    credential_id=presented_credential_id(presented)):
            key = services.operator_key_authenticate(raw=parse_bearer(presented) or "")
        connection.set_schema_to_public()
        return OperatorPrincipal(key_id=str(key.id), name=key.name), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="agentplane-platform"'


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "agp_<id>_<secret>",
                "description": "A tenant API key; it selects the tenant."}


class OperatorKeyScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.OperatorKeyAuthentication"
    name = "OperatorKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "agpop_<id>_<secret>",
                "description": "A platform operator key (tenant provisioning only)."}
