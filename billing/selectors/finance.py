"""Finance reports (operators): per tenant, model and day, what usage cost us, what it earned, the margin.

Definitions (docs/metering.md has them with examples):

- LLM cost: the usage records' ``cost_usd`` (the provider's price from litellm's price map, cached input tokens
  priced as cached), from the daily rollups of LLM calls. Replayed results cost nothing.
- Infrastructure share: the month's infrastructure cost (a setting) spread evenly over the month's days, then
  each day's part allocated to tenants and models in proportion to their LLM calls that day. LLM calls are the
  driver because every call is one turn of a run on our workers (a step claimed, its events streamed, its
  checkpoint written) and the infrastructure (orchestration and runtime pods, the database, the network) is
  sized by turns; a run's wall time is not, as a run waiting for a human holds no worker at all.
- Revenue: from a RevenueSource. The default, PlanPriceRevenue, is the plan's monthly fee spread evenly over
  the month's days (on a row of its own per tenant and day, model empty) plus metered tokens (input + output)
  times the plan's price per million. When paid invoices are recorded, a source reading them replaces it.
- Margin: revenue - LLM cost - infrastructure share; margin percent: margin / revenue x 100 (none without
  revenue).
- Rounding: everything is computed in Decimal without rounding; each amount shown is rounded half up to
  0.000001 USD and each percentage to 0.01. A grouped row or total is summed before rounding, so it may differ
  from the sum of the rounded rows by the rounding.
- A session is a top-level run with all its sub-runs (a follow-up message continues the same run, so a
  conversation is one session); its cost is the LLM and tool cost of every call in it, counted on the UTC day
  its top-level run first finished.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol

from django.db.models import Min, Sum
from django.db.models.fields.json import KeyTextTransform

from billing.models import UsageRecord, UsageRollup
from billing.periods import day_start, days_in_month
from billing.plans import plan_for
from tenants.selectors import tenant_list

MILLION = Decimal(1_000_000)
MONEY = Decimal("0.000001")
PERCENT = Decimal("0.01")
FINANCE_DIMENSIONS = ("tenant", "model", "day")
METRIC_COLUMNS = ("llm_calls", "input_tokens", "output_tokens", "cached_input_tokens", "tokens", "llm_cost_usd",
                  "infrastructure_usd", "revenue_fee_usd", "revenue_usage_usd", "revenue_usd", "margin_usd",
                  "margin_percent")
SESSION_COLUMNS = ("tenant", "day", "sessions", "cost_total_usd", "cost_average_usd", "cost_p50_usd")
_TOKENS = ("llm_calls", "input_tokens", "output_tokens", "cached_input_tokens")
_AMOUNTS = ("llm_cost_usd", "infrastructure_usd", "revenue_fee_usd", "revenue_usage_usd")


def money(value: Decimal) -> Decimal:
    return value.quantize(MONEY, rounding=ROUND_HALF_UP)


class RevenueSource(Protocol):
    """Where revenue comes from: the plans' prices now; paid invoices once they are recorded (the seam)."""

    name: str

    def fee_for_day(self, *, tenant: Any, day: date) -> Decimal:
        """The tenant's subscription revenue attributed to ``day``."""

    def usage_revenue(self, *, tenant: Any, day: date, model: str, tokens: int) -> Decimal:
        """The revenue of ``tokens`` metered LLM tokens of ``model`` on ``day``."""


@dataclass(frozen=True)
class PlanPriceRevenue:
    """Revenue at list price: the tenant's current plan's fee prorated per day, plus its usage price."""

    name: str = "plan_prices"

    def fee_for_day(self, *, tenant: Any, day: date) -> Decimal:
        return plan_for(tenant.sla_tier).monthly_fee_usd / days_in_month(day)

    def usage_revenue(self, *, tenant: Any, day: date, model: str, tokens: int) -> Decimal:
        return Decimal(tokens) / MILLION * plan_for(tenant.sla_tier).usage_usd_per_million_tokens


