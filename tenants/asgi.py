"""Tenant resolution for streams (websockets and server-sent events): the credential selects the tenant.

A client presents an API key (``Authorization: Bearer agp_...``), an OAuth access token (a JWT from /oauth/token)
or a stream token (a short-lived JWT from ``POST /v1/runs/{id}/stream-token``), in the header or, for browsers
that cannot set one, as the ``access_token`` query parameter (stream tokens only: neither a key nor an OAuth
access token ever goes into a URL, where logs and proxies keep it).

The websocket middleware never rejects by itself: it records the principal or the error in the scope, so
the consumer can accept, send a problem message (``{"type": "error", "code", "message"}``) and close with
``4000 + http status``, which a client can read, unlike a refused handshake.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.db import close_old_connections, connection

from billing.wiring import tier_limiter
from common.actors import Actor
from common.errors import AppError
from control_plane.oauth import services as oauth_services
from control_plane.oauth import tokens as oauth_tokens
from tenants import services
from tenants.authentication import auth_limiter, parse_bearer, presented_credential_id
from tenants.errors import InvalidCredentials


def header(scope: dict[str, Any], name: bytes) -> str | None:
    """A request header of an ASGI scope (the last of its name), or None."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def query_token(query_string: bytes | str) -> str | None:
    text = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    values = parse_qs(text).get("access_token")
    return values[-1] if values else None


def client_address(scope: dict[str, Any]) -> str | None:
    """The client's address of an ASGI scope (the proxy's unless the server trusts forwarded headers)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def stream_principal(*, authorization: str | None, access_token: str | None,
                     address: str | None = None) -> dict[str, Any]:
    """What a stream's scope carries about its caller: tenant, schema, key, scopes, actor and the run the
    credential is limited to (None: any run of the tenant); or ``auth_error`` (code, message, status).
    Runs sync (database reads); leaves the connection on the public schema."""
    close_old_connections()
    connection.set_schema_to_public()
    try:
        with auth_limiter().attempt(address=address,
                                    credential_id=presented_credential_id(authorization or access_token)):
            principal = _principal(authorization=authorization, access_token=access_token)
        limiter = tier_limiter()
        if limiter is not None:  # a stream (websocket or SSE) opened is one request of the tenant's rate
            limiter.request_admit(tenant=principal["tenant"])
        return principal
    except AppError as error:
        return {"auth_error": {"code": error.code, "message": error.message, "status": error.http_status,
                               **({"retry_after": error.extra["retry_after"]} if "retry_after" in error.extra else {})}}


def _principal(*, authorization: str | None, access_token: str | None) -> dict[str, Any]:
    token = parse_bearer(authorization)
    if token is None and access_token:
        if access_token.startswith("agp_"):
            raise InvalidCredentials("Never put an API key in a URL: send it in the Authorization header, or "
                                     "get a stream token from POST /v1/runs/{id}/stream-token for the query.")
        if oauth_tokens.is_access_token(access_token):
            raise InvalidCredentials("Never put an OAuth access token in a URL: send it in the Authorization "
                                     "header, or get a stream token from POST /v1/runs/{id}/stream-token.")
        token = access_token
    if token is None:
        raise InvalidCredentials("Send your API key as 'Authorization: Bearer <key>' in the handshake, or a "
                                 "stream token as ?access_token=<token>.")
    if token.startswith("agp_"):
        key = services.api_key_authenticate(raw=token)
        tenant, key_id, scopes, run_id = key.tenant, str(key.id), frozenset(key.scopes), None
        actor = Actor(kind="api_key", id=key_id)
    elif oauth_tokens.is_access_token(token):
        oauth = oauth_services.access_token_authenticate(raw=token)
        tenant, key_id, scopes, run_id, actor = oauth.tenant, None, oauth.scopes, None, oauth.actor
    else:
        grant = services.stream_token_authenticate(raw=token)
        tenant, key_id, scopes, run_id, actor = grant.tenant, grant.key_id, grant.scopes, grant.run_id, grant.actor
    return {"tenant": tenant, "tenant_schema": tenant.schema_name, "tenant_id": str(tenant.id),
            "api_key_id": key_id, "scopes": scopes, "actor": actor, "allowed_run_id": run_id}


class ApiKeyAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        resolved = await database_sync_to_async(stream_principal)(
            authorization=header(scope, b"authorization"), access_token=query_token(scope.get("query_string", b"")),
            address=client_address(scope))
        return await self.inner({**scope, **resolved}, receive, send)
