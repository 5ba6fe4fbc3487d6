from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, TypedDict

from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast

from common.schemas import in_schema, require_schema
from control_plane.audit import chain
from control_plane.audit.models import AuditEvent
from control_plane.audit_anchor.models import AuditChainAnchor

CHUNK = 1000  # events per query when walking or exporting a chain: memory stays flat however long it is


class AuditEventFilters(TypedDict, total=False):
    action: str  # exact, or a prefix when it ends with "." or "*" ("run." or "run.*")
    actor_kind: str
    actor_id: str
    target_type: str
    target_id: str
    since: datetime  # occurred_at >= since
    until: datetime  # occurred_at < until
    from_seq: int  # seq >= from_seq
    to_seq: int  # seq <= to_seq


def _filtered(events: QuerySet[AuditEvent], filters: AuditEventFilters) -> QuerySet[AuditEvent]:
    action = filters.get("action")
    if action:
        events = (events.filter(action__startswith=action.removesuffix("*")) if action.endswith((".", "*"))
                  else events.filter(action=action))
    for name in ("actor_kind", "actor_id", "target_type", "target_id"):
        if filters.get(name):
            events = events.filter(**{name: filters[name]})  # type: ignore[literal-required]
    if filters.get("since") is not None:
        events = events.filter(occurred_at__gte=filters["since"])
    if filters.get("until") is not None:
        events = events.filter(occurred_at__lt=filters["until"])
    if filters.get("from_seq") is not None:
        events = events.filter(seq__gte=filters["from_seq"])
    if filters.get("to_seq") is not None:
        events = events.filter(seq__lte=filters["to_seq"])
    return events


def audit_event_list(*, tenant_schema: str, filters: AuditEventFilters | None = None) -> QuerySet[AuditEvent]:
    """The tenant's audit events, newest (highest seq) first, filtered. Raises WrongSchema outside it."""
    require_schema(tenant_schema)
    return _filtered(AuditEvent.objects.all(), filters or {})


def audit_event_export(*, tenant_schema: str, filters: AuditEventFilters | None = None,
                       chunk: int = CHUNK) -> Iterator[dict[str, Any]]:
    """The tenant's filtered audit events, oldest first, as the chain's fields (``data`` parsed exactly, see
    chain.parse_json; ``occurred_at`` in canonical text), one query per ``chunk`` events. Each query enters the
    tenant's schema itself: a streamed response is iterated after the request has left it."""
    after: int | None = None  # not 0: an event the trigger did not number has seq 0, and must be seen
    while True:
        with in_schema(tenant_schema):
            events = AuditEvent.objects.all() if after is None else AuditEvent.objects.filter(seq__gt=after)
            rows = [_chained(row) for row in _filtered(events, filters or {}).order_by("seq").annotate(data_text=Cast("data", TextField()))
                    .values_list(*_COLUMNS)[:chunk]]
        yield from rows
        if len(rows) < chunk:
            return
        after = rows[-1]["seq"]


_COLUMNS = ("seq", "id", "occurred_at", "actor_kind", "actor_id", "action", "target_type", "target_id", "data_text",
            "prev_hash", "hash")


def _chained(row: tuple[Any, ...]) -> dict[str, Any]:
    """An event's chained fields, ``data`` from its stored JSON text (exact numbers, never floats)."""
    event = dict(zip(_COLUMNS, row, strict=True))
    return {**event, "id": str(event["id"]), "occurred_at": chain.timestamp_text(event["occurred_at"]),
            "data": chain.parse_json(event.pop("data_text"))}


def audit_chain_verify(*, tenant_schema: str) -> chain.ChainReport:
    """Walk the tenant's whole audit chain against its anchor; report OK or the first break (see
    chain.verify_chain). Reads CHUNK events per query. Raises WrongSchema outside the tenant's schema."""
    require_schema(tenant_schema)
    # the anchor first: events committed while the walk runs only add to the chain beyond it
    anchor = AuditChainAnchor.objects.filter(schema_name=tenant_schema).values_list("head_seq", "head_hash").first()
    return chain.verify_chain(audit_event_export(tenant_schema=tenant_schema),
                              anchor=chain.Anchor(seq=anchor[0], hash=anchor[1]) if anchor else None)
