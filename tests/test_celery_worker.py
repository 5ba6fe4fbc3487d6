"""A real Celery worker process runs tenant tasks in the right schema, and only for active tenants."""

from __future__ import annotations

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.models import Ping
from data_plane.tests.factories import PingFactory
from data_plane.tasks import ping_answer_task
from tenants import services as tenant_services
from tests.processes import wait_for

pytestmark = pytest.mark.worker


def completed_ping(schema: str, ping_id) -> Ping | None:
    with schema_context(schema):
        ping = Ping.objects.get(id=ping_id)
    return ping if ping.status == Ping.Status.COMPLETED else None


@pytest.fixture
def two_committed_tenants(committed):
    first, second = provision_for_test("wk-one"), provision_for_test("wk-two")
    yield first, second
    destroy_tenant(first.tenant)
    destroy_tenant(second.tenant)


def test_worker_answers_each_tenants_ping_in_that_tenants_schema(worker_process, two_committed_tenants):
    # given
    pings = {}
    for provisioned in two_committed_tenants:
        with schema_context(provisioned.schema):
            pings[provisioned.schema] = services.ping_create(tenant=provisioned.tenant, message="hello",
                                                             actor=TEST_ACTOR).id
    # when the worker has answered both
    answered = {schema: wait_for(lambda s=schema, p=ping_id: completed_ping(s, p), timeout=30,
                                 what=f"ping {ping_id} in {schema}") for schema, ping_id in pings.items()}
    # then
    for schema, ping in answered.items():
        assert ping.observed_schema == schema
        assert ping.worker.startswith("test-worker@")
        assert ping.deliveries == 1
        assert ping.completed_at >= ping.requested_at


def test_worker_refuses_tasks_of_a_suspended_tenant(worker_process, two_committed_tenants):
    suspended, active = two_committed_tenants
    with schema_context(suspended.schema):
        waiting = PingFactory()
    tenant_services.tenant_suspend(tenant=suspended.tenant, reason="test", actor=TEST_ACTOR)
    connection.set_schema_to_public()
    # when: a task addressed to the suspended tenant, then one to an active tenant (the worker runs them in order)
    ping_answer_task.delay(tenant_schema=suspended.schema, ping_id=str(waiting.id))
    with schema_context(active.schema):
        marker = services.ping_create(tenant=active.tenant, message="after", actor=TEST_ACTOR)
    wait_for(lambda: completed_ping(active.schema, marker.id), timeout=30, what="the marker ping")
    # then
    with schema_context(suspended.schema):
        waiting.refresh_from_db()
    assert waiting.status == Ping.Status.QUEUED
    assert waiting.deliveries == 0
    assert f"Tenant schema '{suspended.schema}' is suspended" in worker_process.read_text()
