"""SLOs against their objectives, error budgets, the SLA and its credit, per tenant and merged across tenants."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from django_tenants.utils import schema_context

from billing import slo_selectors
from billing.slo_selectors import ErrorBudget, SlaStatus, Window
from data_plane.slo_selectors import LatencyMeasure
from data_plane.tests.factories import AgentVersionFactory, EffectRecordFactory
from data_plane.tests.test_slo_selectors import T0, finished, ms, queued, recorded_run


def _by_name(report):  # type: ignore[no-untyped-def]
    return {slo.name: slo for slo in report.slos}


def _started_run(version, created_at: datetime, delay_ms: float, turn_ms: float, *, code: str | None = None):
    """A run that began its first call ``delay_ms`` after creation and ended ``turn_ms`` after it."""
    status = "failed" if code else "completed"
    run = recorded_run(version, created_at, [queued(), *finished(turn_ms, status, code)], status=status,
                       finished_at=created_at + ms(turn_ms))
    EffectRecordFactory(run=run, started_at=created_at + ms(delay_ms))
    return run


def test_a_tenants_slos_with_their_windows_budgets_and_sla(tenant_a):
    # given, at 12:10 on 10 March 2026: in the last 5 minutes two runs (starts of 100 and 300 ms, turns of 1 and
    # 3 s), one of them failed for the platform's reasons; and a run that stalled 4 minutes earlier in the month
    at = T0 + timedelta(minutes=10)
    with schema_context(tenant_a.schema):
        version = AgentVersionFactory()
        _started_run(version, at - timedelta(minutes=2), 100, 1_000)
        _started_run(version, at - timedelta(minutes=1), 300, 3_000, code="internal_error")
        EffectRecordFactory(run=_started_run(version, at - timedelta(minutes=1), 50, 2_000), started_at=at - ms(10),
                            result={"is_error": True, "content": "no such city"})
        recorded_run(version, T0 - timedelta(days=2), [queued(), *finished(5 * 60_000, "cancelled")],
                     status="cancelled", finished_at=T0 - timedelta(days=2) + timedelta(minutes=5))
    # when
    report = slo_selectors.slo_report_get(tenant=tenant_a.tenant, at=at)
    # then
    slos = _by_name(report)
    five_minutes = Window(name="rolling_5m", start=at - timedelta(minutes=5), end=at)
    assert (slos["agent_start_latency_p50"].value, slos["agent_start_latency_p50"].is_met) == (100.0, True)
    assert (slos["agent_start_latency_p99"].value, slos["agent_start_latency_p99"].events) == (296.0, 3)
    assert slos["agent_start_latency_p99"].window == five_minutes
    assert (slos["turn_latency_p50"].value, slos["turn_latency_p99"].value) == (1500.0, 1990.0)  # completed only
    error_rate = slos["error_rate"]
    assert (error_rate.value, error_rate.is_met, error_rate.events) == (0.333333, False, 3)
    assert error_rate.window == Window(name="rolling_1h", start=at - timedelta(hours=1), end=at)
    assert error_rate.error_budget == ErrorBudget(unit="runs", allowed=0.03, used=1, left=-0.97, left_fraction=-32.3333)
    tools = slos["tool_call_success_rate"]
    assert (tools.value, tools.is_met, tools.events, tools.window.name) == (1.0, True, 4, "rolling_1d")
    assert tools.error_budget == ErrorBudget(unit="calls", allowed=0.02, used=0, left=0.02, left_fraction=1.0)
    # down: the stalled run's 8 March 12:01 to 12:04 (its cancellation ended the wait), and 12:09 (one turn of two
    # failed for the platform's reasons): 5 minutes of March
    availability = slos["availability"]
    march = Window(name="month", start=datetime(2026, 3, 1, tzinfo=timezone.utc),
                   end=datetime(2026, 4, 1, tzinfo=timezone.utc))
    elapsed = (at - march.start).total_seconds() / 60  # 13,690 minutes
    assert availability.window == march and availability.target == 0.995
    assert (availability.value, availability.is_met) == (round(1 - 5 / elapsed, 6), True)
    assert availability.error_budget == ErrorBudget(unit="minutes", allowed=223.2, used=5, left=218.2,
                                                    left_fraction=0.9776)
    assert report.sla == SlaStatus(tier="standard", month="2026-03", is_final=False, availability_target=0.995,
                                   availability=round(1 - 5 / elapsed, 6), down_minutes=5, allowed_down_minutes=223.2,
                                   is_met=True, credit_percent=0, credit_percent_due=0, credit_usd_due=Decimal("0.00"))


def test_a_missed_month_is_due_its_tiers_credit(tenant_a, monkeypatch):
    # given a professional tenant whose run stalled through the first hour of a month that has ended
    monkeypatch.setattr(tenant_a.tenant, "sla_tier", "professional")
    start = datetime(2026, 2, 1, tzinfo=timezone.utc)
    with schema_context(tenant_a.schema):
        recorded_run(AgentVersionFactory(), start, [queued(), *finished(3_600_000, "cancelled")], status="cancelled",
                     finished_at=start + timedelta(hours=1))
    # when
    report = slo_selectors.slo_report_get(tenant=tenant_a.tenant, at=datetime(2026, 3, 2, tzinfo=timezone.utc),
                                          month="2026-02")
    # then: 59 of February's 40,320 minutes were down (12:01 to 12:59), over the 40.32 the tier allows
    assert report.sla == SlaStatus(tier="professional", month="2026-02", is_final=True, availability_target=0.999,
                                   availability=round(1 - 59 / 40_320, 6), down_minutes=59,
                                   allowed_down_minutes=40.32, is_met=False, credit_percent=10, credit_percent_due=10,
                                   credit_usd_due=Decimal("49.90"))


def test_the_platforms_slos_merge_every_tenants_values(tenant_a, tenant_b):
    # given starts of 100, 300 and 700 ms in A, 200 ms in B; a platform failure in A, none in B
    at = T0 + timedelta(minutes=10)
    with schema_context(tenant_a.schema):
        version = AgentVersionFactory()
        for delay, code in ((100, None), (300, "provider_unavailable"), (700, None)):
            _started_run(version, at - timedelta(minutes=1), delay, 1_000, code=code)
    with schema_context(tenant_b.schema):
        _started_run(AgentVersionFactory(), at - timedelta(minutes=1), 200, 1_000)
    # when
    report = slo_selectors.slo_report_platform(at=at, tenants=[tenant_a.tenant, tenant_b.tenant])
    # then each tenant's own, and the platform's over the four runs
    a, b = report.tenants
    assert (a.scope, _by_name(a)["agent_start_latency_p50"].value, _by_name(a)["error_rate"].value) == \
        (tenant_a.tenant.slug, 300.0, 0.333333)
    assert (b.scope, _by_name(b)["agent_start_latency_p50"].value, _by_name(b)["error_rate"].value) == \
        (tenant_b.tenant.slug, 200.0, 0.0)
    overall = _by_name(report.overall)
    assert (report.overall.scope, report.overall.sla) == ("platform", None)
    assert (overall["agent_start_latency_p50"].value, overall["agent_start_latency_p99"].value) == (250.0, 688.0)
    assert overall["agent_start_latency_p50"].is_exact is True
    assert (overall["error_rate"].value, overall["error_rate"].events) == (0.25, 4)
    assert overall["availability"].target == 0.999


def test_merged_percentiles_weigh_a_sampled_tenants_values():
    # given a tenant whose 4 values were sampled every 2nd (20, 40), and one whose single value is 30
    sampled = LatencyMeasure(count=4, p50_ms=25.0, p99_ms=40.0, values_ms=(20.0, 40.0), stride=2)
    whole = LatencyMeasure(count=1, p50_ms=30.0, p99_ms=30.0, values_ms=(30.0,), stride=1)
    # when
    merged = slo_selectors.merge_latencies([sampled, whole])
    # then: percentile_cont over 20, 20, 30, 40, 40
    assert merged == LatencyMeasure(count=5, p50_ms=30.0, p99_ms=40.0, values_ms=(), stride=2)
