"""Budget enforcement under concurrent runs: many runs of one tenant on two real Celery worker processes (each
with many threads), against one tenant budget. Their LLM calls (to our model server, priced by litellm's map
with the local prices) race for the same budget row: together they never spend past the limit, and the runs
that would have are stopped with budget_exceeded and a clear reason."""

from __future__ import annotations

import re
from decimal import Decimal

import httpx
import pytest
from django_tenants.utils import schema_context

from billing import services as billing_services
from billing.models import BudgetSpend, SpendReservation
from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.models import EffectRecord, Run
from tests.conftest import LOG_DIR, runtime_env
from tests.processes import celery_worker_args, log_tail, running, wait_for

pytestmark = pytest.mark.worker
RUNS = 24
LIMIT = Decimal("0.0006")


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("spenders")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def test_concurrent_runs_on_several_workers_never_spend_past_a_tenant_budget(model_server, tenant, settings):
    # given: a scenario of three slow-ish replies (the calls of many runs overlap), priced like gpt-4o-mini, with
    # an output cap of 64 tokens; a tenant budget that holds about half of what the runs would spend
    queue = f"agentplane-budgets-{settings.CHECKOUT_ID}"
    settings.RUN_STEP_QUEUE = queue
    turn = {"content": "A considered answer of a dozen words or so, to cost something real.",
            "chunk_delay_ms": 20}
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", timeout=10,
               json={"name": "budgeted", "turns": [turn, turn, turn]}).raise_for_status()
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name="spender", description="", actor=TEST_ACTOR, spec={
            "instructions": "Answer.", "models": ["openai/budgeted"],
            "graph": {"entry": "plan", "nodes": [{"id": "plan", "kind": "llm", "next": "act"},
                                                 {"id": "act", "kind": "llm", "next": "answer"},
                                                 {"id": "answer", "kind": "llm", "next": "end"},
                                                 {"id": "end", "kind": "end"}]}})
        budget = billing_services.budget_create(tenant=tenant.tenant, scope="tenant", period="total",
                                                limit_usd=LIMIT, actor=TEST_ACTOR)
        runs = [services.run_start(tenant=tenant.tenant, agent_id=agent.id, input=f"question {i}", actor=TEST_ACTOR)
                for i in range(RUNS)]
    env = runtime_env(model_server, RUN_STEP_QUEUE=queue, LLM_LOCAL_PRICES="openai/budgeted",
                      BUDGET_DEFAULT_OUTPUT_TOKENS="64")
    workers = []
    for name in ("spender-1", "spender-2"):
        args = celery_worker_args(name=name, concurrency=12) + ["--pool=threads", "-Q", queue]
        args.remove("--pool=prefork")
        workers.append((LOG_DIR / f"{name}.log", args))
    # when: two worker processes take the runs at once
    with running(workers[0][1], log_path=workers[0][0], env=env), \
            running(workers[1][1], log_path=workers[1][0], env=env):
        wait_for(lambda: _all_finished(tenant.schema, [r.id for r in runs]), timeout=120,
                 what=f"{RUNS} runs to finish; log:\n{log_tail(workers[0][0])}")
    # then: what the calls cost (the journal) is what the budget counted, and it is within the limit
    with schema_context(tenant.schema):
        finished = list(Run.objects.filter(id__in=[r.id for r in runs]).values_list("status", "error"))
        costs = list(EffectRecord.objects.filter(run__in=runs, kind="model", status="succeeded")
                     .values_list("cost_usd", flat=True))
    spend = BudgetSpend.objects.get(budget=budget)
    assert spend.reserved_usd == 0 and not SpendReservation.objects.filter(tenant=tenant.tenant).exists()
    assert all(cost > 0 for cost in costs)
    assert abs(spend.spent_usd - sum(costs)) <= Decimal("0.00000001") * len(costs)
    assert spend.spent_usd <= LIMIT, f"spent {spend.spent_usd} of {LIMIT}"
    # some runs completed, the others were stopped before a call that could have passed the limit
    statuses = sorted(status for status, _ in finished)
    assert set(statuses) == {"completed", "failed"}, statuses
    reasons = [error for status, error in finished if status == "failed"]
    assert all(error["code"] == "budget_exceeded" for error in reasons)
    assert all(error["message"].startswith(f"The tenant's total budget of ${LIMIT.normalize():f} would be exceeded: ")
               and "The call was not made. Raise the budget (PATCH /v1/budgets/" in error["message"]
               for error in reasons)
    # each refusal names what was spent, held and the call's worst case. Those figures are read just after the
    # refusal, when calls of other runs may have settled or freed their holds meanwhile, so they need not add up
    # past the limit any more; what the refusal guarantees is the spend above, never past the limit.
    assert len(costs) < 3 * RUNS
    for error in reasons:
        spent, held, worst = (Decimal(amount) for amount in re.findall(r"\$([0-9.]+)", error["message"])[1:4])
        assert spent <= LIMIT and held >= 0 and worst > 0, error["message"]


def _all_finished(schema, run_ids) -> bool:
    with schema_context(schema):
        return Run.objects.filter(id__in=run_ids, status__in=("completed", "failed")).count() == len(run_ids)
