from __future__ import annotations

import uuid
from typing import Any, NoReturn

from django.db import models


class AuditLogIsAppendOnly(RuntimeError):
    """A programming error: code tried to change or remove an audit event. The database refuses it too."""


def _refuse(what: str) -> NoReturn:
    raise AuditLogIsAppendOnly(f"The audit log is append-only: {what} is refused (see docs/security-audit.md).")


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    """No update or delete path through the ORM; the table's triggers refuse them to raw SQL as well."""

    def update(self, **kwargs: Any) -> NoReturn:
        _refuse("update")

    def delete(self) -> NoReturn:
        _refuse("delete")

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("bulk_update")

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("update_or_create")


class AuditEvent(models.Model):
    """One thing that happened in a tenant: who, what, to which object, with which details.

    Append-only and hash-chained: the insert trigger (audit_anchor/0001, installed by audit/0002) sets ``seq``
    (gapless, in commit order), ``prev_hash`` and ``hash`` whatever the insert says; they come back through
    RETURNING (db_default), in the insert's own round trip.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    occurred_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor_kind = models.CharField(max_length=32)
    actor_id = models.CharField(max_length=64)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True, default="")
    target_id = models.CharField(max_length=64, blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    seq = models.BigIntegerField(unique=True, db_default=0, editable=False)
    prev_hash = models.CharField(max_length=64, db_default="", editable=False)
    hash = models.CharField(max_length=64, db_default="", editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            _refuse("save of an existing event")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("delete")
