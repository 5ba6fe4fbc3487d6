"""Live notifications through the Channels layer (Redis). Group names carry the tenant's schema.

Best effort: the database stays the truth (clients resume from it), so a publish that fails is logged,
never raised into the step or request that committed the change. Sends are handed to the process's IO
loop without waiting, in order, and the channel layer's connection pool lives across steps.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any
from uuid import UUID

from channels.layers import get_channel_layer

from data_plane.runtime.loop import submit_in_order

logger = logging.getLogger(__name__)


def ping_group(*, tenant_schema: str, ping_id: UUID | str) -> str:
    return f"ping.{tenant_schema}.{ping_id}"


def run_group(*, tenant_schema: str, run_id: UUID | str) -> str:
    return f"run.{tenant_schema}.{run_id}"


async def _send(group: str, messages: list[dict[str, Any]]) -> None:
    layer = get_channel_layer()
    for message in messages:
        await layer.group_send(group, message)


def _publish(group: str, messages: list[dict[str, Any]]) -> None:
    """Hand the messages to the IO loop and return at once; they are sent in order (failures are logged)."""
    submit_in_order(partial(_send, group, messages))


def ping_publish(*, tenant_schema: str, ping_id: UUID, ping: dict[str, Any]) -> None:
    """Tell the ping's subscribers its new state."""
    _publish(ping_group(tenant_schema=tenant_schema, ping_id=ping_id), [{"type": "ping.changed", "ping": ping}])


def run_publish(*, tenant_schema: str, run_id: UUID | str, events: list[dict[str, Any]]) -> None:
    """Send a commit's run events ({seq, type, data}, in order) to the run's live subscribers, in one message."""
    if events:
        _publish(run_group(tenant_schema=tenant_schema, run_id=run_id), [{"type": "run.events", "events": events}])
