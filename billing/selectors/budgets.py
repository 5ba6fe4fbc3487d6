"""Reads of budgets: each budget with its current period's spend, the alerts, the month's token quota."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from django.utils import timezone

from billing.errors import BudgetNotFound
from billing.models import Budget, BudgetAlert, BudgetSpend, RunSpend, TokenQuotaUsage
from billing.plans import plan_for
from billing.services.budgets import period_end, period_start


@dataclass(frozen=True)
class BudgetStatus:
    """A budget and its current period: settled spend, holds of calls in flight, what is left."""

    budget: Budget
    period_start: datetime
    period_end: datetime | None
    spent_usd: Decimal
    reserved_usd: Decimal
    remaining_usd: Decimal
    is_exhausted: bool


def budget_list(*, tenant: Any) -> QuerySet[Budget]:
    return Budget.objects.filter(tenant=tenant)


def budget_get(*, tenant: Any, budget_id: UUID) -> Budget:
    """One budget of the tenant. Raises BudgetNotFound (also for another tenant's)."""
    budget = Budget.objects.filter(tenant=tenant, id=budget_id).first()
    if budget is None:
        raise BudgetNotFound(f"Budget {budget_id} not found.")
    return budget


def budget_status(*, budget: Budget, now: datetime | None = None) -> BudgetStatus:
    now = now or timezone.now()
    started = period_start(budget.period, now)
    spend = BudgetSpend.objects.filter(budget=budget, period_start=started).first()
    spent = spend.spent_usd if spend else Decimal(0)
    reserved = spend.reserved_usd if spend else Decimal(0)
    return BudgetStatus(budget=budget, period_start=started, period_end=period_end(budget.period, now),
                        spent_usd=spent, reserved_usd=reserved,
                        remaining_usd=max(budget.limit_usd - spent - reserved, Decimal(0)),
                        is_exhausted=bool(budget.is_enabled and spend is not None and (
                            spend.exhausted_at is not None or spend.spent_usd >= budget.limit_usd)))


def budget_alert_list(*, tenant: Any, budget_id: UUID | None = None) -> QuerySet[BudgetAlert]:
    alerts = BudgetAlert.objects.filter(tenant=tenant).select_related("budget")
    return alerts.filter(budget_id=budget_id) if budget_id is not None else alerts


@dataclass(frozen=True)
class TokenQuotaStatus:
    tier: str
    period_start: datetime
    period_end: datetime
    quota_tokens: int
    used_tokens: int
    reserved_tokens: int
    remaining_tokens: int
    is_exhausted: bool


def token_quota_get(*, tenant: Any, now: datetime | None = None) -> TokenQuotaStatus:
    """The tenant's LLM tokens this calendar month against its plan's tokens_per_month."""
    now = now or timezone.now()
    started, ends = period_start("month", now), period_end("month", now)
    assert ends is not None
    quota = plan_for(tenant.sla_tier).tokens_per_month
    usage = TokenQuotaUsage.objects.filter(tenant=tenant, period_start=started).first()
    used = usage.used_tokens if usage else 0
    reserved = usage.reserved_tokens if usage else 0
    return TokenQuotaStatus(tier=tenant.sla_tier, period_start=started, period_end=ends, quota_tokens=quota,
                            used_tokens=used, reserved_tokens=reserved,
                            remaining_tokens=max(quota - used - reserved, 0),
                            is_exhausted=usage is not None and (used >= quota or usage.exhausted_at is not None))


def run_spend_get(*, tenant: Any, run_id: UUID) -> RunSpend | None:
    """What a run spent against its own limit (None before its first LLM call, unless it has a budget_usd)."""
    return RunSpend.objects.filter(tenant=tenant, run_id=run_id).first()
