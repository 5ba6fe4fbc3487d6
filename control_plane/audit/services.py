from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from django.db import connection
from django_tenants.utils import tenant_context

from common.actors import Actor
from control_plane.audit.models import AuditEvent
from control_plane.audit_anchor.models import AuditChainAnchor


def audit_event_record(
    *, tenant: Any, actor: Actor, action: str, target_type: str = "", target_id: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to ``tenant``'s audit log, in its schema whatever schema is current. Never secrets.

    The table's trigger numbers, links and hashes the event in the same statement (no extra round trip) and
    holds the tenant's chain lock until the caller's transaction ends: record audit events last in a
    transaction, after its other writes and row locks (docs/security-audit.md).
    """
    # Already in the tenant's schema (a run's step, a tenant's request): switching anyway would re-send
    # SET search_path on the way in and again on the way out.
    switch = nullcontext() if connection.schema_name == tenant.schema_name else tenant_context(tenant)
    with switch:
        return AuditEvent.objects.create(
            actor_kind=actor.kind, actor_id=actor.id, action=action, target_type=target_type,
            target_id=str(target_id), data=data or {},
        )


def audit_chain_anchor_forget(*, tenant_schema: str) -> None:
    """Remove the chain anchor of a schema that no longer exists (tenant_purge). Idempotent."""
    AuditChainAnchor.objects.filter(schema_name=tenant_schema).delete()
