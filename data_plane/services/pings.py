from __future__ import annotations

from functools import partial
from uuid import UUID

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from common.actors import Actor
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from data_plane import streams, tasks
from data_plane.models import Ping
from data_plane.serializers import ping_data


def ping_create(*, tenant, message: str, actor: Actor) -> Ping:  # type: ignore[no-untyped-def]
    """Record a ping and, after commit, hand it to a worker. Must run in the tenant's schema."""
    require_schema(tenant.schema_name)
    with transaction.atomic():
        ping = Ping.objects.create(message=message)
        audit_event_record(tenant=tenant, actor=actor, action="ping.create", target_type="ping",
                           target_id=str(ping.id))
        transaction.on_commit(
            partial(tasks.ping_answer_task.delay, tenant_schema=tenant.schema_name, ping_id=str(ping.id))
        )
    return ping


def ping_answer(*, tenant_schema: str, ping_id: UUID, worker: str) -> Ping | None:
    """Mark the ping answered by ``worker``, noting the schema the worker's connection is in, and
    notify its subscribers after commit.

    Idempotent: a redelivered task counts the delivery but keeps the first answer. None if the ping is gone.
    """
    require_schema(tenant_schema)
    with transaction.atomic():
        ping = Ping.objects.select_for_update().filter(id=ping_id).first()
        if ping is None:
            return None
        ping.deliveries = F("deliveries") + 1
        if ping.status == Ping.Status.QUEUED:
            ping.status = Ping.Status.COMPLETED
            ping.completed_at = timezone.now()
            ping.worker = worker
            ping.observed_schema = connection.schema_name
        ping.save()
        ping.refresh_from_db()
        transaction.on_commit(partial(streams.ping_publish, tenant_schema=tenant_schema, ping_id=ping_id,
                                      ping=ping_data(ping)))
    return ping
