"""Committed writers: several connections at once make one gapless chain; tenants do not wait on each other;
the command's exit status on a real process; the export streamed under ASGI."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.test import AsyncClient
from django_tenants.utils import schema_context

from common.actors import Actor
from conftest import destroy_tenant, provision_for_test
from control_plane.audit import chain
from control_plane.audit.models import AuditEvent
from control_plane.audit.selectors import audit_chain_verify
from control_plane.audit.services import audit_event_record
from tenants import db_roles
from tests.processes import REPO, process_env

ACTOR = Actor(kind="system", id="tests")


@pytest.fixture
def committed_tenant(committed):
    provisioned = provision_for_test("chain")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def test_concurrent_writers_make_one_gapless_valid_chain(committed_tenant):
    # given
    tenant, writers, each = committed_tenant.tenant, 6, 25
    before = _count(tenant.schema_name)
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            start.wait()
            for n in range(each):
                with transaction.atomic(), schema_context(tenant.schema_name):
                    audit_event_record(tenant=tenant, actor=ACTOR, action="test.concurrent",
                                       data={"writer": writer, "n": n})
                    time.sleep(0.001 * (n % 3))  # hold the chain lock a little, as a step transaction does
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    # when
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # then
    assert not errors
    with schema_context(tenant.schema_name):
        seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
        report = audit_chain_verify(tenant_schema=tenant.schema_name)
    assert seqs == list(range(1, before + writers * each + 1))
    assert report.ok and report.checked == before + writers * each, report.first_failure


def _count(schema: str) -> int:
    with schema_context(schema):
        return AuditEvent.objects.count()


def test_a_tenant_does_not_wait_for_another_tenants_chain(committed_tenant):
    # given another tenant's writer holding its chain lock in an open transaction
    other = provision_for_test("other")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic(), schema_context(other.schema):
            audit_event_record(tenant=other.tenant, actor=ACTOR, action="test.hold")
            holding.set()
            release.wait(30)
        connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        # when
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        started = time.monotonic()
        with schema_context(committed_tenant.schema):
            audit_event_record(tenant=committed_tenant.tenant, actor=ACTOR, action="test.free")
        # then
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        holder.join(30)
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        destroy_tenant(other.tenant)


def test_the_command_exits_0_when_intact_and_1_when_tampered(committed_tenant):
    # given
    slug, schema = committed_tenant.tenant.slug, committed_tenant.schema
    command = [sys.executable, "manage.py", "audit_verify", "--tenant", slug]
    intact = subprocess.run(command, cwd=REPO, env=process_env(), capture_output=True, text=True, timeout=120)
    assert intact.returncode == 0, intact.stderr
    assert f"{slug}: OK" in intact.stdout
    # when a superuser rewrites an event
    with db_roles.owner_context(), connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{schema}".audit_auditevent DISABLE TRIGGER audit_refuse_change')
        cursor.execute(f"UPDATE \"{schema}\".audit_auditevent SET actor_id = 'someone else' WHERE seq = 1")
        cursor.execute(f'ALTER TABLE "{schema}".audit_auditevent ENABLE TRIGGER audit_refuse_change')
    # then
    tampered = subprocess.run(command, cwd=REPO, env=process_env(), capture_output=True, text=True, timeout=120)
    assert tampered.returncode == 1
    assert f"{slug}: BROKEN at seq 1 (hash_mismatch)" in tampered.stdout
    assert f"Audit chain broken for 1 of 1 tenants: {slug}." in tampered.stderr


@pytest.mark.asyncio
async def test_the_export_streams_under_asgi(committed_tenant):
    # given more events than one chunk
    from asgiref.sync import sync_to_async

    def write_many() -> None:
        with transaction.atomic(), schema_context(committed_tenant.schema):
            for n in range(1100):
                audit_event_record(tenant=committed_tenant.tenant, actor=ACTOR, action="test.many", data={"n": n})
    await sync_to_async(write_many)()
    # when
    response = await AsyncClient().get("/v1/audit-events/export?format=jsonl",
                                       headers={"Authorization": f"Bearer {committed_tenant.key}"})
    # then
    assert response.status_code == 200 and response.is_async
    chunks = [chunk async for chunk in response.streaming_content]
    assert len(chunks) >= 2  # one per query of 1000 events
    events = [chain.parse_json(line) for line in b"".join(chunks).decode().splitlines()]
    assert len(events) >= 1100
    assert chain.verify_chain(events, anchor=None, expect_anchor=False).ok


def test_deleting_a_tenant_drops_its_chain_and_keeps_its_anchor_until_purged(committed):
    # given
    from control_plane.audit_anchor.models import AuditChainAnchor
    from tenants import services as tenant_services

    provisioned = provision_for_test("gone")
    schema = provisioned.schema
    head = AuditChainAnchor.objects.get(schema_name=schema)
    try:
        # when the tenant is deleted: its schema (and chain) is dropped despite the triggers
        tenant_services.tenant_delete(tenant=provisioned.tenant, actor=ACTOR)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema])
            assert cursor.fetchone()[0] == 0
        # then the anchor stays as the chain's last head
        assert AuditChainAnchor.objects.get(schema_name=schema).head_seq >= head.head_seq
    finally:
        destroy_tenant(provisioned.tenant)
    assert not AuditChainAnchor.objects.filter(schema_name=schema).exists()
