from __future__ import annotations

from django.db.models import QuerySet

from common.schemas import require_schema
from control_plane.audit.models import AuditEvent


def audit_event_list(
    *, tenant_schema: str, action: str | None = None, target_id: str | None = None
) -> QuerySet[AuditEvent]:
    """The tenant's audit events, newest first, optionally filtered. Raises WrongSchema outside it."""
    require_schema(tenant_schema)
    events = AuditEvent.objects.all()
    if action:
        events = events.filter(action=action)
    if target_id:
        events = events.filter(target_id=target_id)
    return events