@dataclass(frozen=True)
class FinanceReport:
    start: date
    end: date
    group_by: tuple[str, ...]
    revenue_source: str
    infrastructure_usd_per_month: Decimal
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    sessions: list[dict[str, Any]] = field(default_factory=list)


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=offset) for offset in range((end - start).days + 1)]


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    """Derive revenue and margin from a row's unrounded sums, then round what is shown."""
    revenue = row["revenue_fee_usd"] + row["revenue_usage_usd"]
    margin = revenue - row["llm_cost_usd"] - row["infrastructure_usd"]
    shown = {name: int(row[name]) for name in _TOKENS}
    shown["tokens"] = shown["input_tokens"] + shown["output_tokens"]
    shown.update({name: money(row[name]) for name in _AMOUNTS})
    shown["revenue_usd"] = money(revenue)
    shown["margin_usd"] = money(margin)
    shown["margin_percent"] = (margin / revenue * 100).quantize(PERCENT, rounding=ROUND_HALF_UP) if revenue else None
    return shown


def finance_report(*, start: date, end: date, infrastructure_usd_per_month: Decimal,
                   group_by: tuple[str, ...] = FINANCE_DIMENSIONS, revenue: RevenueSource | None = None
                   ) -> FinanceReport:
    """Tokens, LLM cost, infrastructure share, revenue and margin from ``start`` to ``end`` (UTC days, both
    included) per the chosen dimensions (tenant, model, day: any of them, in that order), with totals and the
    cost per session per tenant and day. Reads the daily rollups: recompute them first for fresh numbers."""
    source = revenue or PlanPriceRevenue()
    days = _days(start, end)
    tenants = {tenant.id: tenant for tenant in tenant_list()}
    usage = (UsageRollup.objects.filter(period=UsageRollup.Period.DAY, kind=UsageRecord.Kind.LLM,
                                        period_start__gte=day_start(start),
                                        period_start__lt=day_start(end) + timedelta(days=1))
             .values("tenant_id", "period_start", "name")
             .annotate(calls=Sum("count"), tokens_in=Sum("input_tokens"), tokens_out=Sum("output_tokens"),
                       cached=Sum("cached_input_tokens"), cost=Sum("cost_usd")))
    calls_per_day: dict[date, int] = defaultdict(int)
    for row in usage:
        calls_per_day[row["period_start"].date()] += row["calls"]
    base: dict[tuple[int, date, str], dict[str, Any]] = {}

    def line(tenant_id: int, day: date, model: str) -> dict[str, Any]:
        return base.setdefault((tenant_id, day, model), {**{name: 0 for name in _TOKENS},
                                                         **{name: Decimal(0) for name in _AMOUNTS}})

    for row in usage:
        day, tenant = row["period_start"].date(), tenants[row["tenant_id"]]
        entry = line(tenant.id, day, row["name"])
        entry["llm_calls"] += row["calls"]
        entry["input_tokens"] += row["tokens_in"]
        entry["output_tokens"] += row["tokens_out"]
        entry["cached_input_tokens"] += row["cached"]
        entry["llm_cost_usd"] += row["cost"]
        pool = infrastructure_usd_per_month / days_in_month(day)
        entry["infrastructure_usd"] += pool * row["calls"] / calls_per_day[day]
        entry["revenue_usage_usd"] += source.usage_revenue(tenant=tenant, day=day, model=row["name"],
                                                           tokens=row["tokens_in"] + row["tokens_out"])
    for tenant in tenants.values():
        if tenant.status == "deleted":
            continue
        for day in days:
            if tenant.created_at.date() <= day:
                line(tenant.id, day, "")["revenue_fee_usd"] += source.fee_for_day(tenant=tenant, day=day)
    # group
    grouped: dict[tuple[Any, ...], dict[str, Any]] = {}
    for (tenant_id, day, model), entry in sorted(base.items(), key=lambda item: (
            tenants[item[0][0]].slug, item[0][1], item[0][2])):
        values = {"tenant": tenants[tenant_id].slug, "model": model, "day": day.isoformat()}
        key = tuple(values[dimension] for dimension in group_by)
        target = grouped.setdefault(key, {**{name: 0 for name in _TOKENS}, **{name: Decimal(0) for name in _AMOUNTS},
                                          "_tier": tenants[tenant_id].sla_tier})
        for name in (*_TOKENS, *_AMOUNTS):
            target[name] += entry[name]
    rows = []
    for key, entry in grouped.items():
        row: dict[str, Any] = dict(zip(group_by, key))
        if "tenant" in group_by:
            row["tier"] = entry["_tier"]
        rows.append({**row, **_finish(entry)})
    totals_raw = {**{name: sum(entry[name] for entry in base.values()) for name in _TOKENS},
                  **{name: sum((entry[name] for entry in base.values()), Decimal(0)) for name in _AMOUNTS}}
    pool_total = sum((infrastructure_usd_per_month / days_in_month(day) for day in days), Decimal(0))
    totals = {**_finish(totals_raw), "infrastructure_pool_usd": money(pool_total),
              "infrastructure_unallocated_usd": money(pool_total - totals_raw["infrastructure_usd"])}
    return FinanceReport(start=start, end=end, group_by=group_by, revenue_source=source.name,
                         infrastructure_usd_per_month=infrastructure_usd_per_month, rows=rows, totals=totals,
                         sessions=session_cost_list(start=start, end=end, tenants=tenants))


