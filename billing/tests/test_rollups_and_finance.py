"""Rollups recomputed exactly from the records of their period, and the finance report of a crafted day,
checked against amounts computed by hand (docs/metering.md has the formulas)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from django.core.management import call_command
from django_tenants.utils import schema_context

from billing import selectors, services
from billing.apis import finance_csv
from billing.models import UsageCollection, UsageRollup
from billing.tests.conftest import DAY, INFRA_PER_MONTH, at
from billing.tests.factories import finished_run, journal

def _rollups(tenant, period: str, start: datetime) -> list[tuple]:
    return list(UsageRollup.objects.filter(tenant=tenant, period=period, period_start=start)
                .order_by("kind", "agent_name", "name").values_list(
                    "kind", "agent_name", "name", "count", "failures", "input_tokens", "output_tokens",
                    "cached_input_tokens", "cost_usd", "latency_ms_total"))


A_DAY = [
    ("llm", "researcher", "openai/gpt-4o-mini", 1, 0, 100_000, 25_000, 0, Decimal("0.05"), 10.0),
    ("llm", "writer", "openai/gpt-4o-mini", 3, 0, 500_000, 125_000, 200_000, Decimal("0.16"), 30.0),
    ("run", "researcher", "completed", 1, 0, 0, 0, 0, Decimal("0"), 2_700_000.0),
    ("run", "writer", "completed", 3, 0, 0, 0, 0, Decimal("0"), 3_600_000.0 + 2_700_000.0 + 2_700_000.0),
    ("tool", "writer", "calculator", 1, 0, 0, 0, 0, Decimal("0"), 10.0),
]


def test_rollups_are_exact_per_hour_and_day(crafted_day):
    a, b = crafted_day
    assert _rollups(a.tenant, "day", DAY) == A_DAY
    assert _rollups(a.tenant, "hour", at(9)) == [
        ("llm", "researcher", "openai/gpt-4o-mini", 1, 0, 100_000, 25_000, 0, Decimal("0.05"), 10.0),
        ("llm", "writer", "openai/gpt-4o-mini", 2, 0, 400_000, 100_000, 200_000, Decimal("0.10"), 20.0),
        ("run", "researcher", "completed", 1, 0, 0, 0, 0, Decimal("0"), 2_700_000.0)]
    assert _rollups(b.tenant, "day", DAY) == [
        ("llm", "support", "openai/gpt-4o", 2, 0, 100_000, 20_000, 0, Decimal("0.45"), 20.0),
        ("run", "support", "completed", 1, 0, 0, 0, 0, Decimal("0"), 4_500_000.0)]
    assert _rollups(b.tenant, "day", DAY + timedelta(days=1)) == [
        ("llm", "support", "openai/gpt-4o", 1, 0, 1000, 0, 0, Decimal("0.01"), 10.0)]


def test_recomputing_a_rollup_replaces_it_and_never_adds_to_it(crafted_day):
    a, _ = crafted_day
    # when: recomputed twice, then once more after a late call of that day is collected
    services.usage_rollup(tenant=a.tenant, period="day", period_start=DAY)
    services.usage_rollup(tenant=a.tenant, period="day", period_start=DAY + timedelta(hours=13))  # same day
    assert _rollups(a.tenant, "day", DAY) == A_DAY
    with schema_context(a.schema):
        r = finished_run(finished_at=at(23), started_at=at(22), status="failed")
        journal(r, step=0, key="late", finished_at=at(22.5), status="failed")
    UsageCollection.objects.filter(tenant=a.tenant).update(effects_until=None, runs_until=None)  # start over
    services.usage_collect(tenant=a.tenant, now=at(26))
    services.usage_rollup_recent(tenant=a.tenant, now=at(23.9))
    # then
    rows = {row[:3]: row[3:] for row in _rollups(a.tenant, "day", DAY)}
    assert rows[("llm", "writer", "openai/gpt-4o-mini")] == (4, 1, 500_000, 125_000, 200_000, Decimal("0.16"), 40.0)
    assert rows[("run", "writer", "failed")] == (1, 1, 0, 0, 0, Decimal("0"), 3_600_000.0)
    assert rows[("run", "writer", "completed")] == (3, 0, 0, 0, 0, Decimal("0"), 9_000_000.0)
    assert len(rows) == 6


def _mine(report, *slugs: str) -> list[dict]:
    return [row for row in report.rows if row.get("tenant") in slugs]


def test_the_finance_report_of_a_crafted_day(crafted_day):
    a, b = crafted_day
    # when
    report = selectors.finance_report(start=DAY.date(), end=DAY.date(), infrastructure_usd_per_month=INFRA_PER_MONTH)
    # then: infrastructure 2800 / 28 = 100 a day, over 6 LLM calls (A 4, B 2: a replayed call still ran a step)
    d = "2026-02-10"
    assert _mine(report, a.tenant.slug) == [
        {"tenant": a.tenant.slug, "model": "", "day": d, "tier": "standard", "llm_calls": 0, "input_tokens": 0,
         "output_tokens": 0, "cached_input_tokens": 0, "tokens": 0, "llm_cost_usd": Decimal("0.000000"),
         "infrastructure_usd": Decimal("0.000000"), "revenue_fee_usd": Decimal("3.535714"),  # 99 / 28
         "revenue_usage_usd": Decimal("0.000000"), "revenue_usd": Decimal("3.535714"),
         "margin_usd": Decimal("3.535714"), "margin_percent": Decimal("100.00")},
        {"tenant": a.tenant.slug, "model": "openai/gpt-4o-mini", "day": d, "tier": "standard", "llm_calls": 4,
         "input_tokens": 600_000, "output_tokens": 150_000, "cached_input_tokens": 200_000, "tokens": 750_000,
         "llm_cost_usd": Decimal("0.210000"), "infrastructure_usd": Decimal("66.666667"),  # 100 x 4/6
         "revenue_fee_usd": Decimal("0.000000"), "revenue_usage_usd": Decimal("3.000000"),  # 0.75 M x 4.00
         "revenue_usd": Decimal("3.000000"), "margin_usd": Decimal("-63.876667"),  # 3 - 0.21 - 66.666…
         "margin_percent": Decimal("-2129.22")},
    ]
    assert _mine(report, b.tenant.slug) == [
        {"tenant": b.tenant.slug, "model": "", "day": d, "tier": "professional", "llm_calls": 0, "input_tokens": 0,
         "output_tokens": 0, "cached_input_tokens": 0, "tokens": 0, "llm_cost_usd": Decimal("0.000000"),
         "infrastructure_usd": Decimal("0.000000"), "revenue_fee_usd": Decimal("17.821429"),  # 499 / 28
         "revenue_usage_usd": Decimal("0.000000"), "revenue_usd": Decimal("17.821429"),
         "margin_usd": Decimal("17.821429"), "margin_percent": Decimal("100.00")},
        {"tenant": b.tenant.slug, "model": "openai/gpt-4o", "day": d, "tier": "professional", "llm_calls": 2,
         "input_tokens": 100_000, "output_tokens": 20_000, "cached_input_tokens": 0, "tokens": 120_000,
         "llm_cost_usd": Decimal("0.450000"), "infrastructure_usd": Decimal("33.333333"),  # 100 x 2/6
         "revenue_fee_usd": Decimal("0.000000"), "revenue_usage_usd": Decimal("0.420000"),  # 0.12 M x 3.50
         "revenue_usd": Decimal("0.420000"), "margin_usd": Decimal("-33.363333"),  # 0.42 - 0.45 - 33.333…
         "margin_percent": Decimal("-7943.65")},
    ]
    assert report.totals["infrastructure_pool_usd"] == Decimal("100.000000")
    assert report.totals["infrastructure_unallocated_usd"] == Decimal("0.000000")
    # sessions: A's R1 (with its sub-run R2) 0.04 + 0.06 + 0.05, R3 0.06, R4 0; B's R5 0.45 + 0 (replayed) + 0.01
    # (a call of the session on the next day)
    assert [row for row in report.sessions if row["tenant"] in (a.tenant.slug, b.tenant.slug)] == sorted([
        {"tenant": a.tenant.slug, "day": d, "sessions": 3, "cost_total_usd": Decimal("0.210000"),
         "cost_average_usd": Decimal("0.070000"), "cost_p50_usd": Decimal("0.060000")},
        {"tenant": b.tenant.slug, "day": d, "sessions": 1, "cost_total_usd": Decimal("0.460000"),
         "cost_average_usd": Decimal("0.460000"), "cost_p50_usd": Decimal("0.460000")},
    ], key=lambda row: row["tenant"])


def test_grouping_sums_before_rounding(crafted_day):
    a, b = crafted_day
    report = selectors.finance_report(start=DAY.date(), end=DAY.date(), infrastructure_usd_per_month=INFRA_PER_MONTH,
                                      group_by=("tenant",))
    by_tenant = {row["tenant"]: row for row in _mine(report, a.tenant.slug, b.tenant.slug)}
    # A: revenue 99/28 + 3 = 6.535714…; margin 6.535714… - 0.21 - 66.666666… = -60.340952… (the rounded rows
    # would give -60.340953)
    assert {key: by_tenant[a.tenant.slug][key] for key in ("revenue_usd", "margin_usd", "margin_percent")} == {
        "revenue_usd": Decimal("6.535714"), "margin_usd": Decimal("-60.340952"), "margin_percent": Decimal("-923.25")}
    assert {key: by_tenant[b.tenant.slug][key] for key in ("revenue_usd", "margin_usd", "margin_percent")} == {
        "revenue_usd": Decimal("18.241429"), "margin_usd": Decimal("-15.541905"), "margin_percent": Decimal("-85.20")}
    assert set(by_tenant[a.tenant.slug]) == {"tenant", "tier", *selectors.METRIC_COLUMNS}


def test_the_csv_has_a_header_row_and_one_line_per_row(crafted_day, capsys):
    a, _ = crafted_day
    report = selectors.finance_report(start=DAY.date(), end=DAY.date(), infrastructure_usd_per_month=INFRA_PER_MONTH)
    lines = finance_csv(report).splitlines()
    assert lines[0] == ("tenant,model,day,tier,llm_calls,input_tokens,output_tokens,cached_input_tokens,tokens,"
                        "llm_cost_usd,infrastructure_usd,revenue_fee_usd,revenue_usage_usd,revenue_usd,margin_usd,"
                        "margin_percent")
    assert f"{a.tenant.slug},openai/gpt-4o-mini,2026-02-10,standard,4,600000,150000,200000,750000,0.210000,66.666667," \
           "0.000000,3.000000,3.000000,-63.876667,-2129.22" in lines
    assert len(lines) == 1 + len(report.rows)
    sessions = finance_csv(report, sessions=True).splitlines()
    assert sessions[0] == "tenant,day,sessions,cost_total_usd,cost_average_usd,cost_p50_usd"
    assert f"{a.tenant.slug},2026-02-10,3,0.210000,0.070000,0.060000" in sessions
    # the management command prints the same CSV
    call_command("finance_report", "--start", "2026-02-10", "--end", "2026-02-10", "--csv",
                 "--infrastructure-usd-per-month", "2800")
    assert capsys.readouterr().out.splitlines() == lines


def test_a_day_without_llm_calls_leaves_its_infrastructure_unallocated(crafted_day):
    report = selectors.finance_report(start=date(2026, 2, 12), end=date(2026, 2, 12),
                                      infrastructure_usd_per_month=INFRA_PER_MONTH, group_by=("day",))
    assert report.totals["infrastructure_pool_usd"] == Decimal("100.000000")
    assert report.totals["infrastructure_unallocated_usd"] == Decimal("100.000000")
