"""Task functions called in-process (eager apply): the tenant travels with the task, explicitly."""

from __future__ import annotations

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from data_plane.models import Ping
from data_plane.tests.factories import PingFactory
from data_plane.tasks import ping_answer_task


def test_task_runs_in_the_named_schema_whatever_the_connection_was_on(tenant_a, tenant_b):
    # given: a ping of A, and a connection left on B's schema by earlier code
    with schema_context(tenant_a.schema):
        ping = PingFactory()
    connection.set_tenant(tenant_b.tenant)
    # when
    result = ping_answer_task.apply(kwargs={"tenant_schema": tenant_a.schema, "ping_id": str(ping.id)})
    # then
    assert result.successful()
    assert connection.schema_name == "public"
    with schema_context(tenant_a.schema):
        ping.refresh_from_db()
    assert ping.status == Ping.Status.COMPLETED
    assert ping.observed_schema == tenant_a.schema


def test_redelivery_keeps_the_first_answer(tenant_a):
    with schema_context(tenant_a.schema):
        ping = PingFactory()
    for _ in range(2):
        ping_answer_task.apply(kwargs={"tenant_schema": tenant_a.schema, "ping_id": str(ping.id)})
    with schema_context(tenant_a.schema):
        ping.refresh_from_db()
    assert ping.deliveries == 2
    assert ping.status == Ping.Status.COMPLETED


def test_a_tenant_task_without_a_tenant_is_refused(tenant_a):
    result = ping_answer_task.apply(kwargs={"ping_id": "00000000-0000-0000-0000-000000000000"})
    assert result.failed()
    assert isinstance(result.result, TypeError)
    assert "tenant_schema" in str(result.result)


@pytest.mark.parametrize("schema", ["t_nobody_here", "public"])
def test_a_task_for_an_unknown_schema_is_dropped(tenant_a, schema):
    result = ping_answer_task.apply(kwargs={"tenant_schema": schema, "ping_id": "00000000-0000-0000-0000-000000000000"})
    assert result.successful()
    assert result.result is None
    assert connection.schema_name == "public"


def test_a_worker_trusts_an_active_tenant_briefly_then_sees_its_suspension(tenant_a, monkeypatch):
    from django.test.utils import CaptureQueriesContext

    from tenants import services as tenant_services
    from tenants import tasking

    clock = [1000.0]
    monkeypatch.setattr(tasking, "monotonic", lambda: clock[0])  # the clock is the outside edge here
    monkeypatch.setattr(tasking, "_active", {})
    with schema_context(tenant_a.schema):
        first, second, third = PingFactory(), PingFactory(), PingFactory()
    ping_answer_task.apply(kwargs={"tenant_schema": tenant_a.schema, "ping_id": str(first.id)})
    tenant_services.tenant_suspend(tenant=tenant_a.tenant, reason="x", actor=tenant_services.Actor("system", "t"))
    # within the cache time the worker does not look the tenant up again
    with CaptureQueriesContext(connection) as queries:
        ping_answer_task.apply(kwargs={"tenant_schema": tenant_a.schema, "ping_id": str(second.id)})
    assert not [q["sql"] for q in queries.captured_queries if "tenants_tenant" in q["sql"]]
    # after it, the suspension is seen and the task is dropped
    clock[0] += tasking.ACTIVE_TENANT_CACHE_SECONDS + 0.1
    ping_answer_task.apply(kwargs={"tenant_schema": tenant_a.schema, "ping_id": str(third.id)})
    with schema_context(tenant_a.schema):
        statuses = [Ping.objects.get(id=p.id).status for p in (first, second, third)]
    assert statuses == [Ping.Status.COMPLETED, Ping.Status.COMPLETED, Ping.Status.QUEUED]
