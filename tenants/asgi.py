"""Tenant resolution for websockets: the API key in the handshake selects the tenant.

The middleware never rejects by itself: it records the principal or the error in the scope, so the
consumer can accept, send a problem message (``{"type": "error", "code", "message"}``) and close with
``4000 + http status``, which a client can read, unlike a refused handshake.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.db import close_old_connections, connection

from common.errors import AppError
from tenants import services
from tenants.authentication import parse_bearer
from tenants.errors import InvalidCredentials


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _authenticate(authorization: str | None) -> dict[str, Any]:
    close_old_connections()
    connection.set_schema_to_public()
    try:
        token = parse_bearer(authorization)
        if token is None:
            raise InvalidCredentials("Send your API key as 'Authorization: Bearer <key>' in the handshake.")
        key = services.api_key_authenticate(raw=token)
        return {"tenant_schema": key.tenant.schema_name, "tenant_id": str(key.tenant_id),
                "api_key_id": str(key.id), "scopes": frozenset(key.scopes)}
    except AppError as error:
        return {"auth_error": {"code": error.code, "message": error.message, "status": error.http_status}}


class ApiKeyAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        resolved = await database_sync_to_async(_authenticate)(_header(scope, b"authorization"))
        return await self.inner({**scope, **resolved}, receive, send)
