"""Appending to the audit log from another context's own statement (no Django import).

A run's step logs its tool calls and the run's end with its checkpoint's commit, in the same statement and so
the same transaction: the data plane's checkpoint store embeds :func:`audit_insert_part` as one part of its
WITH statement. The table's insert trigger (audit_anchor/0001) numbers, links and hashes each event whatever
the INSERT says, as for every other writer. Everything else records with ``services.audit_event_record``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AuditEntry:
    """One event for a tenant's audit log, as :func:`audit_insert_part` takes it."""

    actor_kind: str
    actor_id: str
    action: str
    target_type: str = ""
    target_id: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"actor_kind": self.actor_kind, "actor_id": self.actor_id, "action": self.action,
                "target_type": self.target_type, "target_id": self.target_id, "data": dict(self.data)}


def audit_insert_part(*, qualifier: str, param: str, after: str) -> str:
    """A data-modifying WITH part, ``audit AS (...)``, that appends the events of the query parameter
    ``param`` (psycopg's ``%(param)s``: a JSON array of ``AuditEntry.to_json()``, in order) to the audit log of
    the schema ``qualifier`` names (``'"t_acme".'``), once for each row of the preceding part ``after``: not at
    all when that part returned no row (a fenced writer logs nothing). It reads from ``after``, so it runs
    after it: the tenant's chain lock is taken after that part's row locks, as the log's rule asks (record
    audit events last)."""
    return (f"audit AS (\n"
            f"  INSERT INTO {qualifier}audit_auditevent (id, occurred_at, actor_kind, actor_id, action, target_type,\n"
            f"                                          target_id, data)\n"
            f"  SELECT gen_random_uuid(), now(), a.value->>'actor_kind', a.value->>'actor_id', a.value->>'action',\n"
            f"         a.value->>'target_type', a.value->>'target_id', a.value->'data'\n"
            f"  FROM {after}, jsonb_array_elements(%({param})s::jsonb) WITH ORDINALITY AS a(value, ord)\n"
            f"  ORDER BY a.ord\n"
            f")")
