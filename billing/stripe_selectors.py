"""Stripe billing's reads: what usage is still to report, a tenant's billing overview, revenue by day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from uuid import UUID

from django.db.models import F, Sum
from django.db.models.functions import TruncDate

from billing.models import BillingAccount, Invoice, UsageReport, UsageRollup

# Stripe takes meter events up to 35 days old; older hours are not reported.
USAGE_LOOKBACK = timedelta(days=30)


@dataclass(frozen=True)
class UsageHour:
    tenant_id: UUID
    hour: datetime
    tokens: int  # LLM input + output + cached input tokens


def usage_hours_unreported(*, now: datetime, settle: timedelta) -> list[UsageHour]:
    """Closed hours (ended at least ``settle`` before ``now``) with LLM usage, of tenants whose subscription is
    open, that have no usage report yet. Oldest first."""
    latest_start = now - settle - timedelta(hours=1)
    earliest_start = now - USAGE_LOOKBACK
    open_statuses = [BillingAccount.Status.ACTIVE, BillingAccount.Status.PAST_DUE]
    rows = (UsageRollup.objects
            .filter(period=UsageRollup.Period.HOUR, kind="llm", period_start__lte=latest_start,
                    period_start__gte=earliest_start, tenant__billing_account__status__in=open_statuses)
            .exclude(tenant__billing_account__stripe_customer_id="")
            .values("tenant_id", "period_start")
            .annotate(tokens=Sum(F("input_tokens") + F("output_tokens") + F("cached_input_tokens")))
            .order_by("period_start", "tenant_id"))
    reported = set(UsageReport.objects.filter(hour__gte=earliest_start).values_list("tenant_id", "hour"))
    return [UsageHour(tenant_id=row["tenant_id"], hour=row["period_start"], tokens=int(row["tokens"] or 0))
            for row in rows if (row["tenant_id"], row["period_start"]) not in reported and row["tokens"]]


def billing_account_find(*, tenant: Any) -> BillingAccount | None:
    """The tenant's billing account, or None when it has none."""
    return BillingAccount.objects.filter(tenant=tenant).first()


@dataclass(frozen=True)
class BillingOverview:
    account: BillingAccount | None
    invoices: list[Invoice]
    usage_reports: list[UsageReport]


def billing_overview_get(*, tenant: Any, invoices: int = 12, usage_reports: int = 48) -> BillingOverview:
    """The tenant's own billing: its account, latest invoices and latest usage reports (never another's)."""
    return BillingOverview(
        account=billing_account_find(tenant=tenant),
        invoices=list(Invoice.objects.filter(tenant=tenant).order_by("-created_at", "-id")[:invoices]),
        usage_reports=list(UsageReport.objects.filter(tenant=tenant).order_by("-hour", "-id")[:usage_reports]),
    )


@dataclass(frozen=True)
class RevenueDay:
    tenant_id: UUID
    day: date
    currency: str
    amount_paid: int  # in the currency's smallest unit (cents)


def invoices_paid_by_day(*, start: date, end: date, tenant_id: UUID | None = None) -> list[RevenueDay]:
    """Revenue collected per tenant, UTC day (of payment) and currency, for ``start`` <= day < ``end``: the
    paid invoices Stripe told us about. For the finance reports."""
    since = datetime.combine(start, time.min, tzinfo=timezone.utc)
    until = datetime.combine(end, time.min, tzinfo=timezone.utc)
    invoices = Invoice.objects.filter(status="paid", paid_at__gte=since, paid_at__lt=until)
    if tenant_id is not None:
        invoices = invoices.filter(tenant_id=tenant_id)
    rows = (invoices.annotate(day=TruncDate("paid_at", tzinfo=timezone.utc))
            .values("tenant_id", "day", "currency").annotate(amount=Sum("amount_paid"))
            .order_by("day", "tenant_id", "currency"))
    return [RevenueDay(tenant_id=row["tenant_id"], day=row["day"], currency=row["currency"],
                       amount_paid=int(row["amount"])) for row in rows]
