"""Live notifications through the Channels layer (Redis). Group names carry the tenant's schema.

Best effort: the database stays the truth (clients resume from it), so a publish that fails is logged,
never raised into the step or request that committed the change. A step's events are sent by the thread that
committed them, one or two Redis round trips (common/channel_layer.py), so a run's events go out in commit
order; a request's are handed to the process's IO loop (in order, without waiting), where token deltas are
sent too, as the model's stream is read. After a send that failed, sends pause for a few seconds.

Token deltas are not in the database: each is appended to the run's delta log in Redis (a stream with
contiguous numbers, trimmed and expiring) and then sent to the run's group. A subscriber that reconnects in
the middle of a message reads the deltas it missed from that log (``delta_range``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from datetime import datetime, timezone
from functools import partial
from typing import Any
from uuid import UUID

from channels.layers import get_channel_layer
from django.conf import settings
from redis import asyncio as aioredis

from common.timestamps import format_ts
from data_plane.runtime.loop import submit_in_order

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
DELTA_LOG_SECONDS = 900  # how long an idle run's deltas stay readable for a reconnecting subscriber
DELTA_LOG_LENGTH = 20_000  # at most this many of a run's latest deltas are kept
# A run's delta numbers never start over while a subscriber may still hold a cursor: its counter outlives
# the log by far (a run can wait weeks for an approval between two streamed replies).
DELTA_COUNTER_SECONDS = 90 * 24 * 3600

# Append a delta with the next number of its run: INCR and XADD together, so numbers are contiguous and the
# log is in number order even when a step's parallel model calls stream at once.
_APPEND_DELTA = """
local n = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], n .. '-0', 'd', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return n
"""


def ping_group(*, tenant_schema: str, ping_id: UUID | str) -> str:
    return f"ping.{tenant_schema}.{ping_id}"


def run_group(*, tenant_schema: str, run_id: UUID | str) -> str:
    return f"run.{tenant_schema}.{run_id}"


def _delta_keys(tenant_schema: str, run_id: UUID | str) -> list[str]:
    base = f"{settings.STREAM_KEY_PREFIX}:deltas:{tenant_schema}:{run_id}"
    return [base, f"{base}:n"]


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


def _redis() -> aioredis.Redis:
    """One client per event loop (a pool is bound to the loop that created it)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        # A blocking pool: a burst of subscribers waits for a connection instead of being refused one.
        pool = aioredis.BlockingConnectionPool.from_url(settings.CHANNEL_LAYER_REDIS_URL, socket_timeout=5,
                                                        max_connections=200, timeout=10)
        client = aioredis.Redis(connection_pool=pool)
        _clients[loop] = client
    return client


def now_iso() -> str:
    return format_ts(datetime.now(timezone.utc))


async def _send(group: str, messages: list[dict[str, Any]]) -> None:
    layer = get_channel_layer()
    for message in messages:
        await layer.group_send(group, message)


# After a blocking send failed, publishes are dropped (logged) for this long: a Redis that is down must not make
# every commit wait out a timeout. Subscribers resume from the database.
PUBLISH_PAUSE_SECONDS = 5.0
_publish_paused_until = 0.0


def _publish(group: str, messages: list[dict[str, Any]], *, hand_off: bool = False) -> None:
    """Send the messages in order: from the calling thread when the layer can (a step's: one or two Redis round
    trips, where a hand-off to the IO loop's thread, busy with the step's effects, cost more), or handed to the
    IO loop without waiting (``hand_off``: a request's, whose response and dispatch need not wait for Redis; or a
    layer without a blocking send). Failures are logged, never raised."""
    global _publish_paused_until
    layer = get_channel_layer()
    send = getattr(layer, "group_send_blocking", None)
    if send is None or hand_off:
        submit_in_order(partial(_send, group, messages))
        return
    if time.monotonic() < _publish_paused_until:
        logger.debug("Publishing paused after a failure; dropped %d messages to %s", len(messages), group)
        return
    try:
        for message in messages:
            send(group, message)
    except Exception:
        _publish_paused_until = time.monotonic() + PUBLISH_PAUSE_SECONDS
        logger.warning("Could not publish to %s; publishing pauses for %.0f s (subscribers resume from the "
                       "database)", group, PUBLISH_PAUSE_SECONDS, exc_info=True)


def ping_publish(*, tenant_schema: str, ping_id: UUID, ping: dict[str, Any]) -> None:
    """Tell the ping's subscribers its new state (without waiting for Redis)."""
    _publish(ping_group(tenant_schema=tenant_schema, ping_id=ping_id), [{"type": "ping.changed", "ping": ping}],
             hand_off=True)


def run_publish(*, tenant_schema: str, run_id: UUID | str, events: list[dict[str, Any]],
                hand_off: bool = False) -> None:
    """Send a commit's run events ({seq, type, data, ts}, in order) to the run's live subscribers, in one
    message; from this thread, or handed to the IO loop (``hand_off``: see ``_publish``)."""
    if events:
        _publish(run_group(tenant_schema=tenant_schema, run_id=run_id), [{"type": "run.events", "events": events}],
                 hand_off=hand_off)


async def delta_publish(*, tenant_schema: str, run_id: UUID | str, after_seq: int, node: str, text: str,
                        stream: str) -> None:
    """Append a token delta to the run's delta log and send it to the run's subscribers (awaited, in order).

    ``after_seq`` is the run's last event when the step began: once a later checkpoint.committed event exists
    the delta is superseded by the step's model.reply. ``stream`` names the attempt that produced it (a
    retried or recovered call streams again from the start under a new name)."""
    delta = {"after_seq": after_seq, "node": node, "text": text, "stream": stream, "ts": now_iso()}
    try:
        number = await _redis().eval(_APPEND_DELTA, 2, *_delta_keys(tenant_schema, run_id),
                                     json.dumps(delta, separators=(",", ":")), DELTA_LOG_SECONDS, DELTA_LOG_LENGTH,
                                     DELTA_COUNTER_SECONDS)
        await get_channel_layer().group_send(run_group(tenant_schema=tenant_schema, run_id=run_id),
                                             {"type": "run.delta", "n": int(number), **delta})
    except Exception:  # the model's stream goes on: deltas are a preview, the checkpoint has the message
        logger.warning("Could not publish a delta of run %s", run_id, exc_info=True)


async def delta_range(*, tenant_schema: str, run_id: UUID | str, after: int) -> list[dict[str, Any]]:
    """The run's deltas numbered above ``after`` still in the log, oldest first, each with its number ``n``."""
    entries = await _redis().xrange(_delta_keys(tenant_schema, run_id)[0], min=f"({after}-0", max="+")
    deltas = []
    for entry_id, fields in entries:
        delta = json.loads(fields[b"d"])
        delta["n"] = int(entry_id.split(b"-")[0])
        deltas.append(delta)
    return deltas
