"""The metering tasks, called directly (the worker path is in tests/test_metering_end_to_end.py)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone as django_timezone
from django_tenants.utils import schema_context

from billing import tasks
from billing.models import UsageRecord, UsageRollup
from billing.periods import day_start, hour_start
from billing.tests.factories import finished_run, journal


def test_the_collect_task_records_and_rolls_up_what_it_added(tenant_a):
    # given: a run that finished a minute ago
    now = django_timezone.now()
    with schema_context(tenant_a.schema):
        run = finished_run(finished_at=now - timedelta(minutes=1), started_at=now - timedelta(minutes=3))
        journal(run, step=0, key="plan", finished_at=now - timedelta(minutes=2), input_tokens=70, output_tokens=7,
                cost_usd="0.001")
    # when: delivered twice
    first = tasks.usage_collect_task(tenant_schema=tenant_a.schema)
    second = tasks.usage_collect_task(tenant_schema=tenant_a.schema)
    # then
    assert (first["inserted"], second["inserted"]) == (2, 0)
    assert UsageRecord.objects.filter(tenant=tenant_a.tenant).count() == 2
    hours = set(UsageRollup.objects.filter(tenant=tenant_a.tenant, period="hour", kind="llm")
                .values_list("period_start", "count", "input_tokens"))
    assert hours == {(hour_start(now - timedelta(minutes=2)), 1, 70)}
    days = set(UsageRollup.objects.filter(tenant=tenant_a.tenant, period="day", kind="llm")
               .values_list("period_start", "count", "input_tokens"))
    assert days == {(day_start(now - timedelta(minutes=2)), 1, 70)}


def test_the_rollup_task_recomputes_the_current_and_previous_hour_and_day(tenant_a):
    now = django_timezone.now()
    UsageRecord.objects.create(tenant=tenant_a.tenant, source_key="earlier", kind="llm", name="m", input_tokens=5,
                               occurred_at=hour_start(now) - timedelta(minutes=30))
    assert tasks.usage_rollup_task(tenant_schema=tenant_a.schema) == 4
    assert list(UsageRollup.objects.filter(tenant=tenant_a.tenant, period="hour")
                .values_list("period_start", "input_tokens")) == [(hour_start(now) - timedelta(hours=1), 5)]


def test_tasks_for_a_schema_nobody_owns_do_nothing(db):
    assert tasks.usage_collect_task(tenant_schema="t_nobody") == {"inserted": 0}
    assert tasks.usage_rollup_task(tenant_schema="t_nobody") == 0
