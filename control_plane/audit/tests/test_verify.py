"""Tampering is found: a changed event, a deleted one, deleted newest ones, a rehashed one, an unchained one.

Each test plays the attacker with the powers it needs (a superuser disabling the table's triggers), inside
the test's transaction, so the session's tenants are left as they were."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django_tenants.utils import schema_context

from common.actors import Actor
from control_plane.audit.models import AuditEvent
from control_plane.audit.selectors import audit_chain_verify
from control_plane.audit.services import audit_event_record
from control_plane.audit_anchor.models import AuditChainAnchor
from tenants import db_roles

ACTOR = Actor(kind="system", id="tests")


@contextmanager
def triggers_disabled(*names: str) -> Iterator[None]:
    # As the tables' owner, which a tenant's database role is not (tenants.db_roles): what a superuser could do.
    with db_roles.owner_context(), connection.cursor() as cursor:
        for name in names:
            cursor.execute(f"ALTER TABLE audit_auditevent DISABLE TRIGGER {name}")
        yield
        for name in names:
            cursor.execute(f"ALTER TABLE audit_auditevent ENABLE TRIGGER {name}")


def tamper(sql: str, params: list | None = None) -> None:
    with triggers_disabled("audit_refuse_change", "audit_refuse_truncate"), connection.cursor() as cursor:
        cursor.execute(sql, params or [])


@pytest.fixture
def five_events(tenant_a) -> list[AuditEvent]:
    connection.set_schema(tenant_a.schema)
    return [audit_event_record(tenant=tenant_a.tenant, actor=ACTOR, action=f"test.{n}", target_type="thing",
                               target_id=str(n), data={"n": n, "note": "ünïcode"}) for n in range(5)]


def verify(tenant_a):
    with schema_context(tenant_a.schema):
        return audit_chain_verify(tenant_schema=tenant_a.schema)


def test_an_intact_chain_verifies(tenant_a, five_events):
    report = verify(tenant_a)
    assert report.ok and report.first_failure is None
    assert report.checked == AuditEvent.objects.count() and report.head_seq == five_events[-1].seq
    assert report.head_hash == five_events[-1].hash


def test_a_changed_event_is_found_at_its_seq(tenant_a, five_events):
    # when
    tamper("UPDATE audit_auditevent SET data = '{\"n\": 2, \"note\": \"nothing to see\"}' WHERE seq = %s",
           [five_events[2].seq])
    # then
    report = verify(tenant_a)
    assert not report.ok
    assert (report.first_failure.seq, report.first_failure.kind) == (five_events[2].seq, "hash_mismatch")
    assert report.head_seq == five_events[1].seq


def test_a_changed_and_rehashed_event_breaks_the_next_link(tenant_a, five_events):
    tamper("UPDATE audit_auditevent SET action = 'test.innocent', hash = public.audit_event_hash(id, seq, "
           "occurred_at, actor_kind, actor_id, 'test.innocent', target_type, target_id, data, prev_hash) "
           "WHERE seq = %s", [five_events[2].seq])
    report = verify(tenant_a)
    assert (report.first_failure.seq, report.first_failure.kind) == (five_events[3].seq, "broken_link")


def test_a_deleted_event_is_found_as_a_gap(tenant_a, five_events):
    tamper("DELETE FROM audit_auditevent WHERE seq = %s", [five_events[1].seq])
    report = verify(tenant_a)
    assert (report.first_failure.seq, report.first_failure.kind) == (five_events[1].seq, "gap")
    assert f"events {five_events[1].seq} are missing" in report.first_failure.message


def test_deleted_newest_events_are_found_through_the_anchor(tenant_a, five_events):
    tamper("DELETE FROM audit_auditevent WHERE seq >= %s", [five_events[3].seq])
    report = verify(tenant_a)
    assert (report.first_failure.seq, report.first_failure.kind) == (five_events[3].seq, "truncated")
    assert report.head_seq == five_events[2].seq


def test_a_truncated_log_is_found_through_the_anchor(tenant_a, five_events):
    tamper("TRUNCATE audit_auditevent")
    report = verify(tenant_a)
    assert (report.first_failure.seq, report.first_failure.kind, report.checked) == (1, "truncated", 0)


def test_events_written_after_a_truncation_still_show_the_gap(tenant_a, five_events):
    # given the newest events deleted
    tamper("DELETE FROM audit_auditevent WHERE seq >= %s", [five_events[3].seq])
    # when the application goes on writing
    later = audit_event_record(tenant=tenant_a.tenant, actor=ACTOR, action="test.later")
    # then the chain goes on from the anchor, not from the table, and the hole stays visible
    assert later.seq == five_events[-1].seq + 1
    report = verify(tenant_a)
    assert (report.first_failure.seq, report.first_failure.kind) == (five_events[3].seq, "gap")


def test_an_event_inserted_around_the_chain_trigger_is_found(tenant_a, five_events):
    with triggers_disabled("audit_chain_link"), connection.cursor() as cursor:
        cursor.execute("INSERT INTO audit_auditevent (id, occurred_at, actor_kind, actor_id, action, target_type, "
                       "target_id, data) VALUES (gen_random_uuid(), now(), 'x', 'x', 'forged', '', '', '{}')")
    report = verify(tenant_a)
    assert (report.first_failure.seq, report.first_failure.kind) == (0, "unexpected_seq")


def test_a_lost_anchor_is_reported(tenant_a, five_events):
    AuditChainAnchor.objects.filter(schema_name=tenant_a.schema).delete()
    assert verify(tenant_a).first_failure.kind == "anchor_missing"


def test_the_command_says_ok_or_where_it_broke_and_fails(tenant_a, five_events, capsys):
    # given an intact chain
    call_command("audit_verify", "--tenant", tenant_a.tenant.slug)
    assert f"{tenant_a.tenant.slug}: OK, {AuditEvent.objects.count()} events" in capsys.readouterr().out
    # when an event is deleted
    tamper("DELETE FROM audit_auditevent WHERE seq = %s", [five_events[2].seq])
    # then
    with pytest.raises(CommandError) as exc:
        call_command("audit_verify", "--tenant", tenant_a.tenant.slug)
    assert exc.value.returncode == 1
    assert f"{tenant_a.tenant.slug}: BROKEN at seq {five_events[2].seq} (gap)" in capsys.readouterr().out
    with pytest.raises(CommandError) as unknown:
        call_command("audit_verify", "--tenant", "no-such-tenant")
    assert "Tenant 'no-such-tenant' does not exist" in str(unknown.value)


def test_the_api_reports_the_first_failure(client, tenant_a, five_events):
    from conftest import bearer

    tamper("UPDATE audit_auditevent SET target_id = 'other' WHERE seq = %s", [five_events[4].seq])
    connection.set_schema_to_public()
    response = client.get("/v1/audit-events/verify", **bearer(tenant_a.key))
    assert response.status_code == 200
    body = response.json()
    assert (body["ok"], body["head_seq"], body["checked"]) == (False, five_events[3].seq, five_events[3].seq)
    assert body["first_failure"]["seq"] == five_events[4].seq and body["first_failure"]["kind"] == "hash_mismatch"
