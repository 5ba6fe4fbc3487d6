"""SLOs and the SLA: each SLI against its objective over its window, the error budget left, and whether the
tier's monthly availability was met (and the service credit due when it was not). Reads only.

The measurements come from each tenant's own schema (``data_plane.slo_selectors``), always read inside
that tenant's ``schema_context``: the platform-wide figures are merged here from per-tenant answers (counts,
minutes and bounded samples of the latencies), so no statement ever spans two tenants' schemas.
Definitions and targets: docs/slos.md and the requirements' "SLOs and SLAs".
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal
from typing import Protocol

from django.utils import timezone

from billing.plans import plan_for
from common.schemas import in_schema
from data_plane import slo_selectors
from data_plane.slo_selectors import LatencyMeasure, MinuteCount, ToolCallOutcomes, TurnOutcomes
from tenants.selectors import tenant_list

# The requirements' objectives ("SLOs and SLAs"); availability per tenant is its tier's (billing.plans).
AGENT_START_P50_MS = 200.0
AGENT_START_P99_MS = 1000.0
TURN_P50_MS = 2000.0
TURN_P99_MS = 10000.0
TOOL_SUCCESS_TARGET = 0.995
ERROR_RATE_TARGET = 0.01
PLATFORM_AVAILABILITY_TARGET = 0.999
LATENCY_WINDOW = timedelta(minutes=5)
ERROR_RATE_WINDOW = timedelta(hours=1)
TOOL_WINDOW = timedelta(days=1)
MAX_CUSTOM_WINDOW = timedelta(days=31)
# A minute is down when more than this share of its requests failed for the platform's reasons (as the
# large clouds' SLAs count a "downtime minute"); a minute without traffic is up.
DOWN_MINUTE_BAD_SHARE = 0.05
# Raw latencies fetched per tenant and SLI for the platform-wide percentiles; past it, every k-th value.
VALUES_LIMIT = 50_000


class SloTenant(Protocol):
    """What the SLOs read of a tenant (billing reaches the tenant registry only through its selectors)."""

    schema_name: str
    slug: str
    sla_tier: str


@dataclass(frozen=True)
class Window:
    name: str  # rolling_5m | rolling_1h | rolling_1d | month | custom
    start: datetime
    end: datetime


@dataclass(frozen=True)
class ErrorBudget:
    unit: str  # minutes | runs | calls
    allowed: float  # bad events the objective allows over the window
    used: float
    left: float  # allowed - used (negative: overspent)
    left_fraction: float | None  # left / allowed; None when nothing is allowed yet (no traffic)


@dataclass(frozen=True)
class SloResult:
    name: str
    unit: str  # ms | ratio
    objective: str  # below | at_least
    target: float
    value: float | None  # None without data in the window
    is_met: bool | None
    events: int  # the sample behind the value: runs, turns, tool call attempts or minutes
    window: Window
    error_budget: ErrorBudget | None = None
    is_exact: bool = True  # False for a platform-wide percentile merged from sampled tenants


@dataclass(frozen=True)
class SlaStatus:
    tier: str
    month: str  # YYYY-MM
    is_final: bool  # the month is over: is_met and the credit no longer change
    availability_target: float
    availability: float
    down_minutes: int
    allowed_down_minutes: float
    is_met: bool
    credit_percent: int  # the tier's credit when the target is missed
    credit_percent_due: int
    credit_usd_due: Decimal


@dataclass(frozen=True)
class SloReport:
    scope: str  # the tenant's slug, or "platform"
    sla_tier: str  # "" for the platform
    evaluated_at: datetime
    slos: tuple[SloResult, ...]
    sla: SlaStatus | None


@dataclass(frozen=True)
class PlatformSloReport:
    overall: SloReport
    tenants: tuple[SloReport, ...]


@dataclass(frozen=True)
class _Windows:
    latency: Window
    error_rate: Window
    tool: Window
    availability: Window
    month: Window


@dataclass(frozen=True)
class _Measures:
    """One tenant's measurements (or several merged)."""

    agent_start: LatencyMeasure
    turn: LatencyMeasure
    outcomes: TurnOutcomes
    tools: ToolCallOutcomes
    availability: tuple[MinuteCount, ...]
    month: tuple[MinuteCount, ...]
    is_exact: bool = True


