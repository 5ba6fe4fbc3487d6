"""The audit table refuses UPDATE, DELETE and TRUNCATE, through the ORM and through raw SQL; every insert,
raw ones too, is numbered, linked and hashed by the trigger."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction
from django_tenants.utils import schema_context

from common.actors import Actor
from control_plane.audit import chain
from control_plane.audit.models import AuditEvent, AuditLogIsAppendOnly
from control_plane.audit.services import audit_event_record
from control_plane.audit_anchor.models import AuditChainAnchor

ACTOR = Actor(kind="system", id="tests")


@pytest.mark.parametrize("statement", [
    "UPDATE audit_auditevent SET action = 'forged'",
    "UPDATE audit_auditevent SET data = '{}' WHERE seq = 1",
    "DELETE FROM audit_auditevent WHERE seq = 1",
    "DELETE FROM audit_auditevent WHERE false",  # refused even when it would touch nothing
    "TRUNCATE audit_auditevent",
])
def test_raw_sql_cannot_change_or_remove_events(tenant_a, statement):
    # given
    with schema_context(tenant_a.schema):
        audit_event_record(tenant=tenant_a.tenant, actor=ACTOR, action="test.event", data={"n": 1})
        before = list(AuditEvent.objects.order_by("seq").values_list("seq", "action", "data", "hash"))
        # when
        with pytest.raises(DatabaseError) as exc, transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
        # then
        verb = statement.split()[0]
        assert f"The audit log {tenant_a.schema}.audit_auditevent is append-only: {verb} is refused." in str(exc.value)
        assert list(AuditEvent.objects.order_by("seq").values_list("seq", "action", "data", "hash")) == before


def test_the_orm_offers_no_update_or_delete(tenant_a):
    with schema_context(tenant_a.schema):
        event = audit_event_record(tenant=tenant_a.tenant, actor=ACTOR, action="test.event")
        event.action = "forged"
        for attempt in (event.save, event.delete, AuditEvent.objects.all().delete,
                        lambda: AuditEvent.objects.filter(id=event.id).update(action="forged"),
                        lambda: AuditEvent.objects.bulk_update([event], ["action"])):
            with pytest.raises(AuditLogIsAppendOnly):
                attempt()
        assert AuditEvent.objects.get(id=event.id).action == "test.event"


def test_each_insert_is_numbered_linked_and_hashed_in_its_own_round_trip(tenant_a, django_assert_num_queries):
    with schema_context(tenant_a.schema):
        first = audit_event_record(tenant=tenant_a.tenant, actor=ACTOR, action="test.first", data={"é": 1.5})
        # when
        with django_assert_num_queries(1):
            second = audit_event_record(tenant=tenant_a.tenant, actor=ACTOR, action="test.second")
        # then the values the trigger set come back with the insert
        assert second.seq == first.seq + 1
        assert second.prev_hash == first.hash
        stored = AuditEvent.objects.get(id=second.id)
        assert (stored.seq, stored.prev_hash, stored.hash) == (second.seq, second.prev_hash, second.hash)
        assert second.hash == chain.event_hash({**{f: getattr(second, f) for f in chain.CHAINED_FIELDS}})
        anchor = AuditChainAnchor.objects.get(schema_name=tenant_a.schema)
        assert (anchor.head_seq, anchor.head_hash) == (second.seq, second.hash)


def test_a_raw_sql_insert_is_chained_whatever_it_claims(tenant_a):
    with schema_context(tenant_a.schema):
        last = audit_event_record(tenant=tenant_a.tenant, actor=ACTOR, action="test.event")
        # when an insert names its own seq and hashes
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO audit_auditevent (actor_kind, actor_id, action, seq, prev_hash, hash) "
                           "VALUES ('sql', 'psql', 'raw.insert', 1, %s, %s) RETURNING id",
                           ["f" * 64, "e" * 64])
            [event_id] = cursor.fetchone()
        # then the trigger's values win
        raw = AuditEvent.objects.get(id=event_id)
        assert (raw.seq, raw.prev_hash) == (last.seq + 1, last.hash)
        assert raw.hash == chain.event_hash({f: getattr(raw, f) for f in chain.CHAINED_FIELDS})
        assert (raw.target_type, raw.target_id, raw.data) == ("", "", {})
