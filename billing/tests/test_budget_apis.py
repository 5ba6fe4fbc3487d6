"""The budget endpoints: create, read with the current period's spend, change, delete; alerts; the token quota."""

from __future__ import annotations

import json
from decimal import Decimal

from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import Budget, BudgetAlert, BudgetSpend, TokenQuotaUsage
from billing.plans import plan_for
from billing.services.budgets import period_end, period_start
from conftest import TEST_ACTOR, bearer
from control_plane.audit.models import AuditEvent
from data_plane import services as data_plane_services


def post(client, key, path, body):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def patch(client, key, path, body):
    return client.patch(path, json.dumps(body), content_type="application/json", **bearer(key))


def make_agent(tenant):
    with schema_context(tenant.schema):
        return data_plane_services.agent_create(tenant=tenant.tenant, name="helper", description="", actor=TEST_ACTOR,
                                                spec={"instructions": "x", "models": ["openai/x"]})


def test_a_budget_is_created_and_read_with_its_current_period(client, tenant_a):
    # given
    agent = make_agent(tenant_a)
    # when
    created = post(client, tenant_a.key, "/v1/budgets", {"scope": "agent", "agent_id": str(agent.id),
                                                         "period": "day", "limit_usd": "2.5"})
    # then
    assert created.status_code == 201, created.content
    body = created.json()
    budget = Budget.objects.get(id=body["id"])
    now = timezone.now()
    BudgetSpend.objects.create(budget=budget, period_start=period_start("day", now), spent_usd=Decimal("1"),
                               reserved_usd=Decimal("0.25"))
    read = client.get(f"/v1/budgets/{budget.id}", **bearer(tenant_a.key)).json()
    assert {k: v for k, v in read.items() if k not in ("created_at", "updated_at")} == {
        "id": str(budget.id), "scope": "agent", "agent_id": str(agent.id), "agent_name": "helper", "period": "day",
        "limit_usd": "2.50000000", "alert_thresholds": [50, 80, 100], "is_enabled": True,
        "current_period": {"start": period_start("day", now).isoformat().replace("+00:00", "Z"),
                           "end": period_end("day", now).isoformat().replace("+00:00", "Z"),
                           "spent_usd": "1.00000000", "reserved_usd": "0.25000000", "remaining_usd": "1.25000000",
                           "is_exhausted": False}}
    assert [item["id"] for item in client.get("/v1/budgets", **bearer(tenant_a.key)).json()["results"]] == [
        str(budget.id)]
    with schema_context(tenant_a.schema):
        assert AuditEvent.objects.filter(action="budget.create", target_id=str(budget.id)).count() == 1


def test_invalid_budgets_are_refused_and_nothing_is_created(client, tenant_a):
    agent = make_agent(tenant_a)
    cases = [
        ({"scope": "agent", "period": "day", "limit_usd": "1"}, 400, "An agent budget names its agent: give agent_id."),
        ({"scope": "tenant", "agent_id": str(agent.id), "period": "day", "limit_usd": "1"}, 400,
         "A tenant budget applies to every agent: leave agent_id out, or use scope 'agent'."),
        ({"scope": "tenant", "period": "week", "limit_usd": "1"}, 400, None),
        ({"scope": "tenant", "period": "day", "limit_usd": "-1"}, 400, None),
        ({"scope": "tenant", "period": "day", "limit_usd": "1", "alert_thresholds": [0]}, 400, None),
    ]
    for body, status, detail in cases:
        response = post(client, tenant_a.key, "/v1/budgets", body)
        assert response.status_code == status, body
        if detail is not None:
            assert response.json()["detail"] == detail
    assert not Budget.objects.filter(tenant=tenant_a.tenant).exists()
    # one budget per scope, agent and period
    assert post(client, tenant_a.key, "/v1/budgets", {"scope": "tenant", "period": "month",
                                                      "limit_usd": "1"}).status_code == 201
    again = post(client, tenant_a.key, "/v1/budgets", {"scope": "tenant", "period": "month", "limit_usd": "3"})
    assert (again.status_code, again.json()["code"]) == (409, "budget_exists")
    assert list(Budget.objects.filter(tenant=tenant_a.tenant).values_list("limit_usd", flat=True)) == [Decimal(1)]


def test_a_budget_is_changed_and_deleted(client, tenant_a):
    created = post(client, tenant_a.key, "/v1/budgets", {"scope": "tenant", "period": "total", "limit_usd": "10"})
    budget_id = created.json()["id"]
    changed = patch(client, tenant_a.key, f"/v1/budgets/{budget_id}",
                    {"limit_usd": "20", "alert_thresholds": [90, 25], "is_enabled": False})
    assert changed.status_code == 200
    assert (changed.json()["limit_usd"], changed.json()["alert_thresholds"], changed.json()["is_enabled"]) == (
        "20.00000000", [25, 90], False)
    refused = patch(client, tenant_a.key, f"/v1/budgets/{budget_id}", {"limit_usd": "-5"})
    assert refused.status_code == 400
    assert Budget.objects.get(id=budget_id).limit_usd == Decimal(20)
    assert client.delete(f"/v1/budgets/{budget_id}", **bearer(tenant_a.key)).status_code == 204
    assert not Budget.objects.filter(id=budget_id).exists()
    assert client.get(f"/v1/budgets/{budget_id}", **bearer(tenant_a.key)).status_code == 404
    with schema_context(tenant_a.schema):
        assert list(AuditEvent.objects.filter(target_id=budget_id).order_by("seq").values_list("action", flat=True)) \
            == ["budget.create", "budget.update", "budget.delete"]


def test_alerts_and_the_token_quota_are_listed(client, tenant_a):
    budget_id = post(client, tenant_a.key, "/v1/budgets", {"scope": "tenant", "period": "month",
                                                           "limit_usd": "10"}).json()["id"]
    now = timezone.now()
    alert = BudgetAlert.objects.create(tenant=tenant_a.tenant, budget_id=budget_id,
                                       period_start=period_start("month", now), threshold=80,
                                       spent_usd=Decimal("8.1"), limit_usd=Decimal("10"))
    TokenQuotaUsage.objects.create(tenant=tenant_a.tenant, period_start=period_start("month", now),
                                   used_tokens=1000, reserved_tokens=500)
    alerts = client.get(f"/v1/budget-alerts?budget_id={budget_id}", **bearer(tenant_a.key)).json()["results"]
    assert [(a["id"], a["threshold"], a["spent_usd"], a["scope"]) for a in alerts] == [
        (str(alert.id), 80, "8.10000000", "tenant")]
    quota = client.get("/v1/quotas/tokens", **bearer(tenant_a.key)).json()
    total = plan_for("standard").tokens_per_month
    assert quota == {"tier": "standard", "period_start": period_start("month", now).isoformat().replace("+00:00", "Z"),
                     "period_end": period_end("month", now).isoformat().replace("+00:00", "Z"),
                     "quota_tokens": total, "used_tokens": 1000, "reserved_tokens": 500,
                     "remaining_tokens": total - 1500, "is_exhausted": False}