def month_window(month: str | None, *, at: datetime) -> Window:
    """The calendar month (UTC) ``YYYY-MM``, or the one ``at`` falls in. Raises ValueError for another text."""
    if month:
        year, number = (int(part) for part in month.split("-"))
        start = datetime(year, number, 1, tzinfo=dt_timezone.utc)
    else:
        utc = at.astimezone(dt_timezone.utc)
        start = datetime(utc.year, utc.month, 1, tzinfo=dt_timezone.utc)
    days = calendar.monthrange(start.year, start.month)[1]
    return Window(name="month", start=start, end=start + timedelta(days=days))


def _windows(*, at: datetime, since: datetime | None, until: datetime | None, month: str | None) -> _Windows:
    month_of = month_window(month, at=at)
    if since is not None:
        custom = Window(name="custom", start=since, end=until or at)
        return _Windows(latency=custom, error_rate=custom, tool=custom, availability=custom, month=month_of)
    return _Windows(latency=Window("rolling_5m", at - LATENCY_WINDOW, at),
                    error_rate=Window("rolling_1h", at - ERROR_RATE_WINDOW, at),
                    tool=Window("rolling_1d", at - TOOL_WINDOW, at),
                    availability=month_of, month=month_of)


def _measure(tenant_schema: str, windows: _Windows, *, at: datetime, values_limit: int) -> _Measures:
    """One tenant's measurements; the connection must be in ``tenant_schema``."""
    latency, rate, tool = windows.latency, windows.error_rate, windows.tool
    availability = slo_selectors.availability_minutes(tenant_schema=tenant_schema, start=windows.availability.start,
                                                      end=windows.availability.end, at=at)
    month = availability if windows.month == windows.availability else slo_selectors.availability_minutes(
        tenant_schema=tenant_schema, start=windows.month.start, end=windows.month.end, at=at)
    return _Measures(
        agent_start=slo_selectors.agent_start_latencies(tenant_schema=tenant_schema, start=latency.start,
                                                        end=latency.end, at=at, values_limit=values_limit),
        turn=slo_selectors.turn_latencies(tenant_schema=tenant_schema, start=latency.start, end=latency.end,
                                          values_limit=values_limit),
        outcomes=slo_selectors.turn_outcomes(tenant_schema=tenant_schema, start=rate.start, end=rate.end),
        tools=slo_selectors.tool_call_outcomes(tenant_schema=tenant_schema, start=tool.start, end=tool.end),
        availability=availability, month=month)


def _down_minutes(minutes: Iterable[MinuteCount]) -> int:
    return sum(1 for minute in minutes if minute.bad > DOWN_MINUTE_BAD_SHARE * minute.requests)


def _budget(unit: str, *, allowed: float, used: float) -> ErrorBudget:
    left = allowed - used
    return ErrorBudget(unit=unit, allowed=round(allowed, 4), used=used, left=round(left, 4),
                       left_fraction=round(left / allowed, 4) if allowed > 0 else None)


def _latency_slo(name: str, value: float | None, target: float, measure: LatencyMeasure, window: Window,
                 is_exact: bool) -> SloResult:
    return SloResult(name=name, unit="ms", objective="below", target=target, value=value,
                     is_met=None if value is None else value < target, events=measure.count, window=window,
                     is_exact=is_exact)


def _minutes(window: Window, at: datetime) -> float:
    """The window's minutes so far (up to ``at``)."""
    return max((min(window.end, at) - window.start).total_seconds(), 0.0) / 60


def _availability(minutes: Sequence[MinuteCount], window: Window, *, at: datetime, target: float) -> SloResult:
    elapsed, down = _minutes(window, at), _down_minutes(minutes)
    value = round(1 - down / elapsed, 6) if elapsed > 0 else None
    total = (window.end - window.start).total_seconds() / 60
    return SloResult(name="availability", unit="ratio", objective="at_least", target=target, value=value,
                     is_met=None if value is None else value >= target, events=round(elapsed), window=window,
                     error_budget=_budget("minutes", allowed=total * (1 - target), used=down))


