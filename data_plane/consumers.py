"""Websocket entry points. Thin: check the caller, read through a sync helper, relay events.

Every database read runs in a sync helper that enters the tenant's schema inside the worker thread:
the connection's schema does not follow a coroutine across ``database_sync_to_async``.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db import close_old_connections
from django_tenants.utils import schema_context

from common.errors import AppError
from data_plane import selectors, streams
from data_plane.serializers import ping_data


def _ping_state(tenant_schema: str, ping_id: UUID) -> dict[str, Any]:
    close_old_connections()
    with schema_context(tenant_schema):
        return ping_data(selectors.ping_get(tenant_schema=tenant_schema, ping_id=ping_id))


class PingEventsConsumer(AsyncJsonWebsocketConsumer):
    """``/v1/pings/<id>/events``: the ping's state now, then when it changes; closes once completed."""

    required_scope = "pings:read"
    group: str | None = None

    async def connect(self) -> None:
        await self.accept()
        error = self.scope.get("auth_error")
        if error is None and self.required_scope not in self.scope["scopes"]:
            error = {"code": "missing_scope", "status": 403,
                     "message": f"This key lacks the scope {self.required_scope!r}; create a key that has it."}
        if error is not None:
            await self.fail(error["code"], error["message"], error["status"])
            return
        tenant_schema = self.scope["tenant_schema"]
        ping_id = self.scope["url_route"]["kwargs"]["ping_id"]
        # Subscribe before reading, so a change between the read and the subscription is not missed.
        self.group = streams.ping_group(tenant_schema=tenant_schema, ping_id=ping_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        try:
            state = await database_sync_to_async(_ping_state)(tenant_schema, ping_id)
        except AppError as exc:
            await self.fail(exc.code, exc.message, exc.http_status)
            return
        await self.send_json({"type": "ping.state", "ping": state})
        if state["status"] == "completed":
            await self.close(code=1000)

    async def ping_changed(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "ping.state", "ping": event["ping"]})
        if event["ping"]["status"] == "completed":
            await self.close(code=1000)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json({"type": "error", "code": "read_only",
                              "message": "This stream takes no messages; it only sends the ping's state."})

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def fail(self, code: str, message: str, status: int) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})
        await self.close(code=4000 + status)
