"""Metering over real processes: a run executed by a real Celery worker against our model server, one of its
steps retried after the provider failed, then replayed; the collector, run twice by the worker, records each
call exactly once, and the replayed answers cost nothing."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from django.db.models import Sum
from django_tenants.utils import schema_context

from billing import tasks as billing_tasks
from billing.models import UsageCollection, UsageRecord, UsageRollup
from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.models import Checkpoint, EffectRecord, Run
from data_plane.tools import BUILTIN_TOOLS
from tests.processes import wait_for

pytestmark = pytest.mark.worker

MODEL = "openai/metered-e2e"  # priced in the test workers (tests/conftest.py: LLM_LOCAL_PRICES)


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("e2e-metering")
    yield provisioned
    UsageRollup.objects.filter(tenant=provisioned.tenant).delete()
    UsageRecord.objects.filter(tenant=provisioned.tenant).delete()
    destroy_tenant(provisioned.tenant)


def _finished(schema: str, run_id) -> Run | None:
    with schema_context(schema):
        run = Run.objects.get(id=run_id)
    return run if run.status in ("completed", "failed", "cancelled") else None


def _collect_through_the_worker(tenant) -> None:
    """Send the collector task to the worker and wait until it has finished (it stamps collected_at last)."""
    before = UsageCollection.objects.filter(tenant=tenant.tenant).values_list("collected_at", flat=True).first()
    billing_tasks.usage_collect_task.delay(tenant_schema=tenant.schema)
    wait_for(lambda: UsageCollection.objects.filter(tenant=tenant.tenant).exclude(collected_at=before)
             .exclude(collected_at=None).exists(), timeout=60, what="the worker to collect usage")


def test_a_retried_step_and_a_replay_are_recorded_once_and_replays_cost_nothing(worker_process, model_server,
                                                                                 tenant):
    # given: the provider fails the first call 4 times (every attempt of the step's first try: LLM_MAX_RETRIES=3),
    # so the step is retried by its task and the call journalled once with attempts=2
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", timeout=10, json={
        "name": "metered-e2e", "turns": [
            {"content": "Plan: use the calculator.", "cached_tokens": 8, "fail": {"status": 503, "times": 4}},
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
            {"content": "It is 42."}, {"content": "Checked. DONE"}]}).raise_for_status()
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name="metered", description="", actor=TEST_ACTOR, spec={
            "instructions": "Be exact.", "models": [MODEL], "tools": [BUILTIN_TOOLS["calculator"].to_json()]})
        run = services.run_start(tenant=tenant.tenant, agent_id=agent.id, input="What is 6*7?", actor=TEST_ACTOR)
    original = wait_for(lambda: _finished(tenant.schema, run.id), timeout=90, what="the run to finish")
    assert original.status == "completed", original.error
    with schema_context(tenant.schema):
        retried = EffectRecord.objects.get(run=run, step=0)
        assert (retried.attempts, retried.status) == (2, "succeeded")
        replay = services.run_fork(tenant=tenant.tenant, run_id=run.id,
                                   checkpoint_id=Checkpoint.objects.get(run=run, step=1).id, actor=TEST_ACTOR)
    assert wait_for(lambda: _finished(tenant.schema, replay.id), timeout=60, what="the replay").status == "completed"
    with schema_context(tenant.schema):
        journal = {effect.idempotency_key: effect for effect in EffectRecord.objects.all()}
    assert journal and all(effect.status == "succeeded" for effect in journal.values())
    assert {effect.run_id for effect in journal.values() if effect.reused_from is not None} == {replay.id}

    # when: the worker collects twice
    _collect_through_the_worker(tenant)
    _collect_through_the_worker(tenant)

    # then: one record per journalled call, one per finished run
    records = {record.source_key: record for record in UsageRecord.objects.filter(tenant=tenant.tenant)}
    assert set(records) == set(journal) | {
        f"run:{r.id}:{r.finished_at.isoformat()}" for r in (_finished(tenant.schema, run.id),
                                                             _finished(tenant.schema, replay.id))}
    first = records[retried.idempotency_key]
    assert (first.kind, first.name, first.input_tokens, first.output_tokens, first.cached_input_tokens,
            first.cost_usd, first.details["attempts"]) == (
        "llm", MODEL, retried.input_tokens, retried.output_tokens, 8, retried.cost_usd, 2)
    assert first.cost_usd > 0 and first.agent_name == "metered"
    # the original run's calls cost what the journal says, the replay's nothing
    for key, effect in journal.items():
        record = records[key]
        if effect.reused_from is None:
            assert (record.input_tokens, record.output_tokens, record.cost_usd) == (
                effect.input_tokens, effect.output_tokens, effect.cost_usd)
        else:
            assert (record.input_tokens, record.output_tokens, record.cost_usd, record.details["replayed"]) == (
                0, 0, Decimal(0), True)
    billed = UsageRecord.objects.filter(tenant=tenant.tenant, kind="llm").aggregate(cost=Sum("cost_usd"))["cost"]
    assert billed == sum((e.cost_usd for e in journal.values() if e.kind == "model" and e.reused_from is None),
                         Decimal(0)) > 0
    # and the worker's rollups of those hours and days are the records' sums
    for period in ("hour", "day"):
        rolled = UsageRollup.objects.filter(tenant=tenant.tenant, period=period, kind="llm").aggregate(
            calls=Sum("count"), cost=Sum("cost_usd"), tokens=Sum("input_tokens"))
        assert rolled == {"calls": sum(1 for e in journal.values() if e.kind == "model"), "cost": billed,
                          "tokens": sum(e.input_tokens for e in journal.values() if e.reused_from is None)}
