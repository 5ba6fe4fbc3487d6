"""Budgets enforced before each LLM call: the executor (real database) with a scripted model at the edge, the
real spend guard (billing's services) and litellm's price map with the local prices."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
import redis
from django.core import mail
from django_tenants.utils import schema_context

from billing import services as billing_services
from billing.models import Budget, BudgetAlert, BudgetSpend, RunSpend, SpendReservation, TokenQuotaUsage
from billing.plans import plan_for
from billing.services.budgets import period_end, period_start
from conftest import TEST_ACTOR, bearer, destroy_tenant, provision_for_test
from control_plane.identity.tests.factories import MembershipFactory
from data_plane import services
from data_plane.executor import RunStepper
from data_plane.models import EffectRecord, Run
from data_plane.runtime.adapters.llm import LiteLLMPricing, register_local_prices
from data_plane.runtime.core.context import EstimatedTokens
from data_plane.spending import BillingSpendGuard, worst_case
from data_plane.tests.fakes import FakeChatModel, text

MODEL = "openai/budget-test"
COST = 0.001  # what each scripted reply costs (FakeChatModel's usage: 10 input and 5 output tokens)
REPLIES = [text("1. think"), text("It is 42"), text("The answer is 42. DONE")]


@pytest.fixture
def tenant(committed, settings):
    settings.RUN_STEP_QUEUE = f"agentplane-unconsumed-{uuid.uuid4().hex[:8]}"  # this test drives the steps
    register_local_prices(MODEL)
    provisioned = provision_for_test("budgets")
    yield provisioned
    destroy_tenant(provisioned.tenant)
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(settings.RUN_STEP_QUEUE)


def guard_for(tenant) -> BillingSpendGuard:
    return BillingSpendGuard(tenant=tenant.tenant, counter=EstimatedTokens(), pricing=LiteLLMPricing(),
                             hold_seconds=60)


def stepper_for(tenant, model) -> RunStepper:
    return RunStepper(tenant_schema=tenant.schema, chat_model=model, tool_runner_factory=lambda run_id: None,
                      dispatch=lambda run_id, step: None, tenant=tenant.tenant, steps_per_task=20, owner="test",
                      spend_guard=guard_for(tenant))


def agent(tenant, *, max_cost_usd=None, name="plain"):
    spec = {"instructions": "Be exact.", "models": [MODEL],
            "graph": {"entry": "plan", "nodes": [{"id": "plan", "kind": "llm", "next": "act"},
                                                 {"id": "act", "kind": "llm", "next": "answer"},
                                                 {"id": "answer", "kind": "llm", "next": "end"},
                                                 {"id": "end", "kind": "end"}]}}
    if max_cost_usd is not None:
        spec["limits"] = {"max_cost_usd": max_cost_usd}
    with schema_context(tenant.schema):
        return services.agent_create(tenant=tenant.tenant, name=name, description="", actor=TEST_ACTOR, spec=spec)


def start(tenant, agent_id, **kwargs) -> Run:
    with schema_context(tenant.schema):
        return services.run_start(tenant=tenant.tenant, agent_id=agent_id, input="6*7?", actor=TEST_ACTOR, **kwargs)


def budget_of(tenant, **kwargs) -> Budget:
    with schema_context(tenant.schema):
        return billing_services.budget_create(tenant=tenant.tenant, actor=TEST_ACTOR, **kwargs)


def reload(tenant, run) -> Run:
    with schema_context(tenant.schema):
        return Run.objects.get(id=run.id)


def first_worst_case(model: FakeChatModel) -> Decimal:
    return worst_case(model.requests[0], counter=EstimatedTokens(), pricing=LiteLLMPricing()).usd


def test_each_call_is_held_then_settled_at_its_actual_cost(tenant):
    # given a tenant budget and an agent budget with room
    a = agent(tenant)
    tenant_budget = budget_of(tenant, scope="tenant", period="month",
                                                   limit_usd=Decimal("1"))
    agent_budget = budget_of(tenant, scope="agent", agent_id=a.id, period="day",
                                                  limit_usd=Decimal("1"))
    run, model = start(tenant, a.id), FakeChatModel(REPLIES, cost_usd=COST)
    # when
    outcome = stepper_for(tenant, model).run_step(run.id, 0)
    # then: three calls made and counted at what they cost, nothing left held
    assert (outcome.kind, outcome.run_status) == ("advanced", "completed")
    assert len(model.requests) == 3
    for budget in (tenant_budget, agent_budget):
        spend = BudgetSpend.objects.get(budget=budget)
        assert (spend.spent_usd, spend.reserved_usd, spend.exhausted_at) == (Decimal("0.003"), 0, None)
    usage = TokenQuotaUsage.objects.get(tenant=tenant.tenant)
    assert (usage.used_tokens, usage.reserved_tokens) == (3 * 15, 0)
    run_spend = RunSpend.objects.get(run_id=run.id)
    assert (run_spend.spent_usd, run_spend.reserved_usd, run_spend.limit_usd) == (Decimal("0.003"), 0, None)
    assert not SpendReservation.objects.filter(tenant=tenant.tenant).exists()


def test_a_call_whose_worst_case_does_not_fit_the_budget_is_not_made(tenant):
    # given: a tenant budget with room for two calls' worst case, not three
    a = agent(tenant)
    probe = FakeChatModel(REPLIES, cost_usd=COST)
    stepper_for(tenant, probe).run_step(start(tenant, a.id).id, 0)  # no budget yet: learn the worst case
    worst = first_worst_case(probe)
    RunSpend.objects.all().delete()
    TokenQuotaUsage.objects.all().delete()
    limit = (worst * 2 + Decimal("0.0001")).quantize(Decimal("0.00000001"))
    budget = budget_of(tenant, scope="tenant", period="month", limit_usd=limit)
    # the actual cost of a call is near its worst case: the third does not fit after two were spent
    run, model = start(tenant, a.id), FakeChatModel(REPLIES, cost_usd=float(worst) - 0.00001)
    # when
    stepper_for(tenant, model).run_step(run.id, 0)
    # then: two calls made, the third refused before it was made, the run failed saying why
    assert len(model.requests) == 2
    failed = reload(tenant, run)
    spent = (Decimal(str(float(worst) - 0.00001)) * 2)
    assert failed.status == "failed" and failed.error["code"] == "budget_exceeded"
    third = worst_case(model.requests[1], counter=EstimatedTokens(), pricing=LiteLLMPricing())
    message = failed.error["message"]
    assert message.startswith(f"The tenant's monthly budget of ${limit.normalize():f} would be exceeded: "
                              f"${spent.normalize():f} spent and $0 held by calls in flight this period; "
                              f"this call may cost up to $")
    assert f"Raise the budget (PATCH /v1/budgets/{budget.id}) or wait until the period resets at " \
           f"{period_end('month', failed.updated_at).isoformat()}." in message
    assert "output tokens of openai/budget-test" in message and third.usd > limit - spent
    spend = BudgetSpend.objects.get(budget=budget)
    assert (spend.spent_usd, spend.reserved_usd) == (spent, 0)
    assert spend.spent_usd <= limit and spend.exhausted_at is not None
    with schema_context(tenant.schema):  # the refused call is not journalled as a paid call
        assert list(EffectRecord.objects.filter(run=run).order_by("step").values_list("status", "cost_usd")) == [
            ("succeeded", spent / 2), ("succeeded", spent / 2)]


def test_a_runs_own_budget_stops_it_before_the_call_that_would_pass_it(tenant):
    # given: a run whose budget_usd holds one call's worst case and a bit
    a = agent(tenant)
    probe = FakeChatModel(REPLIES, cost_usd=COST)
    stepper_for(tenant, probe).run_step(start(tenant, a.id).id, 0)
    worst = first_worst_case(probe)
    run, model = start(tenant, a.id, budget_usd=worst + Decimal("0.0001")), FakeChatModel(REPLIES, cost_usd=COST)
    # when
    stepper_for(tenant, model).run_step(run.id, 0)
    # then: one call, then the second's worst case (after $0.001 spent) does not fit the run's budget
    assert len(model.requests) == 1
    failed = reload(tenant, run)
    assert failed.error["code"] == "budget_exceeded"
    assert failed.error["message"].startswith(
        f"The run's limit of ${(worst + Decimal('0.0001')).normalize():f} (the run's budget_usd) would be exceeded: "
        "$0.001 spent and $0 held by calls in flight; this call may cost up to $")
    assert failed.error["message"].endswith("The call was not made. Raise budget_usd and start the run again.")
    assert RunSpend.objects.get(run_id=run.id).spent_usd == Decimal("0.001")


def test_the_specs_max_cost_is_enforced_before_the_call_too(tenant):
    a = agent(tenant, max_cost_usd=0.0015, name="capped")
    run, model = start(tenant, a.id), FakeChatModel(REPLIES, cost_usd=COST)
    stepper_for(tenant, model).run_step(run.id, 0)
    # the first call's worst case (about $0.0025 with 4,096 output tokens at $0.60 a million) does not fit
    assert model.requests == []
    failed = reload(tenant, run)
    assert failed.error["code"] == "budget_exceeded"
    assert failed.error["message"].startswith("The run's limit of $0.0015 (the agent's limits.max_cost_usd) would be "
                                              "exceeded: $0 spent and $0 held by calls in flight; this call may cost")
    assert "Raise limits.max_cost_usd in the agent's spec" in failed.error["message"]


def test_the_months_token_quota_stops_calls_and_new_runs(tenant, client):
    # given: the month's quota nearly used
    a = agent(tenant)
    quota = plan_for(tenant.tenant.sla_tier).tokens_per_month
    from django.utils import timezone

    TokenQuotaUsage.objects.create(tenant=tenant.tenant, period_start=period_start("month", timezone.now()),
                                   used_tokens=quota - 100)
    run, model = start(tenant, a.id), FakeChatModel(REPLIES, cost_usd=COST)
    # when
    stepper_for(tenant, model).run_step(run.id, 0)
    # then: the call (over 4,096 tokens at worst) was refused
    assert model.requests == []
    failed = reload(tenant, run)
    assert failed.error["code"] == "budget_exceeded"
    assert failed.error["message"].startswith(
        f"The tenant's monthly token quota of {quota:,} tokens (standard plan) would be exceeded: {quota - 100:,} "
        "used and 0 held by calls in flight; this call may use up to ")
    # and a new run is refused at its start, with Retry-After until the quota resets
    with schema_context(tenant.schema):
        runs_before = Run.objects.count()
    response = client.post("/v1/runs", {"agent_id": str(a.id), "input": "again"}, content_type="application/json",
                           **bearer(tenant.key))
    assert response.status_code == 429, response.content
    assert response.json()["code"] == "token_quota_exhausted"
    now = timezone.now()
    retry_after = int(response["Retry-After"])
    assert abs(retry_after - (period_end("month", now) - now).total_seconds()) <= 5
    with schema_context(tenant.schema):
        assert Run.objects.count() == runs_before


def test_an_exhausted_budget_refuses_new_runs_until_it_is_raised(tenant, client):
    # given: an agent budget that refused a call this month
    a = agent(tenant)
    budget = budget_of(tenant, scope="agent", agent_id=a.id, period="day",
                                            limit_usd=Decimal("0.001"))
    run = start(tenant, a.id)
    stepper_for(tenant, FakeChatModel(REPLIES, cost_usd=COST)).run_step(run.id, 0)
    assert reload(tenant, run).error["code"] == "budget_exceeded"
    # when a run is started
    with schema_context(tenant.schema):
        runs_before = Run.objects.count()
    response = client.post("/v1/runs", {"agent_id": str(a.id), "input": "again"}, content_type="application/json",
                           **bearer(tenant.key))
    # then: 429 until the day ends, naming the budget; no run
    from django.utils import timezone

    assert response.status_code == 429
    body = response.json()
    assert body["code"] == "budget_exhausted"
    assert body["detail"] == (f"The agent 'plain''s daily budget of $0.001 is used up for this period ($0 spent, and a "
                              f"call that did not fit was refused). Raise it (PATCH /v1/budgets/{budget.id}) or wait "
                              f"until the period resets at {period_end('day', timezone.now()).isoformat()}.")
    now = timezone.now()
    assert abs(int(response["Retry-After"]) - (period_end("day", now) - now).total_seconds()) <= 5
    with schema_context(tenant.schema):
        assert Run.objects.count() == runs_before
    # when the budget is raised, runs start again
    patched = client.patch(f"/v1/budgets/{budget.id}", {"limit_usd": "5"}, content_type="application/json",
                           **bearer(tenant.key))
    assert patched.status_code == 200 and patched.json()["current_period"]["is_exhausted"] is False
    again = client.post("/v1/runs", {"agent_id": str(a.id), "input": "again"}, content_type="application/json",
                        **bearer(tenant.key))
    assert again.status_code == 202


def test_budget_usd_is_validated_at_run_start(tenant, client):
    a = agent(tenant)
    response = client.post("/v1/runs", {"agent_id": str(a.id), "input": "x", "budget_usd": "-1"},
                           content_type="application/json", **bearer(tenant.key))
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["budget_usd"]
    with schema_context(tenant.schema):
        assert not Run.objects.exists()
    accepted = client.post("/v1/runs", {"agent_id": str(a.id), "input": "x", "budget_usd": "0.25"},
                           content_type="application/json", **bearer(tenant.key))
    assert accepted.status_code == 202
    assert RunSpend.objects.get(run_id=accepted.json()["id"]).limit_usd == Decimal("0.25")


def test_thresholds_alert_once_each_when_settled_spend_crosses_them(tenant):
    # given a tenant budget of $0.004 alerting at 50, 80 and 100 percent
    a = agent(tenant)
    budget = budget_of(tenant, scope="tenant", period="total",
                                            limit_usd=Decimal("0.004"))
    finance = MembershipFactory(tenant=tenant.tenant, role="finance")
    MembershipFactory(tenant=tenant.tenant, role="developer")
    mail.outbox.clear()
    # when: calls settle $0.001 each, one at a time (the holds are made with a zero worst case)
    for step in range(5):
        key = f"{uuid.uuid4()}:{step}:act"
        billing_services.spend_reserve(tenant_id=tenant.tenant.id, sla_tier="standard", run_id=uuid.uuid4(),
                                       agent_id=a.id, idempotency_key=key, amount_usd=Decimal(0), tokens=1)
        with schema_context(tenant.schema):
            billing_services.spend_settle(tenant=tenant.tenant, idempotency_key=key,
                                          cost_usd=Decimal("0.001") if step < 4 else Decimal("0.002"), tokens=1)
    # then: 50% at $0.002, 80% and 100% at $0.004, and never again
    alerts = BudgetAlert.objects.filter(budget=budget).order_by("threshold")
    assert [(alert.threshold, alert.spent_usd, alert.limit_usd) for alert in alerts] == [
        (50, Decimal("0.002"), Decimal("0.004")), (80, Decimal("0.004"), Decimal("0.004")),
        (100, Decimal("0.004"), Decimal("0.004"))]
    with schema_context(tenant.schema):
        from control_plane.audit.models import AuditEvent

        audited = list(AuditEvent.objects.filter(action="budget.alert").order_by("seq")
                       .values_list("target_id", "data"))
    assert [(target, data["threshold"]) for target, data in audited] == [
        (str(budget.id), 50), (str(budget.id), 80), (str(budget.id), 100)]
    # and the finance member (not the developer) was told, once per settlement that crossed thresholds
    assert [(m.to, m.body.split("\n\n")[0].splitlines()) for m in mail.outbox] == [
        ([finance.user.email], ["- The tenant's total budget reached 50% of its limit: $0.002 of $0.004 spent this "
                                f"period (budget {budget.id})."]),
        ([finance.user.email], [f"- The tenant's total budget reached 80% of its limit: $0.004 of $0.004 spent this "
                                f"period (budget {budget.id}).",
                                f"- The tenant's total budget reached 100% of its limit: $0.004 of $0.004 spent this "
                                f"period (budget {budget.id})."])]


def test_a_crashed_workers_hold_lapses_at_its_expiry(tenant):
    # given: a hold that takes the whole budget, never settled (its worker died)
    from datetime import timedelta

    from django.utils import timezone

    budget = budget_of(tenant, scope="tenant", period="month",
                                            limit_usd=Decimal("0.01"))
    now = timezone.now()
    run_id = uuid.uuid4()
    billing_services.spend_reserve(tenant_id=tenant.tenant.id, sla_tier="standard", run_id=run_id, agent_id=None,
                                   idempotency_key=f"{run_id}:1:act", amount_usd=Decimal("0.008"), tokens=100,
                                   hold_seconds=60, now=now)
    other = uuid.uuid4()
    with pytest.raises(billing_services.BudgetExceeded) as refused:
        billing_services.spend_reserve(tenant_id=tenant.tenant.id, sla_tier="standard", run_id=other, agent_id=None,
                                       idempotency_key=f"{other}:1:act", amount_usd=Decimal("0.005"), tokens=100,
                                       now=now + timedelta(seconds=30))
    assert "$0 spent and $0.008 held by calls in flight" in refused.value.message
    BudgetSpend.objects.filter(budget=budget).update(exhausted_at=None)
    # when: past the hold's expiry, the same call is tried again
    later = now + timedelta(seconds=61)
    billing_services.spend_reserve(tenant_id=tenant.tenant.id, sla_tier="standard", run_id=other, agent_id=None,
                                   idempotency_key=f"{other}:1:act", amount_usd=Decimal("0.005"), tokens=100,
                                   now=later)
    # then: the stale hold was released for it; the crashed call settling late still counts its spend once
    spend = BudgetSpend.objects.get(budget=budget)
    assert (spend.spent_usd, spend.reserved_usd) == (0, Decimal("0.005"))
    assert SpendReservation.objects.get(idempotency_key=f"{run_id}:1:act").is_released
    with schema_context(tenant.schema):
        billing_services.spend_settle(tenant=tenant.tenant, idempotency_key=f"{run_id}:1:act",
                                      cost_usd=Decimal("0.004"), tokens=90)
        billing_services.spend_settle(tenant=tenant.tenant, idempotency_key=f"{run_id}:1:act",
                                      cost_usd=Decimal("0.004"), tokens=90)  # a second settlement changes nothing
    spend.refresh_from_db()
    assert (spend.spent_usd, spend.reserved_usd) == (Decimal("0.004"), Decimal("0.005"))
    usage = TokenQuotaUsage.objects.get(tenant=tenant.tenant)
    assert (usage.used_tokens, usage.reserved_tokens) == (90, 100)


def test_a_retried_call_replaces_its_earlier_hold(tenant):
    # given: a hold of a call whose worker died; the task is redelivered and makes the same call again
    budget = budget_of(tenant, scope="tenant", period="month",
                                            limit_usd=Decimal("0.01"))
    run_id = uuid.uuid4()
    for _ in range(3):
        billing_services.spend_reserve(tenant_id=tenant.tenant.id, sla_tier="standard", run_id=run_id,
                                       agent_id=None, idempotency_key=f"{run_id}:2:act",
                                       amount_usd=Decimal("0.006"), tokens=50)
    # then: one hold, not three (the third would not have fit)
    spend = BudgetSpend.objects.get(budget=budget)
    assert spend.reserved_usd == Decimal("0.006")
    assert TokenQuotaUsage.objects.get(tenant=tenant.tenant).reserved_tokens == 50
    assert SpendReservation.objects.filter(tenant=tenant.tenant).count() == 1


def test_racing_settlements_record_each_alert_once(tenant):
    # given: eight calls in flight against a $0.008 budget alerting at 50, 80 and 100 percent
    import threading

    from django.db import connection

    budget = budget_of(tenant, scope="tenant", period="month", limit_usd=Decimal("0.008"))
    keys = [f"{uuid.uuid4()}:1:act" for _ in range(8)]
    for key in keys:
        billing_services.spend_reserve(tenant_id=tenant.tenant.id, sla_tier="standard", run_id=uuid.uuid4(),
                                       agent_id=None, idempotency_key=key, amount_usd=Decimal("0.001"), tokens=10)
    start_together = threading.Barrier(len(keys))
    errors: list[BaseException] = []

    def settle(key: str) -> None:
        try:
            start_together.wait()
            with schema_context(tenant.schema):
                billing_services.spend_settle(tenant=tenant.tenant, idempotency_key=key, cost_usd=Decimal("0.001"),
                                              tokens=10)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    # when: they settle at once, on eight connections
    threads = [threading.Thread(target=settle, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then: everything counted, and each threshold alerted once
    assert errors == []
    spend = BudgetSpend.objects.get(budget=budget)
    assert (spend.spent_usd, spend.reserved_usd) == (Decimal("0.008"), 0)
    assert sorted(BudgetAlert.objects.filter(budget=budget).values_list("threshold", flat=True)) == [50, 80, 100]
    with schema_context(tenant.schema):
        from control_plane.audit.models import AuditEvent

        assert AuditEvent.objects.filter(action="budget.alert").count() == 3


def test_the_periodic_sweep_releases_expired_holds(tenant):
    # given: a hold whose worker died, already past its expiry (held with a negative lifetime)
    from billing.tasks import spend_reservations_expire_task

    budget = budget_of(tenant, scope="tenant", period="day", limit_usd=Decimal("1"))
    run_id = uuid.uuid4()
    billing_services.spend_reserve(tenant_id=tenant.tenant.id, sla_tier="standard", run_id=run_id, agent_id=None,
                                   idempotency_key=f"{run_id}:3:act", amount_usd=Decimal("0.25"), tokens=70,
                                   hold_seconds=-1)
    # when: the beat task runs (twice: it is idempotent)
    released = [spend_reservations_expire_task(), spend_reservations_expire_task()]
    # then
    assert released[0] >= 1 and released[1] == 0  # the test database may hold other tests' expired holds too
    assert BudgetSpend.objects.get(budget=budget).reserved_usd == 0
    assert TokenQuotaUsage.objects.get(tenant=tenant.tenant).reserved_tokens == 0
    assert RunSpend.objects.get(run_id=run_id).reserved_usd == 0
    assert SpendReservation.objects.get(idempotency_key=f"{run_id}:3:act").is_released


def billing_statements(captured) -> int:
    return len([query for query in captured.captured_queries if "billing_" in query["sql"]])


def test_a_call_against_no_budget_is_held_and_settled_in_one_statement_each_exactly_as_the_general_way(tenant):
    """A call held against the quota and its run only (the tenant has no budget, the run no limit) is held in one
    statement and settles in one; its effect on the quota, the run's spend and the reservation is the general
    path's, settling again changes nothing, and a hold that did take a budget settles the general way even when
    told it did not."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    run_id, a = uuid.uuid4(), agent(tenant)

    def hold(key, *, tokens=100):
        return billing_services.spend_reserve(tenant_id=tenant.tenant.id, sla_tier="standard", run_id=run_id,
                                              agent_id=a.id, idempotency_key=key, amount_usd=Decimal("0.01"),
                                              tokens=tokens)

    def state():
        quota = TokenQuotaUsage.objects.get(tenant_id=tenant.tenant.id)
        spend = RunSpend.objects.get(tenant_id=tenant.tenant.id, run_id=run_id)
        return (quota.used_tokens, quota.reserved_tokens, spend.spent_usd, spend.reserved_usd,
                SpendReservation.objects.filter(tenant_id=tenant.tenant.id).count())

    with CaptureQueriesContext(connection) as statements:
        fast = hold("fast")
    assert billing_statements(statements) == 1 and not fast.budgeted  # no BEGIN, no COMMIT
    general = hold("general")
    assert state()[1] == 200 and SpendReservation.objects.get(idempotency_key="fast").budget_spend_ids == []
    before = state()
    with schema_context(tenant.schema):
        with CaptureQueriesContext(connection) as statements:
            billing_services.spend_settle(tenant=tenant.tenant, idempotency_key="fast", cost_usd=Decimal("0.003"),
                                          tokens=40, budgeted=False)
        assert billing_statements(statements) == 1
        after_fast = state()
        billing_services.spend_settle(tenant=tenant.tenant, idempotency_key="general", cost_usd=Decimal("0.003"),
                                      tokens=40)
        after_general = state()
        # when: the fast one is settled again (a retry of the bookkeeping)
        billing_services.spend_settle(tenant=tenant.tenant, idempotency_key="fast", cost_usd=Decimal("0.003"),
                                      tokens=40, budgeted=False)
        assert state() == after_general
    # then: the same change each way: 40 tokens used and 100 freed, $0.003 spent and $0.01 freed, the hold gone
    def change(start, end):
        return tuple(b - a for a, b in zip(start, end))

    assert change(before, after_fast) == change(after_fast, after_general) == (
        40, -100, Decimal("0.003"), Decimal("-0.01"), -1)

    # and a hold with a budget, settled as if it had none, still counts against the budget
    budget = budget_of(tenant, scope="tenant", period="total", limit_usd=Decimal("1"))
    budgeted = hold("budgeted")
    assert budgeted.budgeted
    with schema_context(tenant.schema):
        billing_services.spend_settle(tenant=tenant.tenant, idempotency_key="budgeted", cost_usd=Decimal("0.005"),
                                      tokens=40, budgeted=False)
    spend = BudgetSpend.objects.get(budget=budget)
    assert (spend.spent_usd, spend.reserved_usd) == (Decimal("0.005"), Decimal("0"))
    assert not SpendReservation.objects.filter(tenant_id=tenant.tenant.id).exists()


def test_a_runs_own_budget_still_refuses_a_call_that_does_not_fit(tenant):
    """A run started with budget_usd has a limit of its own: its calls are held the general way, against it."""
    run_id = uuid.uuid4()
    with schema_context(tenant.schema):
        billing_services.run_budget_set(tenant=tenant.tenant, run_id=run_id, limit_usd=Decimal("0.01"))
    first = billing_services.spend_reserve(tenant_id=tenant.tenant.id, sla_tier="standard", run_id=run_id,
                                           agent_id=None, idempotency_key="first", amount_usd=Decimal("0.008"),
                                           tokens=10)
    with pytest.raises(billing_services.BudgetExceeded) as refused:
        billing_services.spend_reserve(tenant_id=tenant.tenant.id, sla_tier="standard", run_id=run_id, agent_id=None,
                                       idempotency_key="second", amount_usd=Decimal("0.008"), tokens=10)
    assert "run's budget_usd" in refused.value.message and first.amount_usd == Decimal("0.008")
    assert RunSpend.objects.get(run_id=run_id).reserved_usd == Decimal("0.008")