def _median(values: list[Decimal]) -> Decimal:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def session_cost_list(*, start: date, end: date, tenants: dict[int, Any] | None = None) -> list[dict[str, Any]]:
    """Per tenant and day: the sessions whose top-level run first finished that day, their total, average and
    median (p50; the mean of the two middle ones for an even count) cost: LLM and tool calls of the top-level
    run and all its sub-runs, wherever they fall in time."""
    tenants = tenants if tenants is not None else {tenant.id: tenant for tenant in tenant_list()}
    begin, stop = day_start(start), day_start(end) + timedelta(days=1)
    session = KeyTextTransform("session_id", "details")
    roots = UsageRecord.objects.filter(kind=UsageRecord.Kind.RUN, details__top_level=True).annotate(session=session)
    candidates = set(roots.filter(occurred_at__gte=begin, occurred_at__lt=stop)
                     .values_list("tenant_id", "session"))
    if not candidates:
        return []
    first = {(row["tenant_id"], row["session"]): row["first"] for row in roots.filter(
        tenant_id__in={tenant_id for tenant_id, _ in candidates},
        session__in={session_id for _, session_id in candidates}).values("tenant_id", "session")
        .annotate(first=Min("occurred_at"))}
    counted = {key: moment.date() for key, moment in first.items() if key in candidates and begin <= moment < stop}
    costs = {(row["tenant_id"], row["session"]): row["cost"] for row in UsageRecord.objects.filter(
        kind__in=(UsageRecord.Kind.LLM, UsageRecord.Kind.TOOL),
        tenant_id__in={tenant_id for tenant_id, _ in counted}).annotate(session=session).filter(
        session__in={session_id for _, session_id in counted}).values("tenant_id", "session")
        .annotate(cost=Sum("cost_usd"))}
    per_day: dict[tuple[int, date], list[Decimal]] = defaultdict(list)
    for key, day in counted.items():
        per_day[(key[0], day)].append(costs.get(key) or Decimal(0))
    rows = []
    for (tenant_id, day), values in sorted(per_day.items(), key=lambda item: (tenants[item[0][0]].slug, item[0][1])):
        total = sum(values, Decimal(0))
        rows.append({"tenant": tenants[tenant_id].slug, "day": day.isoformat(), "sessions": len(values),
                     "cost_total_usd": money(total), "cost_average_usd": money(total / len(values)),
                     "cost_p50_usd": money(_median(values))})
    return rows
