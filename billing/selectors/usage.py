"""Reads of a tenant's own usage: its rollups by hour or day, its records, this month against its plan."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum

from billing.models import UsageRecord, UsageRollup
from billing.plans import plan_for
from billing.periods import day_start, days_in_month

MILLION = Decimal(1_000_000)
USAGE_DIMENSIONS = ("kind", "agent", "name")
_DIMENSION_FIELDS = {"kind": ("kind",), "agent": ("agent_name", "agent_id"), "name": ("name",)}
_SUMS = ("count", "failures", "input_tokens", "output_tokens", "cached_input_tokens", "cost_usd", "latency_ms_total")


def usage_rollup_list(*, tenant: Any, start: date, end: date, period: str = UsageRollup.Period.DAY,
                      group_by: tuple[str, ...] = USAGE_DIMENSIONS) -> list[dict[str, Any]]:
    """The tenant's usage from ``start`` to ``end`` (UTC days, both included) per hour or day and the chosen
    dimensions (kind, agent, name: the model, the tool, or for runs their status), summed from its rollups."""
    fields = ["period_start"] + [name for dimension in group_by for name in _DIMENSION_FIELDS[dimension]]
    rows = (UsageRollup.objects.filter(tenant=tenant, period=period, period_start__gte=day_start(start),
                                       period_start__lt=day_start(end) + timedelta(days=1))
            .values(*fields).annotate(**{f"total_{name}": Sum(name) for name in _SUMS}).order_by(*fields))
    return [{**{name: row[name] for name in fields}, **{name: row[f"total_{name}"] for name in _SUMS}}
            for row in rows]


def usage_totals(*, tenant: Any, start: date, end: date) -> list[dict[str, Any]]:
    """The tenant's usage from ``start`` to ``end`` (UTC days, both included) per kind, from its daily rollups."""
    rows = (UsageRollup.objects.filter(tenant=tenant, period=UsageRollup.Period.DAY,
                                       period_start__gte=day_start(start),
                                       period_start__lt=day_start(end) + timedelta(days=1))
            .values("kind").annotate(**{f"total_{name}": Sum(name) for name in _SUMS}).order_by("kind"))
    return [{"kind": row["kind"], **{name: row[f"total_{name}"] for name in _SUMS}} for row in rows]


@dataclass(frozen=True)
class MonthAgainstPlan:
    month: str  # YYYY-MM
    tier: str
    tokens: int  # LLM input + output tokens (cached input tokens are part of input tokens)
    tokens_per_month: int  # the plan's quota
    share_of_quota: Decimal  # tokens / quota, 4 decimals
    llm_calls: int
    runs: int
    monthly_fee_usd: Decimal
    usage_usd_per_million_tokens: Decimal
    usage_charge_usd: Decimal  # tokens x the plan's rate, to the cent (half up)


def usage_month_against_plan(*, tenant: Any, today: date) -> MonthAgainstPlan:
    """The tenant's calendar month so far (UTC) against its plan: tokens, quota, and the metered charge."""
    first = today.replace(day=1)
    last = today.replace(day=days_in_month(today))
    kinds = {row["kind"]: row for row in usage_totals(tenant=tenant, start=first, end=last)}
    llm = kinds.get(UsageRecord.Kind.LLM, {})
    tokens = int(llm.get("input_tokens") or 0) + int(llm.get("output_tokens") or 0)
    plan = plan_for(tenant.sla_tier)
    charge = (Decimal(tokens) / MILLION * plan.usage_usd_per_million_tokens).quantize(Decimal("0.01"),
                                                                                      rounding="ROUND_HALF_UP")
    return MonthAgainstPlan(
        month=first.strftime("%Y-%m"), tier=plan.tier, tokens=tokens, tokens_per_month=plan.tokens_per_month,
        share_of_quota=(Decimal(tokens) / Decimal(plan.tokens_per_month)).quantize(Decimal("0.0001")),
        llm_calls=int(llm.get("count") or 0), runs=int(kinds.get(UsageRecord.Kind.RUN, {}).get("count") or 0),
        monthly_fee_usd=plan.monthly_fee_usd, usage_usd_per_million_tokens=plan.usage_usd_per_million_tokens,
        usage_charge_usd=charge)


USAGE_EXPORT_COLUMNS = ("occurred_at", "kind", "source_key", "run_id", "agent_id", "agent_name", "name",
                        "input_tokens", "output_tokens", "cached_input_tokens", "cost_usd", "latency_ms", "is_success",
                        "replayed", "session_id")


def usage_record_export(*, tenant: Any, start: date, end: date, kind: str | None = None
                        ) -> Iterator[dict[str, Any]]:
    """The tenant's own usage records from ``start`` to ``end`` (UTC days, both included), oldest first,
    streamed from the database in chunks."""
    records = UsageRecord.objects.filter(tenant=tenant, occurred_at__gte=day_start(start),
                                         occurred_at__lt=day_start(end) + timedelta(days=1))
    if kind:
        records = records.filter(kind=kind)
    for record in records.order_by("occurred_at", "id").iterator(chunk_size=2000):
        yield {"occurred_at": record.occurred_at, "kind": record.kind, "source_key": record.source_key,
               "run_id": record.run_id, "agent_id": record.agent_id, "agent_name": record.agent_name,
               "name": record.name, "input_tokens": record.input_tokens, "output_tokens": record.output_tokens,
               "cached_input_tokens": record.cached_input_tokens, "cost_usd": record.cost_usd,
               "latency_ms": record.latency_ms, "is_success": record.is_success,
               "replayed": bool(record.details.get("replayed")), "session_id": record.details.get("session_id", "")}


def usage_record_count(*, tenant: Any, since: datetime | None = None) -> int:
    """How many usage records the tenant has (since a moment)."""
    records = UsageRecord.objects.filter(tenant=tenant)
    if since is not None:
        records = records.filter(occurred_at__gte=since)
    return records.aggregate(n=Count("id"))["n"]