def _report(measures: _Measures, windows: _Windows, *, at: datetime, scope: str, tier: str,
            availability_target: float) -> SloReport:
    start, turn, outcomes, tools = measures.agent_start, measures.turn, measures.outcomes, measures.tools
    exact = measures.is_exact
    error_rate = round(outcomes.platform_failures / outcomes.ended, 6) if outcomes.ended else None
    tool_rate = round(tools.succeeded / tools.attempts, 6) if tools.attempts else None
    slos = (
        _latency_slo("agent_start_latency_p50", start.p50_ms, AGENT_START_P50_MS, start, windows.latency, exact),
        _latency_slo("agent_start_latency_p99", start.p99_ms, AGENT_START_P99_MS, start, windows.latency, exact),
        _latency_slo("turn_latency_p50", turn.p50_ms, TURN_P50_MS, turn, windows.latency, exact),
        _latency_slo("turn_latency_p99", turn.p99_ms, TURN_P99_MS, turn, windows.latency, exact),
        SloResult(name="error_rate", unit="ratio", objective="below", target=ERROR_RATE_TARGET, value=error_rate,
                  is_met=None if error_rate is None else error_rate < ERROR_RATE_TARGET, events=outcomes.ended,
                  window=windows.error_rate,
                  error_budget=_budget("runs", allowed=outcomes.ended * ERROR_RATE_TARGET,
                                       used=outcomes.platform_failures)),
        _availability(measures.availability, windows.availability, at=at, target=availability_target),
        SloResult(name="tool_call_success_rate", unit="ratio", objective="at_least", target=TOOL_SUCCESS_TARGET,
                  value=tool_rate, is_met=None if tool_rate is None else tool_rate >= TOOL_SUCCESS_TARGET,
                  events=tools.attempts, window=windows.tool,
                  error_budget=_budget("calls", allowed=tools.attempts * (1 - TOOL_SUCCESS_TARGET),
                                       used=tools.attempts - tools.succeeded)),
    )
    sla = _sla(measures.month, windows.month, at=at, tier=tier) if tier else None
    return SloReport(scope=scope, sla_tier=tier, evaluated_at=at, slos=slos, sla=sla)


def _sla(minutes: Sequence[MinuteCount], month: Window, *, at: datetime, tier: str) -> SlaStatus:
    """The tier's monthly availability promise: met or not (so far, until the month is over), and the credit."""
    plan = plan_for(tier)
    elapsed, down = _minutes(month, at), _down_minutes(minutes)
    availability = round(1 - down / elapsed, 6) if elapsed > 0 else 1.0
    is_met = availability >= plan.availability_target
    credit = 0 if is_met else plan.credit_percent
    return SlaStatus(tier=tier, month=f"{month.start:%Y-%m}", is_final=at >= month.end,
                     availability_target=plan.availability_target, availability=availability, down_minutes=down,
                     allowed_down_minutes=round((month.end - month.start).total_seconds() / 60
                                                * (1 - plan.availability_target), 4),
                     is_met=is_met, credit_percent=plan.credit_percent, credit_percent_due=credit,
                     credit_usd_due=(plan.monthly_fee_usd * credit / 100).quantize(Decimal("0.01")))


def slo_report_get(*, tenant: SloTenant, at: datetime | None = None, since: datetime | None = None,
                   until: datetime | None = None, month: str | None = None) -> SloReport:
    """The tenant's SLOs (each over its own window, or all over [since, until)), error budgets, and its SLA for
    the month (``YYYY-MM``; the current one by default). Reads the tenant's schema, entering it if needed."""
    at = at or timezone.now()
    windows = _windows(at=at, since=since, until=until, month=month)
    with in_schema(tenant.schema_name):
        measures = _measure(tenant.schema_name, windows, at=at, values_limit=0)
    return _report(measures, windows, at=at, scope=tenant.slug, tier=tenant.sla_tier,
                   availability_target=plan_for(tenant.sla_tier).availability_target)


