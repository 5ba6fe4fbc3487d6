from __future__ import annotations

from typing import Any

from django_tenants.utils import tenant_context

from common.actors import Actor
from control_plane.audit.models import AuditEvent


def audit_event_record(
    *, tenant: Any, actor: Actor, action: str, target_type: str = "", target_id: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to ``tenant``'s audit log, in its schema whatever schema is current. Never secrets."""
    with tenant_context(tenant):
        return AuditEvent.objects.create(
            actor_kind=actor.kind, actor_id=actor.id, action=action, target_type=target_type,
            target_id=str(target_id), data=data or {},
        )
