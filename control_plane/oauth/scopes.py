"""django-oauth-toolkit's scopes backend: our tenant scopes, bounded by the client's own scopes and, when a
portal user authorizes, by that user's current role in the client's tenant."""

from __future__ import annotations

from typing import Any

from oauth2_provider.scopes import BaseScopes

from control_plane.identity import selectors as identity_selectors
from tenants.scopes import SCOPES


def _user_of(request: Any) -> Any:
    user = getattr(request, "user", None)
    return user if user is not None and getattr(user, "is_authenticated", False) else None


class TenantScopes(BaseScopes):
    def get_all_scopes(self) -> dict[str, str]:
        return dict(SCOPES)

    def get_available_scopes(self, application: Any = None, request: Any = None, *args: Any, **kwargs: Any) -> list[str]:
        if application is None:
            return list(SCOPES)
        available = [scope for scope in application.scopes if scope in SCOPES]
        user = _user_of(request)
        if user is not None:
            held = identity_selectors.member_scopes(user_id=user.pk, tenant_id=application.tenant_id) or frozenset()
            available = [scope for scope in available if scope in held]
        return available

    def get_default_scopes(self, application: Any = None, request: Any = None, *args: Any, **kwargs: Any) -> list[str]:
        return self.get_available_scopes(application, request)
