"""Websocket entry points. Thin: check the caller, read through a sync helper, relay events.

Every database read runs in a sync helper that enters the tenant's schema inside the worker thread:
the connection's schema does not follow a coroutine across ``database_sync_to_async``.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import close_old_connections
from django_tenants.utils import schema_context

from common.errors import AppError, InvalidInput
from data_plane import selectors, services, streams
from data_plane.errors import ApprovalNotFound, ApprovalNotPending
from data_plane.feeds import Cursor, RunFeed
from data_plane.serializers import ping_data
from tenants.asgi import header


def _ping_state(tenant_schema: str, ping_id: UUID) -> dict[str, Any]:
    close_old_connections()
    with schema_context(tenant_schema):
        return ping_data(selectors.ping_get(tenant_schema=tenant_schema, ping_id=ping_id))


class MessageSizeLimit:
    """Refuses a client message larger than WEBSOCKET_MAX_MESSAGE_BYTES before decoding it: an error frame
    naming the limit, then close 4413."""

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        limit = settings.WEBSOCKET_MAX_MESSAGE_BYTES
        text, data = message.get("text"), message.get("bytes")
        size = len(data) if data is not None else len(text.encode()) if len(text or "") * 4 > limit else 0
        if size > limit:
            await self.send_json({"type": "error", "code": "message_too_large", "status": 413,  # type: ignore[attr-defined]
                                  "message": f"This message is {size} bytes; messages on this socket may be at most "
                                             f"{limit} bytes. Send a shorter one (upload files with "
                                             "POST /v1/attachments and send their ids)."})
            await self.close(code=4413)  # type: ignore[attr-defined]
            return
        await super().websocket_receive(message)  # type: ignore[misc]


class PingEventsConsumer(MessageSizeLimit, AsyncJsonWebsocketConsumer):
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


# --- A run's stream --------------------------------------------------------------------------------------

CONTROL_SCOPES = {"pause": "runs:write", "resume": "runs:write", "cancel": "runs:write", "message": "runs:write",
                  "approve": "approvals:write", "reject": "approvals:write"}


def _control(scope: dict[str, Any], run_id: UUID, action: str, content: dict[str, Any]) -> dict[str, Any]:
    """Perform one control message through the run services, in the caller's tenant; the acknowledgement's
    body. Raises AppError (sent back as an error message; the stream stays open)."""
    close_old_connections()
    tenant, actor = scope["tenant"], scope["actor"]
    with schema_context(tenant.schema_name):
        if action in ("pause", "resume", "cancel"):
            service = {"pause": services.run_pause, "resume": services.run_resume, "cancel": services.run_cancel}
            kwargs = {"reason": str(content.get("reason") or "")[:500]} if action == "cancel" else {}
            run = service[action](tenant=tenant, run_id=run_id, actor=actor, **kwargs)
            return {"run": {"id": str(run.id), "status": run.status}}
        if action == "message":
            attachments = _attachment_ids(content)
            run = services.run_message_send(tenant=tenant, run_id=run_id, text=_text(content, bool(attachments)),
                                            actor=actor, attachments=attachments)
            return {"run": {"id": str(run.id), "status": run.status}}
        approval_id = _approval_of(tenant.schema_name, run_id, content.get("approval_id"))
        arguments = content.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise InvalidInput("'arguments' maps a tool call's id to its edited arguments (an object).")
        approval = services.approval_decide(tenant=tenant, approval_id=approval_id, approved=action == "approve",
                                            actor=actor, arguments=arguments,
                                            comment=str(content.get("comment") or "")[:2000])
        return {"approval": {"id": str(approval.id), "status": approval.status}}


def _text(content: dict[str, Any], has_attachments: bool = False) -> str:
    text = content.get("text", "" if has_attachments else None)
    if not isinstance(text, str) or not (text.strip() or has_attachments):
        raise InvalidInput("A 'message' needs 'text': the user's message, a non-empty string (or 'attachments').")
    if len(text) > 100_000:
        raise InvalidInput(f"'text' is {len(text)} characters; the limit is 100000.")
    return text


def _attachment_ids(content: dict[str, Any]) -> list[UUID]:
    """A message's ``attachments``: ids of uploaded files (POST /v1/attachments)."""
    ids = content.get("attachments") or []
    if not isinstance(ids, list) or len(ids) > 16:
        raise InvalidInput("'attachments' is a list of at most 16 attachment ids (from POST /v1/attachments).")
    try:
        return [UUID(str(value)) for value in ids]
    except ValueError:
        raise InvalidInput("'attachments' holds ids of uploaded files (UUIDs, from POST /v1/attachments).") from None


def _approval_of(tenant_schema: str, run_id: UUID, approval_id: Any) -> UUID:
    """The approval to decide: the one named (it must be this run's), or the run's only pending one."""
    if approval_id is not None:
        try:
            approval = selectors.approval_get(tenant_schema=tenant_schema, approval_id=UUID(str(approval_id)))
        except ValueError:
            raise InvalidInput(f"'approval_id' {str(approval_id)[:40]!r} is not a UUID.") from None
        if approval.run_id != run_id:
            raise ApprovalNotFound(f"Approval {approval_id} not found on run {run_id}.")
        return approval.id
    pending = list(selectors.approval_list(tenant_schema=tenant_schema, status="pending", run_id=run_id)[:2])
    if len(pending) != 1:
        raise ApprovalNotPending(f"Run {run_id} has {len(pending) or 'no'} pending approvals; "
                                 + ("name one with 'approval_id'." if pending else "there is nothing to decide."))
    return pending[0].id


