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
