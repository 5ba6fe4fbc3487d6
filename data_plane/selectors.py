from __future__ import annotations

from uuid import UUID

from django.db.models import QuerySet

from common.schemas import require_schema
from data_plane.errors import PingNotFound
from data_plane.models import Ping


def ping_list(*, tenant_schema: str) -> QuerySet[Ping]:
    require_schema(tenant_schema)
    return Ping.objects.all()


def ping_get(*, tenant_schema: str, ping_id: UUID) -> Ping:
    """One ping of the tenant. Raises PingNotFound (also for another tenant's id), WrongSchema."""
    require_schema(tenant_schema)
    try:
        return Ping.objects.get(id=ping_id)
    except Ping.DoesNotExist:
        raise PingNotFound(f"Ping {ping_id} not found.") from None
