"""usage_collect: every finished LLM call, tool call and run of a tenant becomes exactly one usage record."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django_tenants.utils import schema_context

from billing import services
from billing.models import UsageCollection, UsageRecord
from billing.tests.factories import finished_run, journal
from data_plane import selectors as data_plane_selectors
from data_plane.models import EffectRecordRow

T0 = datetime(2026, 3, 5, 10, 0, tzinfo=timezone.utc)
ROUTE = {"chosen": "openai/gpt-4o-mini", "reason": "short input", "rule": "cheap-first"}


def _records(tenant) -> list[tuple]:
    return list(UsageRecord.objects.filter(tenant=tenant).order_by("occurred_at", "source_key").values_list(
        "kind", "name", "agent_name", "input_tokens", "output_tokens", "cached_input_tokens", "cost_usd",
        "is_success", "occurred_at"))


@pytest.fixture
def journalled(tenant_a):
    """A completed run: a routed model call, a tool call, a retried step's model call (attempts 2), a replayed
    result (copied, nothing paid), a failed model call, and a call still in flight."""
    with schema_context(tenant_a.schema):
        run = finished_run(finished_at=T0 + timedelta(minutes=5), started_at=T0, end_user="alice", step=4,
                           input_tokens=1500, output_tokens=260, cost_usd="0.0123")
        first = journal(run, step=0, key="plan", finished_at=T0 + timedelta(minutes=1), input_tokens=1000,
                        output_tokens=200, cached_input_tokens=300, cost_usd="0.00021", request={"route": ROUTE})
        journal(run, step=1, key="act:call-1", kind="tool", name="calculator", finished_at=T0 + timedelta(minutes=2),
                latency_ms=3.5)
        retried = journal(run, step=2, key="reflect", attempts=2, finished_at=T0 + timedelta(minutes=3),
                          input_tokens=500, output_tokens=60, cost_usd="0.000111")
        journal(run, step=3, key="plan", reused_from=first.id, finished_at=T0 + timedelta(minutes=4),
                input_tokens=1000, output_tokens=200, cached_input_tokens=300, cost_usd="0.00021")
        journal(run, step=3, key="extra", status="failed", finished_at=T0 + timedelta(minutes=4, seconds=30))
        journal(run, step=4, key="late", status="started", finished_at=None)
    return run, first, retried


def test_each_finished_call_and_run_is_recorded_once_with_its_agent_tokens_and_cost(tenant_a, journalled):
    run, first, retried = journalled
    # when
    collected = services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=1))
    # then
    assert (collected.effects_read, collected.runs_read, collected.inserted) == (5, 1, 6)
    assert _records(tenant_a.tenant) == [
        ("llm", "openai/gpt-4o-mini", "writer", 1000, 200, 300, Decimal("0.00021000"), True, T0 + timedelta(minutes=1)),
        ("tool", "calculator", "writer", 0, 0, 0, Decimal("0E-8"), True, T0 + timedelta(minutes=2)),
        ("llm", "openai/gpt-4o-mini", "writer", 500, 60, 0, Decimal("0.00011100"), True, T0 + timedelta(minutes=3)),
        ("llm", "openai/gpt-4o-mini", "writer", 0, 0, 0, Decimal("0E-8"), True, T0 + timedelta(minutes=4)),
        ("llm", "openai/gpt-4o-mini", "writer", 0, 0, 0, Decimal("0E-8"), False,
         T0 + timedelta(minutes=4, seconds=30)),
        ("run", "completed", "writer", 0, 0, 0, Decimal("0E-8"), True, T0 + timedelta(minutes=5)),
    ]
    records = {record.source_key: record for record in UsageRecord.objects.filter(tenant=tenant_a.tenant)}
    routed = records[first.idempotency_key]
    assert routed.details == {"session_id": str(run.id), "step": 0, "attempts": 1, "end_user": "alice",
                              "route": ROUTE}
    assert routed.run_id == run.id and routed.agent_id == run.agent_version.agent_id and routed.latency_ms == 10.0
    assert records[retried.idempotency_key].details["attempts"] == 2
    replayed = records[f"{run.id}:3:plan"]
    assert replayed.details["replayed"] is True and replayed.details["reused_from"] == first.id
    run_record = records[services.metering.run_source_key(run.id, run.finished_at)]
    assert run_record.details == {"session_id": str(run.id), "top_level": True, "parent_run_id": None, "steps": 4,
                                  "input_tokens": 1500, "output_tokens": 260, "cost_usd": "0.01230000",
                                  "end_user": "alice"}
    assert run_record.latency_ms == 300_000.0
    watermark = UsageCollection.objects.get(tenant=tenant_a.tenant)
    assert (watermark.effects_until, watermark.runs_until) == (T0 + timedelta(hours=1), T0 + timedelta(hours=1))


def test_collecting_again_or_with_the_watermark_reset_records_nothing_twice(tenant_a, journalled):
    # given
    services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=1))
    before = _records(tenant_a.tenant)
    # when: the task is delivered again, and a collector starts over from nothing (the whole journal again)
    again = services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=1, minutes=1))
    UsageCollection.objects.filter(tenant=tenant_a.tenant).update(effects_until=None, runs_until=None)
    from_scratch = services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=2), page=2)
    # then
    assert again.inserted == 0 and from_scratch.inserted == 0 and from_scratch.effects_read == 5
    assert _records(tenant_a.tenant) == before


def test_a_retried_step_that_finishes_after_the_watermark_is_recorded_once(tenant_a, journalled):
    # given: the collector ran while the call was still in flight (its step then retried: attempts 2)
    services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=1))
    run, _, _ = journalled
    with schema_context(tenant_a.schema):
        late = EffectRecordRow.objects.get(idempotency_key=f"{run.id}:4:late")
        late.status, late.attempts, late.input_tokens, late.output_tokens = "succeeded", 2, 40, 4
        late.cost_usd, late.result = Decimal("0.00001"), {"usage": {"cached_input_tokens": 8}}
        # stamped a moment before the watermark: its statement started before the collection, committed after
        late.finished_at = T0 + timedelta(minutes=59, seconds=30)
        late.save()
    # when
    first = services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=1, minutes=1))
    second = services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=1, minutes=2))
    # then
    assert (first.inserted, second.inserted) == (1, 0)
    record = UsageRecord.objects.get(tenant=tenant_a.tenant, source_key=late.idempotency_key)
    assert (record.input_tokens, record.output_tokens, record.cached_input_tokens, record.cost_usd,
            record.details["attempts"]) == (40, 4, 8, Decimal("0.00001000"), 2)
    assert first.hours == frozenset({T0}) and first.days == frozenset({T0.replace(hour=0)})


def test_a_sub_runs_calls_belong_to_the_top_level_runs_session(tenant_a):
    with schema_context(tenant_a.schema):
        parent = finished_run(finished_at=T0 + timedelta(minutes=9), started_at=T0)
        child = finished_run(agent="researcher", parent=parent, finished_at=T0 + timedelta(minutes=8),
                             started_at=T0 + timedelta(minutes=1))
        grandchild = finished_run(agent="fetcher", parent=child, finished_at=T0 + timedelta(minutes=7),
                                  started_at=T0 + timedelta(minutes=2))
        call = journal(grandchild, step=0, key="fetch", finished_at=T0 + timedelta(minutes=6), cost_usd="0.5")
    # when
    services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=1))
    # then
    sessions = dict(UsageRecord.objects.filter(tenant=tenant_a.tenant).values_list("source_key", "details"))
    assert {key: (details["session_id"], details.get("top_level")) for key, details in sessions.items()} == {
        call.idempotency_key: (str(parent.id), None),
        services.metering.run_source_key(grandchild.id, grandchild.finished_at): (str(parent.id), False),
        services.metering.run_source_key(child.id, child.finished_at): (str(parent.id), False),
        services.metering.run_source_key(parent.id, parent.finished_at): (str(parent.id), True),
    }
    assert UsageRecord.objects.get(source_key=call.idempotency_key).agent_name == "fetcher"


def test_a_call_a_budget_refused_is_no_usage_but_a_failed_call_is(tenant_a):
    # given: a run whose first call failed at the provider and whose second a budget refused before it was made
    with schema_context(tenant_a.schema):
        run = finished_run(finished_at=T0 + timedelta(minutes=3), started_at=T0, status="failed")
        failed = journal(run, step=0, key="plan", finished_at=T0 + timedelta(minutes=1), status="failed")
        refused = journal(run, step=1, key="plan", finished_at=T0 + timedelta(minutes=2), status="failed")
        EffectRecordRow.objects.filter(id=failed.id).update(
            result={"failed": {"code": "model_rejected", "message": "no"}})
        EffectRecordRow.objects.filter(id=refused.id).update(
            result={"failed": {"code": "budget_exceeded", "message": "The run's limit would be exceeded"}})
    # when
    services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=1))
    # then: the provider's failure is a failed LLM call; the refused call, never made, is not a call at all
    keys = dict(UsageRecord.objects.filter(tenant=tenant_a.tenant, kind="llm").values_list("source_key", "is_success"))
    assert keys == {failed.idempotency_key: False}


def test_a_run_retried_after_failing_is_recorded_at_each_finish(tenant_a):
    with schema_context(tenant_a.schema):
        run = finished_run(status="failed", finished_at=T0 + timedelta(minutes=1), started_at=T0)
    services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(minutes=30))
    with schema_context(tenant_a.schema):
        run.status, run.finished_at = "completed", T0 + timedelta(minutes=40)
        run.save()
    services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=1))
    assert list(UsageRecord.objects.filter(tenant=tenant_a.tenant).values_list("name", "is_success")) == [
        ("failed", False), ("completed", True)]


def test_another_tenants_collection_sees_nothing_of_this_tenants_journal(tenant_a, tenant_b, journalled):
    # when
    b_collected = services.usage_collect(tenant=tenant_b.tenant, now=T0 + timedelta(hours=1))
    services.usage_collect(tenant=tenant_a.tenant, now=T0 + timedelta(hours=1))
    # then
    assert (b_collected.effects_read, b_collected.runs_read, b_collected.inserted) == (0, 0, 0)
    assert UsageRecord.objects.filter(tenant=tenant_b.tenant).count() == 0
    assert UsageRecord.objects.filter(tenant=tenant_a.tenant).count() == 6


def test_the_journal_selector_refuses_to_read_outside_the_tenants_schema(tenant_a, tenant_b):
    from common.schemas import WrongSchema

    with schema_context(tenant_b.schema), pytest.raises(WrongSchema):
        data_plane_selectors.effect_list_finished(tenant_schema=tenant_a.schema, since=None, until=T0)
