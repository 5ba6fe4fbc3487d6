"""django-oauth-toolkit's request validator, with our tenant rules on top of its own checks:

- a code or refresh token of a user is honoured only while the user is active and still a member of the
  client's tenant (a removed member cannot mint new tokens);
- client credentials only for confidential clients (DOT already requires a client secret for them).
"""

from __future__ import annotations

from typing import Any

from oauth2_provider.oauth2_validators import OAuth2Validator

from control_plane.identity import selectors as identity_selectors


def _user_may_act_for(request: Any) -> bool:
    user = getattr(request, "user", None)
    client = getattr(request, "client", None)
    if user is None or client is None or not user.is_active:
        return False
    return identity_selectors.member_scopes(user_id=user.pk, tenant_id=client.tenant_id) is not None


class TenantOAuth2Validator(OAuth2Validator):
    def validate_code(self, client_id: str, code: str, client: Any, request: Any, *args: Any, **kwargs: Any) -> bool:
        return super().validate_code(client_id, code, client, request, *args, **kwargs) and _user_may_act_for(request)

    def validate_refresh_token(self, refresh_token: str, client: Any, request: Any, *args: Any, **kwargs: Any) -> bool:
        return (super().validate_refresh_token(refresh_token, client, request, *args, **kwargs)
                and _user_may_act_for(request))

    def validate_grant_type(self, client_id: str, grant_type: str, client: Any, request: Any, *args: Any,
                            **kwargs: Any) -> bool:
        if grant_type == "client_credentials" and request.client.client_type != "confidential":
            return False
        return super().validate_grant_type(client_id, grant_type, client, request, *args, **kwargs)
