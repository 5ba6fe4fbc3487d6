"""Live notifications through the Channels layer (Redis). Group names carry the tenant's schema."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer


def ping_group(*, tenant_schema: str, ping_id: UUID | str) -> str:
    return f"ping.{tenant_schema}.{ping_id}"


def ping_publish(*, tenant_schema: str, ping_id: UUID, ping: dict[str, Any]) -> None:
    """Tell the ping's subscribers its new state. Best effort: the database stays the truth."""
    layer = get_channel_layer()
    async_to_sync(layer.group_send)(ping_group(tenant_schema=tenant_schema, ping_id=ping_id),
                                    {"type": "ping.changed", "ping": ping})


def run_group(*, tenant_schema: str, run_id: UUID | str) -> str:
    return f"run.{tenant_schema}.{run_id}"


def run_publish(*, tenant_schema: str, run_id: UUID | str, events: list[dict[str, Any]]) -> None:
    """Send committed run events ({seq, type, data}) to the run's live subscribers. Best effort."""
    layer = get_channel_layer()
    group = run_group(tenant_schema=tenant_schema, run_id=run_id)
    for event in events:
        async_to_sync(layer.group_send)(group, {"type": "run.event", "event": event})