class RunStreamConsumer(MessageSizeLimit, AsyncJsonWebsocketConsumer):
    """``/v1/runs/<id>/stream``: the run's events from the cursor on (``?after=<id>`` or a ``Last-Event-ID``
    header), live; and control messages (pause, resume, cancel, message, approve, reject), each acknowledged
    (``ack``) or answered with an ``error`` naming the message's ``id``."""

    # No channel of its own (an alias with no layer): the socket reads its run through the process's hub, one
    # subscription per run per process. A channel per socket would be one more Redis receiver per subscriber,
    # and an error in that receive closes the socket (1011).
    channel_layer_alias = "streams-use-the-hub"
    feed: RunFeed | None = None
    pump: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        await self.accept()
        error = self.scope.get("auth_error")
        run_id = self.scope["url_route"]["kwargs"]["run_id"]
        if error is None and "runs:read" not in self.scope["scopes"]:
            error = {"code": "missing_scope", "status": 403,
                     "message": "This credential lacks the scope 'runs:read'; use a key or token that has it."}
        allowed = self.scope.get("allowed_run_id")
        if error is None and allowed is not None and allowed != str(run_id):
            error = {"code": "run_not_found", "status": 404, "message": f"Run {run_id} not found."}
        if error is not None:
            await self.fail(error["code"], error["message"], error["status"])
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            cursor = Cursor.parse((query.get("after") or [None])[-1] or header(self.scope, b"last-event-id"))
            self.feed = RunFeed(tenant_schema=self.scope["tenant_schema"], run_id=run_id, cursor=cursor,
                                layer=get_channel_layer())
            await self.feed.open()
        except AppError as exc:
            self.feed = None
            await self.fail(exc.code, exc.message, exc.http_status)
            return
        await self.send_json(self.feed.opened())
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        assert self.feed is not None
        try:
            async for item in self.feed.items():
                await self.send(text_data=_encoded(item))
                if item["type"] == "stream.lagged":
                    await self.close(code=4008)
                    return
        except AppError as exc:  # the run was deleted under the stream
            await self.fail(exc.code, exc.message, exc.http_status)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        reference = content.get("id") if isinstance(content, dict) else None
        action = content.get("type") if isinstance(content, dict) else None
        if self.feed is None:
            return
        if isinstance(content, dict) and content.get("_invalid"):
            await self.send_json({"type": "error", "id": None, "code": "invalid_json", "status": 400,
                                  "message": "A control message is one JSON object, like "
                                             '{"type": "pause", "id": "my-ref"}.'})
            return
        if action not in CONTROL_SCOPES:
            await self.send_json({"type": "error", "id": reference, "code": "unknown_message", "status": 400,
                                  "message": f"Unknown message type {str(action)[:40]!r}; send one of "
                                             f"{', '.join(CONTROL_SCOPES)} as 'type'."})
            return
        if CONTROL_SCOPES[action] not in self.scope["scopes"]:
            await self.send_json({"type": "error", "id": reference, "code": "missing_scope", "status": 403,
                                  "message": f"{action!r} needs the scope {CONTROL_SCOPES[action]!r}, which this "
                                             "credential lacks."})
            return
        try:
            body = await database_sync_to_async(_control)(self.scope, self.feed.run_id, action, content)
        except AppError as exc:
            await self.send_json({"type": "error", "id": reference, "code": exc.code, "status": exc.http_status,
                                  "message": exc.message})
            return
        await self.send_json({"type": "ack", "id": reference, "action": action, "data": body})

    async def decode_json(self, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except ValueError:
            return {"type": None, "_invalid": True}

    async def disconnect(self, code: int) -> None:
        if self.pump is not None:
            self.pump.cancel()
            await asyncio.gather(self.pump, return_exceptions=True)
        if self.feed is not None:
            await self.feed.close()

    async def fail(self, code: str, message: str, status: int) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, "status": status})
        await self.close(code=4000 + status)


_ENCODED: OrderedDict[tuple[Any, ...], str] = OrderedDict()


def _encoded(item: dict[str, Any]) -> str:
    """The item as JSON text, encoded once per process for all the subscribers that receive the same envelope
    (a run's event or delta at the same cursor is the same envelope for every caught-up subscriber)."""
    key = (item.get("run_id"), item["type"], item.get("id"), item.get("seq"), item.get("n"))
    text = _ENCODED.get(key)
    if text is None or item["type"] in ("stream.idle", "stream.lagged", "stream.opened"):
        text = json.dumps(item, separators=(",", ":"))
        _ENCODED[key] = text
        if len(_ENCODED) > 4096:
            _ENCODED.popitem(last=False)
    return text

