from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from common.errors import NotAuthenticated
from tenants.authentication import OperatorPrincipal, TenantPrincipal
from tenants.errors import MissingScope


class HasRequiredScope(BasePermission):
    """Allows a tenant key that holds the scope the view names for this method (``required_scopes``)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, TenantPrincipal):
            raise NotAuthenticated("Send a tenant API key as 'Authorization: Bearer <key>', or sign in as a "
                                   "portal user and name the tenant with the X-Agentplane-Tenant header.")
        method = "GET" if request.method == "HEAD" else request.method
        required = getattr(view, "required_scopes", {}).get(method)
        if required is None:
            if method == "OPTIONS" or not hasattr(view, method.lower()):
                return True  # OPTIONS is metadata only; a method without a handler gets DRF's 405
            raise MissingScope(f"{request.method} is not allowed on this endpoint.")
        if required not in principal.scopes:
            if principal.credential.startswith("oauth_token:"):
                raise MissingScope(f"This token lacks the scope {required!r}: the client application, your request "
                                   "or the member's role does not grant it.")
            if principal.actor.kind == "user":
                raise MissingScope(f"Your role in tenant {principal.tenant.slug!r} lacks the scope {required!r}; "
                                   "ask an owner or admin for a role that has it.")
            raise MissingScope(f"This key lacks the scope {required!r}; create a key that has it.")
        return True


class IsOperator(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if not isinstance(request.user, OperatorPrincipal):
            raise NotAuthenticated("Send a platform operator key as 'Authorization: Bearer <key>'.")
        return True
