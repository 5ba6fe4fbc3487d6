"""A run's event feed for one subscriber: what it missed, then what happens, with no gap and no duplicate.

Both stream transports (the websocket consumer and the server-sent events view) read a ``RunFeed``. The
feed subscribes to the run's group first. It replays, in order:
- the rest of the message a subscriber was in the middle of (deltas of steps begun by its cursor);
- the durable events after the cursor, from the database;
- the token deltas of the step in flight, from the run's delta log in Redis.
Then it relays live messages, skipping what it already sent and filling any hole (a message the channel
layer dropped) from the database. Live messages come through the process's hub (one channel-layer
subscription per run per process) into a bounded queue per subscriber. A subscriber whose queue overflows,
or that is more than ``lag_limit`` events behind the live stream, is told so (``stream.lagged``) and the feed
ends: the client resumes from its cursor, which replays from the database at full speed instead of
buffering without bound.

A cursor is ``<seq>`` or ``<seq>.<n>``: the last durable event's number and the last token delta's. Every
item a feed yields carries the cursor after it as ``id``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async
from django.db import close_old_connections
from django_tenants.utils import schema_context

from common.errors import InvalidInput
from data_plane import selectors, streams
from data_plane.hub import Subscription, hub_for

PROTOCOL_VERSION = streams.PROTOCOL_VERSION
PAGE = 500
LAG_LIMIT = 2000
IDLE_CHECK_SECONDS = 15.0
FINAL_STATUSES = ("completed", "failed", "cancelled")
_CURSOR = re.compile(r"^(\d{1,18})(?:\.(\d{1,18}))?$")


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"


@dataclass(frozen=True)
class Cursor:
    seq: int = 0
    delta: int = 0

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """``None`` or ``""``: from the start. Raises InvalidCursor for anything but ``<seq>`` or ``<seq>.<n>``."""
        if not text:
            return cls()
        match = _CURSOR.match(text.strip())
        if match is None:
            raise InvalidCursor(f"Cursor {text[:40]!r} is not an event id: send the 'id' of the last event you "
                                "received (like '42' or '42.17'), or nothing to start from the beginning.")
        return cls(seq=int(match[1]), delta=int(match[2] or 0))

    def __str__(self) -> str:
        return f"{self.seq}.{self.delta}" if self.delta else str(self.seq)


def _page(tenant_schema: str, run_id: UUID, after_seq: int, limit: int) -> list[dict[str, Any]]:
    close_old_connections()
    with schema_context(tenant_schema):
        return selectors.run_event_page(tenant_schema=tenant_schema, run_id=run_id, after_seq=after_seq, limit=limit)


def _run_position(tenant_schema: str, run_id: UUID, up_to: int) -> tuple[str, int, int]:
    """The run's status, its last event's number, and the number of its last checkpoint.committed event at or
    before ``up_to``. Raises RunNotFound (also for another tenant's run)."""
    close_old_connections()
    with schema_context(tenant_schema):
        run = selectors.run_get(tenant_schema=tenant_schema, run_id=run_id)
        return run.status, run.event_seq, selectors.run_event_last_seq(
            tenant_schema=tenant_schema, run_id=run_id, type="checkpoint.committed", up_to=up_to)


class RunFeed:
    """One subscriber's view of one run. ``open`` first (it checks the run and subscribes), then iterate
    ``items``; ``close`` in a finally."""

    def __init__(self, *, tenant_schema: str, run_id: UUID, cursor: Cursor, layer: Any,
                 lag_limit: int = LAG_LIMIT, idle_check_seconds: float = IDLE_CHECK_SECONDS) -> None:
        self.tenant_schema, self.run_id, self.layer = tenant_schema, run_id, layer
        self.seq, self.delta = cursor.seq, cursor.delta
        self.lag_limit, self.idle_check_seconds = lag_limit, idle_check_seconds
        self.checkpoint_seq = 0  # the last checkpoint.committed sent (or before the cursor): older deltas are stale
        self.status = ""
        self.last_seq_at_open = 0
        self.subscription: Subscription | None = None
        self.group = streams.run_group(tenant_schema=tenant_schema, run_id=run_id)

    @property
    def channel(self) -> str | None:
        """This process's channel in the run's group (shared with the process's other subscribers of the run)."""
        return self.subscription.channel if self.subscription is not None else None

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.seq, self.delta)

    async def open(self) -> None:
        """Check the run (RunNotFound for a missing or another tenant's run) and subscribe to it."""
        self.status, self.last_seq_at_open, self.checkpoint_seq = await database_sync_to_async(_run_position)(
            self.tenant_schema, self.run_id, self.seq)
        self.subscription = await hub_for(self.layer).subscribe(self.group)

    def opened(self) -> dict[str, Any]:
        """The first message of a stream: where it starts, the run's status and its last event's number then
        (a client that replays a finished run knows which run.finished is the latest)."""
        return {"v": PROTOCOL_VERSION, "type": "stream.opened", "run_id": str(self.run_id), "id": str(self.cursor),
                "data": {"after": str(self.cursor), "status": self.status, "last_seq": self.last_seq_at_open}}

    async def close(self) -> None:
        if self.subscription is not None:
            subscription, self.subscription = self.subscription, None
            await hub_for(self.layer).unsubscribe(subscription)

    async def items(self) -> AsyncIterator[dict[str, Any]]:
        """Envelopes in order: the replay, then live ones. ``stream.lagged`` ends the feed; an idle feed
        yields ``stream.idle`` every ``idle_check_seconds`` (a heartbeat, after checking for lost events)."""
        subscription = self.subscription
        assert subscription is not None, "open() the feed first"
        # A client back in the middle of a message first gets the rest of it: the deltas of steps that began
        # at or before its cursor come before those steps' own events (even if they have committed since).
        for item in await self._deltas_after(begun_by=self.seq):
            yield item
        for item in await self._durable_after(limit=None):
            yield item
        for item in await self._deltas_after():
            yield item
        while True:
            if subscription.lagged:  # this subscriber's queue overflowed: it cannot keep up live
                yield self._lagged(behind=subscription.queue.qsize())
                return
            try:
                # In a burst the next message is already queued: take it without arming a timeout.
                message = subscription.queue.get_nowait() if not subscription.queue.empty() else \
                    await asyncio.wait_for(subscription.get(), self.idle_check_seconds)
            except asyncio.TimeoutError:
                behind = await self._durable_after(limit=self.lag_limit)
                for item in behind:
                    yield item
                if behind and behind[-1]["type"] == "stream.lagged":
                    return
                yield {"v": PROTOCOL_VERSION, "type": "stream.idle", "run_id": str(self.run_id), "id": str(self.cursor)}
                continue
            if message.get("type") == "run.events":
                for event in message["events"]:
                    if event["seq"] <= self.seq:
                        continue
                    if event["seq"] > self.seq + 1:  # a hole: the database has what the layer lost
                        filled = await self._durable_after(limit=self.lag_limit, before=event["seq"])
                        for item in filled:
                            yield item
                        if filled and filled[-1]["type"] == "stream.lagged":
                            return
                        if event["seq"] <= self.seq:
                            continue
                    yield self._durable(event)
            elif message.get("type") == "run.delta":
                if message["n"] <= self.delta:
                    continue
                if message["after_seq"] > self.seq:  # the step began after events this feed has not sent yet
                    # only those: the step's own events (maybe committed by now) follow its deltas
                    for item in await self._durable_after(limit=None, before=message["after_seq"] + 1):
                        yield item
                if message["n"] > self.delta + 1:
                    for item in await self._deltas_after(before=message["n"]):
                        yield item
                item = self._delta(message)
                if item is not None:
                    yield item

    # --- building blocks ------------------------------------------------------------------------------

    def _durable(self, event: dict[str, Any]) -> dict[str, Any]:
        self.seq = event["seq"]
        if event["type"] == "checkpoint.committed":
            self.checkpoint_seq = event["seq"]
        if event["type"] == "run.status":
            self.status = event["data"].get("status", self.status)
        return {"v": PROTOCOL_VERSION, "id": str(self.cursor), "run_id": str(self.run_id), "seq": event["seq"],
                "type": event["type"], "ts": event["ts"], "data": event["data"]}

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any] | None:
        """The delta as an envelope, or None when its step has committed since (its model.reply, already sent
        or about to be, carries the whole message)."""
        self.delta = max(self.delta, delta["n"])
        if delta["after_seq"] < self.checkpoint_seq:
            return None
        return {"v": PROTOCOL_VERSION, "id": str(self.cursor), "run_id": str(self.run_id), "seq": self.seq,
                "n": delta["n"], "type": "message.delta", "ts": delta["ts"],
                "data": {"node": delta["node"], "text": delta["text"], "stream": delta["stream"]}}

    async def _durable_after(self, *, limit: int | None, before: int | None = None) -> list[dict[str, Any]]:
        """The durable events after the feed's position (up to ``before``), as envelopes. With ``limit``, more
        than that many is a lag: the result is then ``stream.lagged`` alone, and the position stays."""
        events: list[dict[str, Any]] = []
        after = self.seq
        while True:
            page = await database_sync_to_async(_page)(self.tenant_schema, self.run_id, after, PAGE)
            complete = len(page) < PAGE
            if before is not None:
                complete = complete or any(event["seq"] >= before for event in page)
                page = [event for event in page if event["seq"] < before]
            events.extend(page)
            if limit is not None and len(events) > limit:
                return [self._lagged(behind=len(events))]
            if complete or not page:
                return [self._durable(event) for event in events]
            after = page[-1]["seq"]

    async def _deltas_after(self, before: int | None = None, begun_by: int | None = None) -> list[dict[str, Any]]:
        """The deltas after the feed's position (up to ``before``; with ``begun_by``, only those of steps that
        began at or before that event), as envelopes; stale ones are skipped."""
        deltas = await streams.delta_range(tenant_schema=self.tenant_schema, run_id=self.run_id, after=self.delta)
        items = []
        for delta in deltas:
            if before is not None and delta["n"] >= before:
                break
            if begun_by is not None and delta["after_seq"] > begun_by:
                break
            item = self._delta(delta)
            if item is not None:
                items.append(item)
        return items

    def _lagged(self, *, behind: int) -> dict[str, Any]:
        return {"v": PROTOCOL_VERSION, "type": "stream.lagged", "run_id": str(self.run_id), "id": str(self.cursor),
                "data": {"behind": behind, "resume_after": str(self.cursor),
                         "message": f"This subscriber fell more than {self.lag_limit} events behind the run; "
                                    f"reconnect with after={self.cursor} to resume where it stopped."}}
