"""Portal users on the API: a signed-in session (cookie) instead of an API key.

On a tenant endpoint the user names the tenant with the ``X-Agentplane-Tenant: <slug>`` header and acts with
the scopes of their role there (tenants.roles), through the same scope check as keys. A request that carries
an ``Authorization`` header never uses the session: bearer credentials take precedence. Unsafe methods need
the CSRF token (header ``X-CSRFToken``), as with DRF's SessionAuthentication.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, SessionAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from common.actors import Actor
from control_plane.identity import selectors
from control_plane.identity.errors import NotAMember, NotSignedIn, TenantHeaderMissing, TenantHeaderUnknown
from control_plane.identity.models import Membership
from tenants.authentication import TenantPrincipal
from tenants.errors import CredentialTenantMismatch, TenantSuspended
from tenants.models import Tenant

TENANT_HEADER = "X-Agentplane-Tenant"


def _signed_in_user(request: Request) -> User | None:
    """The session's active user (Django's AuthenticationMiddleware), or None; None too with a bearer header."""
    if get_authorization_header(request):
        return None
    user = getattr(request._request, "user", None)
    if not isinstance(user, User) or not user.is_authenticated or not user.is_active:
        return None
    return user


def _enforce_csrf(request: Request) -> None:
    SessionAuthentication().enforce_csrf(request)


class UserSessionAuthentication(BaseAuthentication):
    """A signed-in portal user on a tenant endpoint; enters the tenant named by X-Agentplane-Tenant."""

    def authenticate(self, request: Request) -> tuple[TenantPrincipal, Membership] | None:
        user = _signed_in_user(request)
        if user is None:
            return None
        _enforce_csrf(request)
        slug = request.headers.get(TENANT_HEADER, "").strip()
        if not slug:
            raise TenantHeaderMissing(f"Signed in as a portal user: name the tenant with the header "
                                      f"'{TENANT_HEADER}: <tenant slug>'.")
        tenant = Tenant.objects.filter(slug=slug).exclude(status=Tenant.Status.DELETED).first()
        if tenant is None:
            raise TenantHeaderUnknown(f"No tenant {slug!r}: check the {TENANT_HEADER} header (GET /v1/auth/me lists "
                                      "your tenants).")
        membership = selectors.membership_find(tenant=tenant, user_id=user.pk)
        if membership is None:
            raise NotAMember(f"You are not a member of tenant {slug!r}; ask one of its admins for an invitation.")
        if tenant.status == Tenant.Status.SUSPENDED:
            reason = f" ({tenant.status_reason})" if tenant.status_reason else ""
            raise TenantSuspended(f"Tenant {slug!r} is suspended{reason}; it is refused until the platform operator "
                                  "reactivates it.")
        host_tenant = getattr(request._request, "tenant", None)
        if host_tenant is not None and host_tenant.schema_name != "public" and host_tenant.pk != tenant.pk:
            raise CredentialTenantMismatch(f"The {TENANT_HEADER} header names a different tenant than this hostname.")
        connection.set_tenant(tenant)
        request._request.tenant = tenant
        principal = TenantPrincipal(tenant=tenant, actor=Actor(kind="user", id=str(user.pk), label=user.email),
                                    scopes=membership.scopes)
        return principal, membership


class SignedInUserAuthentication(BaseAuthentication):
    """The portal's own endpoints (/v1/auth/...): the session's user, public schema, CSRF checked."""

    def authenticate(self, request: Request) -> tuple[User, None] | None:
        user = _signed_in_user(request)
        if user is None:
            return None
        _enforce_csrf(request)
        return user, None


class IsSignedIn(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if not isinstance(request.user, User):
            raise NotSignedIn(f"Sign in first: POST /v1/auth/login (or {settings.LOGIN_URL} in a browser).")
        return True


class UserSessionScheme(OpenApiAuthenticationExtension):
    target_class = "control_plane.identity.authentication.UserSessionAuthentication"
    name = "PortalSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME,
                "description": f"A portal user's session (POST /v1/auth/login), with the header {TENANT_HEADER} "
                               "naming the tenant and X-CSRFToken on unsafe methods."}


class SignedInUserScheme(OpenApiAuthenticationExtension):
    target_class = "control_plane.identity.authentication.SignedInUserAuthentication"
    name = "PortalUser"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME,
                "description": "A portal user's session (POST /v1/auth/login); X-CSRFToken on unsafe methods."}
