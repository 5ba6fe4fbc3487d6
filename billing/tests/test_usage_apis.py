"""GET /v1/usage, GET /v1/usage/export (tenants, usage:read) and GET /v1/platform/finance/report (operators)."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from decimal import Decimal

from django.test import override_settings

from billing import services
from billing.models import UsageRecord
from conftest import bearer
from control_plane.identity.tests.factories import MembershipFactory


def _csv(response) -> list[dict]:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return list(csv.DictReader(io.StringIO(body.decode())))


def test_usage_by_day_per_agent_and_model_with_totals(client, crafted_day):
    a, _ = crafted_day
    # when
    response = client.get("/v1/usage?start=2026-02-10&end=2026-02-11&group_by=kind,name", **bearer(a.key))
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["start"], body["end"], body["granularity"], body["group_by"]) == (
        "2026-02-10", "2026-02-11", "day", ["kind", "name"])
    assert [(row["kind"], row["name"], row["count"], row["input_tokens"], row["cost_usd"]) for row in body["results"]] == [
        ("llm", "openai/gpt-4o-mini", 4, 600_000, "0.21000000"), ("run", "completed", 4, 0, "0E-8"),
        ("tool", "calculator", 1, 0, "0E-8")]
    assert [(row["kind"], row["count"], row["output_tokens"], row["cached_input_tokens"]) for row in body["totals"]] == [
        ("llm", 4, 150_000, 200_000), ("run", 4, 0, 0), ("tool", 1, 0, 0)]


def test_usage_by_hour_and_agent(client, crafted_day):
    a, _ = crafted_day
    response = client.get("/v1/usage?start=2026-02-10&end=2026-02-10&granularity=hour&group_by=agent,kind",
                          **bearer(a.key))
    assert response.status_code == 200, response.content
    nine = [(row["agent_name"], row["kind"], row["count"]) for row in response.json()["results"]
            if row["period_start"].startswith("2026-02-10T09:00")]
    assert nine == [("researcher", "llm", 1), ("writer", "llm", 2), ("researcher", "run", 1)]  # kind, then agent


def test_the_current_month_against_the_plan(client, tenant_a):
    # given: 1.5 M tokens this month (standard plan: 4.00 USD per million, 20 M a month)
    now = datetime.now(timezone.utc)
    UsageRecord.objects.create(tenant=tenant_a.tenant, source_key="this-month", kind="llm", name="openai/gpt-4o-mini",
                               input_tokens=1_200_000, output_tokens=300_000, cost_usd=Decimal("0.9"), occurred_at=now)
    services.usage_rollup(tenant=tenant_a.tenant, period="day", period_start=now)
    # when
    month = client.get("/v1/usage", **bearer(tenant_a.key)).json()["current_month"]
    # then
    assert month == {"month": now.strftime("%Y-%m"), "tier": "standard", "tokens": 1_500_000,
                     "tokens_per_month": 20_000_000, "share_of_quota": "0.0750", "llm_calls": 1, "runs": 0,
                     "monthly_fee_usd": "99", "usage_usd_per_million_tokens": "4.00", "usage_charge_usd": "6.00"}


def test_bad_ranges_and_dimensions_are_refused_with_what_to_fix(client, tenant_a):
    response = client.get("/v1/usage?start=2026-02-10&end=2026-02-01", **bearer(tenant_a.key))
    assert response.status_code == 400
    assert response.json()["errors"]["end"] == ["end (2026-02-01) must not be before start (2026-02-10)."]
    response = client.get("/v1/usage?group_by=agent,colour", **bearer(tenant_a.key))
    assert response.status_code == 400 and "kind, agent, name" in response.json()["errors"]["group_by"][0]
    response = client.get("/v1/usage?start=2026-01-01&end=2026-03-01&granularity=hour", **bearer(tenant_a.key))
    assert response.status_code == 400 and "at most 31 days" in response.json()["errors"]["end"][0]


def test_the_export_holds_the_tenants_own_records_only(client, crafted_day):
    a, b = crafted_day
    # when
    a_rows = _csv(response := client.get("/v1/usage/export?format=csv&start=2026-02-10&end=2026-02-11",
                                         **bearer(a.key)))
    b_rows = _csv(client.get("/v1/usage/export?format=csv&start=2026-02-10&end=2026-02-11", **bearer(b.key)))
    # then
    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="usage-2026-02-10-2026-02-11.csv"'
    assert list(a_rows[0]) == ["occurred_at", "kind", "source_key", "run_id", "agent_id", "agent_name", "name",
                               "input_tokens", "output_tokens", "cached_input_tokens", "cost_usd", "latency_ms",
                               "is_success", "replayed", "session_id"]
    assert [(row["kind"], row["agent_name"], row["name"]) for row in a_rows].count(
        ("llm", "writer", "openai/gpt-4o-mini")) == 3
    assert len(a_rows) == 9 and len(b_rows) == 4
    assert not {row["source_key"] for row in a_rows} & {row["source_key"] for row in b_rows}
    assert {row["agent_name"] for row in b_rows} == {"support"}
    assert [row["replayed"] for row in b_rows if row["kind"] == "llm"] == ["False", "True", "False"]


def test_a_finance_member_reads_usage_and_a_viewer_cannot_export_finance(client, tenant_a):
    member = MembershipFactory(tenant=tenant_a.tenant, role="finance")
    client.force_login(member.user)
    response = client.get("/v1/usage", HTTP_X_AGENTPLANE_TENANT=tenant_a.tenant.slug)
    assert response.status_code == 200, response.content
    assert client.get("/v1/platform/finance/report?start=2026-02-10&end=2026-02-10",
                      HTTP_X_AGENTPLANE_TENANT=tenant_a.tenant.slug).status_code == 401


@override_settings(FINANCE_INFRASTRUCTURE_USD_PER_MONTH="2800")
def test_the_operator_reads_the_finance_report_as_json_and_csv(client, crafted_day, operator_key):
    a, _ = crafted_day
    # when
    as_json = client.get("/v1/platform/finance/report?start=2026-02-10&end=2026-02-10&group_by=tenant",
                         **bearer(operator_key))
    as_csv = client.get("/v1/platform/finance/report?start=2026-02-10&end=2026-02-10&format=csv",
                        **bearer(operator_key))
    sessions = client.get("/v1/platform/finance/report?start=2026-02-10&end=2026-02-10&format=csv&report=sessions",
                          **bearer(operator_key))
    # then
    assert as_json.status_code == 200, as_json.content
    row = next(row for row in as_json.json()["rows"] if row["tenant"] == a.tenant.slug)
    assert (row["revenue_usd"], row["margin_usd"], row["margin_percent"]) == ("6.535714", "-60.340952", "-923.25")
    assert as_json.json()["infrastructure_driver"] == "llm_calls"
    assert as_csv.status_code == 200 and as_csv["Content-Type"] == "text/csv; charset=utf-8"
    assert as_csv["Content-Disposition"] == 'attachment; filename="finance-2026-02-10-2026-02-10.csv"'
    rows = _csv(as_csv)
    assert {(r["model"], r["margin_usd"]) for r in rows if r["tenant"] == a.tenant.slug} == {
        ("", "3.535714"), ("openai/gpt-4o-mini", "-63.876667")}
    assert sessions["Content-Disposition"] == 'attachment; filename="finance-sessions-2026-02-10-2026-02-10.csv"'
    assert {"tenant": a.tenant.slug, "day": "2026-02-10", "sessions": "3", "cost_total_usd": "0.210000",
            "cost_average_usd": "0.070000", "cost_p50_usd": "0.060000"} in _csv(sessions)


def test_the_finance_report_refuses_tenant_keys_and_bad_input(client, tenant_a, operator_key):
    assert client.get("/v1/platform/finance/report?start=2026-02-10&end=2026-02-10",
                      **bearer(tenant_a.key)).status_code == 401
    missing = client.get("/v1/platform/finance/report", **bearer(operator_key))
    assert missing.status_code == 400 and set(missing.json()["errors"]) == {"start", "end"}
    too_long = client.get("/v1/platform/finance/report?start=2025-01-01&end=2026-02-10", **bearer(operator_key))
    assert too_long.status_code == 400 and "At most 366 days" in too_long.json()["errors"]["end"][0]