def slo_report_platform(*, at: datetime | None = None, since: datetime | None = None, until: datetime | None = None,
                        month: str | None = None, tenants: Iterable[SloTenant] | None = None) -> PlatformSloReport:
    """Operators only: every tenant's SLOs (each measured inside its own schema) and the platform's, merged from
    them (percentiles over every tenant's values; exact unless a tenant had more than VALUES_LIMIT of one).
    Tenants: those not deleted, unless given."""
    at = at or timezone.now()
    windows = _windows(at=at, since=since, until=until, month=month)
    if tenants is None:
        tenants = tenant_list().exclude(status="deleted").exclude(schema_name="public").order_by("slug")
    reports, measured = [], []
    for tenant in tenants:
        with in_schema(tenant.schema_name):
            measures = _measure(tenant.schema_name, windows, at=at, values_limit=VALUES_LIMIT)
        measured.append(measures)
        reports.append(_report(measures, windows, at=at, scope=tenant.slug, tier=tenant.sla_tier,
                               availability_target=plan_for(tenant.sla_tier).availability_target))
    overall = _report(_merge(measured), windows, at=at, scope="platform", tier="",
                      availability_target=PLATFORM_AVAILABILITY_TARGET)
    return PlatformSloReport(overall=overall, tenants=tuple(reports))


def _merge(measured: Sequence[_Measures]) -> _Measures:
    return _Measures(
        agent_start=merge_latencies([m.agent_start for m in measured]),
        turn=merge_latencies([m.turn for m in measured]),
        outcomes=TurnOutcomes(*(sum(getattr(m.outcomes, field) for m in measured)
                                for field in ("ended", "completed", "failed", "cancelled", "platform_failures"))),
        tools=ToolCallOutcomes(attempts=sum(m.tools.attempts for m in measured),
                               succeeded=sum(m.tools.succeeded for m in measured)),
        availability=_merge_minutes([m.availability for m in measured]),
        month=_merge_minutes([m.month for m in measured]),
        is_exact=all(m.agent_start.stride == 1 and m.turn.stride == 1 for m in measured))


def _merge_minutes(series: Sequence[Sequence[MinuteCount]]) -> tuple[MinuteCount, ...]:
    merged: dict[datetime, tuple[int, int]] = {}
    for minutes in series:
        for minute in minutes:
            requests, bad = merged.get(minute.minute, (0, 0))
            merged[minute.minute] = (requests + minute.requests, bad + minute.bad)
    return tuple(MinuteCount(minute=m, requests=r, bad=b) for m, (r, b) in sorted(merged.items()))


def merge_latencies(measures: Sequence[LatencyMeasure]) -> LatencyMeasure:
    """Several tenants' latencies as one: p50 and p99 as ``percentile_cont`` over all their values, each sampled
    value standing for ``stride`` values of its tenant (so exact when every stride is 1)."""
    weighted = sorted((value, m.stride) for m in measures for value in m.values_ms)
    count = sum(m.count for m in measures)
    if not weighted:
        return LatencyMeasure(count=count, p50_ms=None, p99_ms=None)
    return replace(LatencyMeasure(count=count, p50_ms=None, p99_ms=None),
                   p50_ms=round(_percentile_cont(weighted, 0.5), 3), p99_ms=round(_percentile_cont(weighted, 0.99), 3),
                   stride=max(m.stride for m in measures))


def _percentile_cont(weighted: Sequence[tuple[float, int]], fraction: float) -> float:
    """Postgres' percentile_cont over the multiset in which each value appears ``weight`` times (sorted input)."""
    total = sum(weight for _, weight in weighted)
    rank = fraction * (total - 1)
    lower, upper = math.floor(rank), math.ceil(rank)

    def at_rank(position: int) -> float:
        seen = 0
        for value, weight in weighted:
            seen += weight
            if position < seen:
                return value
        return weighted[-1][0]

    low = at_rank(lower)
    return low + (at_rank(upper) - low) * (rank - lower)
