"""Budgets and the tokens-per-month quota: configured per tenant and agent, enforced before each LLM call.

Before a call, ``spend_reserve`` holds the call's worst case against every budget period that applies (the
tenant's budgets, the agent's), the tenant's monthly token quota and the run's own limit, in one short
transaction of conditional upserts (``... WHERE spent + reserved + worst <= limit``): concurrent calls on any
number of workers can never together pass a limit. After the call, ``spend_settle`` counts its actual cost and
tokens and frees the hold (also on failure, with nothing spent). A hold past its expiry (its worker died) is
released by ``spend_reservations_expire``, and at once when it would make a call be refused.

Rows are always locked in one order (budget periods by budget id, then the token quota, then the run) so that
concurrent reservations, settlements and sweeps cannot deadlock. All tables are in the public schema.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any
from uuid import UUID

from django.core.mail import BadHeaderError, send_mail
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing.errors import BudgetConflict, BudgetExceeded, BudgetExhausted, BudgetInvalid, BudgetNotFound, \
    TokenQuotaExhausted
from billing.models import Budget, BudgetAlert, BudgetSpend, RunSpend
from billing.plans import plan_for
from common.actors import SYSTEM, Actor
from common.commits import ASYNC_COMMIT
from control_plane.audit.services import audit_event_record

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A "total" budget never resets: a run refused by one is told to come back in this many seconds at the earliest.
TOTAL_RETRY_AFTER_SECONDS = 3600
MAX_THRESHOLDS = 10
CENT = Decimal("0.01")


# --- periods ----------------------------------------------------------------------------------------------

def period_start(period: str, now: datetime) -> datetime:
    """The start (UTC) of the budget period holding ``now``: its day, its month, or the epoch for "total"."""
    now = now.astimezone(UTC)
    if period == Budget.Period.DAY:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Budget.Period.MONTH:
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return EPOCH


def period_end(period: str, now: datetime) -> datetime | None:
    """When the period holding ``now`` resets (None: a total budget never does)."""
    start = period_start(period, now)
    if period == Budget.Period.DAY:
        return start + timedelta(days=1)
    if period == Budget.Period.MONTH:
        return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return None


def _usd(value: Decimal | float) -> str:
    value = Decimal(value)
    return f"${value:.2f}" if value >= 1 else f"${value.normalize():f}" if value else "$0"


def _tokens(value: int) -> str:
    return f"{value:,}"


# --- configuration ----------------------------------------------------------------------------------------

def _thresholds(values: Sequence[int] | None) -> list[int]:
    thresholds = sorted(set(int(v) for v in (values if values is not None else (50, 80, 100))))
    if len(thresholds) > MAX_THRESHOLDS or any(not 1 <= t <= 1000 for t in thresholds):
        raise BudgetInvalid(f"alert_thresholds must be at most {MAX_THRESHOLDS} percents between 1 and 1000, "
                            f"got {list(values or [])}.")
    return thresholds


def budget_create(*, tenant: Any, scope: str, period: str, limit_usd: Decimal, agent_id: UUID | None = None,
                  alert_thresholds: Sequence[int] | None = None, is_enabled: bool = True, actor: Actor) -> Budget:
    """Create a budget of the tenant (scope "tenant") or of one of its agents (scope "agent", ``agent_id``).
    Raises BudgetInvalid, BudgetConflict (one budget per scope, agent and period), AgentNotFound. Audit-logged."""
    from data_plane import selectors as data_plane_selectors

    if scope not in Budget.Scope.values:
        raise BudgetInvalid(f"scope must be one of {', '.join(Budget.Scope.values)}, got {scope!r}.")
    if period not in Budget.Period.values:
        raise BudgetInvalid(f"period must be one of {', '.join(Budget.Period.values)}, got {period!r}.")
    if limit_usd < 0:
        raise BudgetInvalid(f"limit_usd must be 0 or more, got {limit_usd}.")
    agent_name = ""
    if scope == Budget.Scope.AGENT:
        if agent_id is None:
            raise BudgetInvalid("An agent budget names its agent: give agent_id.")
        agent_name = data_plane_selectors.agent_get(tenant_schema=tenant.schema_name, agent_id=agent_id).name
    elif agent_id is not None:
        raise BudgetInvalid("A tenant budget applies to every agent: leave agent_id out, or use scope 'agent'.")
    thresholds = _thresholds(alert_thresholds)
    try:
        with transaction.atomic():
            budget = Budget.objects.create(tenant=tenant, scope=scope, agent_id=agent_id, agent_name=agent_name,
                                           period=period, limit_usd=limit_usd, alert_thresholds=thresholds,
                                           is_enabled=is_enabled)
            audit_event_record(tenant=tenant, actor=actor, action="budget.create", target_type="budget",
                               target_id=str(budget.id), data=_audit_data(budget))
    except IntegrityError:
        whose = f"agent {agent_name!r}" if agent_name else "the tenant"
        raise BudgetConflict(f"{whose.capitalize()} already has a {period} budget; change that one "
                             "(PATCH /v1/budgets/{id}) instead.") from None
    return budget


def _audit_data(budget: Budget) -> dict[str, Any]:
    return {"scope": budget.scope, "agent": budget.agent_name, "period": budget.period,
            "limit_usd": str(budget.limit_usd), "alert_thresholds": list(budget.alert_thresholds),
            "is_enabled": budget.is_enabled}


def _budget_for_update(tenant: Any, budget_id: UUID) -> Budget:
    budget = Budget.objects.select_for_update().filter(tenant=tenant, id=budget_id).first()
    if budget is None:
        raise BudgetNotFound(f"Budget {budget_id} not found.")
    return budget


def budget_update(*, tenant: Any, budget_id: UUID, actor: Actor, limit_usd: Decimal | None = None,
                  alert_thresholds: Sequence[int] | None = None, is_enabled: bool | None = None) -> Budget:
    """Change a budget's limit, thresholds or whether it is enforced. Raising the limit (or disabling it) lets
    runs start again in the current period. Raises BudgetNotFound, BudgetInvalid. Audit-logged."""
    if limit_usd is not None and limit_usd < 0:
        raise BudgetInvalid(f"limit_usd must be 0 or more, got {limit_usd}.")
    thresholds = _thresholds(alert_thresholds) if alert_thresholds is not None else None
    with transaction.atomic():
        budget = _budget_for_update(tenant, budget_id)
        before = _audit_data(budget)
        if limit_usd is not None:
            budget.limit_usd = limit_usd
        if thresholds is not None:
            budget.alert_thresholds = thresholds
        if is_enabled is not None:
            budget.is_enabled = is_enabled
        budget.save()
        if limit_usd is not None or is_enabled:
            # the refusal that marked a period exhausted was against the old limit
            BudgetSpend.objects.filter(budget=budget).exclude(exhausted_at=None).update(exhausted_at=None)
        audit_event_record(tenant=tenant, actor=actor, action="budget.update", target_type="budget",
                           target_id=str(budget.id), data={"before": before, "after": _audit_data(budget)})
    return budget


def budget_delete(*, tenant: Any, budget_id: UUID, actor: Actor) -> None:
    """Delete a budget with its spend and alerts (calls in flight settle into nothing). Raises BudgetNotFound.
    Audit-logged."""
    with transaction.atomic():
        budget = _budget_for_update(tenant, budget_id)
        data = _audit_data(budget)
        budget.delete()
        audit_event_record(tenant=tenant, actor=actor, action="budget.delete", target_type="budget",
                           target_id=str(budget_id), data=data)


def run_budget_set(*, tenant: Any, run_id: UUID, limit_usd: Decimal) -> None:
    """Give a new run its own budget (``budget_usd`` at its start): its LLM calls are held against it too."""
    if limit_usd <= 0:
        raise BudgetInvalid(f"budget_usd must be more than 0, got {limit_usd}.")
    RunSpend.objects.create(tenant=tenant, run_id=run_id, limit_usd=limit_usd)


# --- admission --------------------------------------------------------------------------------------------

def run_admission_check(*, tenant: Any, agent_id: UUID, now: datetime | None = None) -> None:
    """Refuse a new run when the tenant's token quota for the month, or a tenant or agent budget of its current
    period, is used up: its spend reached the limit, or it refused a call this period (the limit was not raised
    since). Raises TokenQuotaExhausted or BudgetExhausted (429, with the seconds until the period resets)."""
    now = now or timezone.now()
    month = period_start(Budget.Period.MONTH, now)
    quota = plan_for(tenant.sla_tier).tokens_per_month
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT used_tokens, exhausted_at IS NOT NULL FROM public.billing_tokenquotausage "
            "WHERE tenant_id = %s AND period_start = %s", [tenant.id, month])
        row = cursor.fetchone()
        if row is not None and (row[0] >= quota or row[1]):
            reset = period_end(Budget.Period.MONTH, now)
            assert reset is not None
            raise TokenQuotaExhausted(
                f"The tenant's token quota for this month ({_tokens(quota)} tokens on the {tenant.sla_tier} plan) is "
                f"used up: {_tokens(row[0])} tokens used. Runs start again when it resets at "
                f"{reset.isoformat()}; or move to a larger plan.",
                extra={"retry_after": _seconds_until(reset, now), "quota_tokens": quota, "used_tokens": row[0]})
        cursor.execute(
            "SELECT b.id, b.scope, b.agent_name, b.period, b.limit_usd, s.spent_usd, s.period_start, "
            "s.exhausted_at IS NOT NULL "
            "FROM public.billing_budget b JOIN public.billing_budgetspend s ON s.budget_id = b.id "
            "WHERE b.tenant_id = %s AND b.is_enabled AND (b.scope = 'tenant' OR b.agent_id = %s) "
            "AND (s.spent_usd >= b.limit_usd OR s.exhausted_at IS NOT NULL) ORDER BY b.id",
            [tenant.id, agent_id])
        for budget_id, scope, agent_name, period, limit, spent, started, refused in cursor.fetchall():
            if started != period_start(period, now):
                continue  # a past period's
            reset = period_end(period, now)
            retry_after = _seconds_until(reset, now) if reset is not None else TOTAL_RETRY_AFTER_SECONDS
            when = f" or wait until the period resets at {reset.isoformat()}" if reset is not None \
                else "; a total budget does not reset"
            raise BudgetExhausted(
                f"The {_budget_name(scope, agent_name, period)} of {_usd(limit)} is used up for this period "
                f"({_usd(spent)} spent{', and a call that did not fit was refused' if refused else ''}). "
                f"Raise it (PATCH /v1/budgets/"
                f"{budget_id}){when}.",
                extra={"retry_after": retry_after, "budget_id": str(budget_id), "limit_usd": str(limit),
                       "spent_usd": str(spent)})


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, int((moment - now).total_seconds() + 0.999))


def _budget_name(scope: str, agent_name: str, period: str) -> str:
    adjective = {"day": "daily", "month": "monthly", "total": "total"}[period]
    return f"agent {agent_name!r}'s {adjective} budget" if scope == Budget.Scope.AGENT \
        else f"tenant's {adjective} budget"


# --- enforcement ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpendHold:
    """A reservation made for one LLM call: settle it (or release it) after the call."""

    tenant_id: UUID
    idempotency_key: str
    amount_usd: Decimal
    tokens: int
    budgeted: bool = True  # held against budgets too (its settlement may cross their alert thresholds)


class _Refused(Exception):
    def __init__(self, kind: str, detail: dict[str, Any]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.detail = detail


def spend_reserve(*, tenant_id: UUID, sla_tier: str, run_id: UUID, agent_id: UUID | None, idempotency_key: str,
                  amount_usd: Decimal, tokens: int, run_limit_usd: Decimal | None = None,
                  run_spent_usd: Decimal = Decimal(0), hold_seconds: float = 600.0, call: str = "",
                  now: datetime | None = None) -> SpendHold:
    """Hold one LLM call's worst case (``amount_usd``, ``tokens``) against every budget that applies, the
    tenant's monthly token quota and the run's limit (the smaller of ``run_limit_usd``, the spec's, and the
    run's budget_usd). Atomic: every hold or none. A hold left by an earlier attempt of the same call (same
    idempotency key: its worker died) is released first. ``call`` describes the worst case for the refusal's
    message. Raises BudgetExceeded naming the budget, its limit, its spend and the call's worst case."""
    now = now or timezone.now()
    quota = plan_for(sla_tier).tokens_per_month
    if run_limit_usd is None and not connection.in_atomic_block:
        held = _reserve_unbudgeted(tenant_id=tenant_id, run_id=run_id, agent_id=agent_id, key=idempotency_key,
                                   amount=amount_usd, tokens=tokens, run_spent=run_spent_usd, quota=quota,
                                   hold_seconds=hold_seconds, now=now)
        if held is not None:
            return held
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                return _reserve(tenant_id=tenant_id, run_id=run_id, agent_id=agent_id, key=idempotency_key,
                                amount=amount_usd, tokens=tokens, run_limit=run_limit_usd,
                                run_spent=run_spent_usd, quota=quota, hold_seconds=hold_seconds, now=now)
        except _Refused as refused:
            # holds of crashed workers may be all that stands in the way: release them, then try once more
            if attempt == 1 and spend_reservations_expire(tenant_id=tenant_id, now=now) > 0:
                continue
            raise _refusal(refused, tenant_id=tenant_id, sla_tier=sla_tier, quota=quota, amount=amount_usd,
                           tokens=tokens, call=call, now=now) from None
    raise AssertionError("unreachable")


# Holds and settlements commit without waiting for the WAL flush (a commit's fsync would add milliseconds to
# every LLM call, twice): a database crash may lose the last fraction of a second of them (a hold lost with its
# call's row; a settlement lost, so that call's cost is not counted against the budgets; the effect journal
# keeps it). Never a lost update or a torn row: only the durability of the newest few commits (common.commits).


# The common hold in one statement, its own transaction: when no budget applies to the call, the run has no limit
# (neither the spec's nor its own budget_usd) and no earlier attempt of the call left a hold, only the quota can
# refuse it, and a refused quota writes nothing (the run's and the reservation's inserts need its row). Otherwise
# the statement writes nothing either, and the general path below (a transaction) decides. The same rows and
# lock order (quota, run) as the general path.
_RESERVE_UNBUDGETED = (
    "WITH go AS (SELECT 1 WHERE " + ASYNC_COMMIT + " = 'off' "
    "AND NOT EXISTS (SELECT 1 FROM public.billing_budget b WHERE b.tenant_id = %(t)s AND b.is_enabled "
    "AND (b.scope = 'tenant' OR b.agent_id = %(a)s)) "
    "AND NOT EXISTS (SELECT 1 FROM public.billing_spendreservation WHERE tenant_id = %(t)s "
    "AND idempotency_key = %(k)s) "
    "AND NOT EXISTS (SELECT 1 FROM public.billing_runspend WHERE tenant_id = %(t)s AND run_id = %(r)s "
    "AND limit_usd IS NOT NULL)), "
    "quota AS (INSERT INTO public.billing_tokenquotausage (tenant_id, period_start, used_tokens, reserved_tokens, "
    "updated_at) SELECT %(t)s, %(m)s, 0, %(n)s, now() FROM go WHERE %(n)s <= %(q)s "
    "ON CONFLICT (tenant_id, period_start) DO UPDATE SET "
    "reserved_tokens = billing_tokenquotausage.reserved_tokens + EXCLUDED.reserved_tokens, updated_at = now() "
    "WHERE billing_tokenquotausage.used_tokens + billing_tokenquotausage.reserved_tokens "
    "+ EXCLUDED.reserved_tokens <= %(q)s RETURNING id), "
    "run AS (INSERT INTO public.billing_runspend (tenant_id, run_id, limit_usd, spent_usd, reserved_usd, created_at) "
    "SELECT %(t)s, %(r)s, NULL, %(base)s, %(w)s, now() WHERE EXISTS (SELECT 1 FROM quota) "
    "ON CONFLICT (tenant_id, run_id) DO UPDATE SET reserved_usd = billing_runspend.reserved_usd "
    "+ EXCLUDED.reserved_usd RETURNING id), "
    "held AS (INSERT INTO public.billing_spendreservation (tenant_id, idempotency_key, run_id, amount_usd, tokens, "
    "budget_spend_ids, token_usage_id, run_spend_id, is_released, expires_at, created_at) "
    "SELECT %(t)s, %(k)s, %(r)s, %(w)s, %(n)s, '[]'::jsonb, quota.id, run.id, false, "
    "%(now)s + make_interval(secs => %(hold)s), now() FROM quota, run RETURNING id) "
    "SELECT (SELECT id FROM held)")


def _reserve_unbudgeted(*, tenant_id: UUID, run_id: UUID, agent_id: UUID | None, key: str, amount: Decimal,
                        tokens: int, run_spent: Decimal, quota: int, hold_seconds: float,
                        now: datetime) -> SpendHold | None:
    """The hold in one statement when only the quota applies (see above); None when it did not apply or the quota
    refused (nothing was written: the general path decides, and explains a refusal)."""
    with connection.cursor() as cursor:
        cursor.execute(_RESERVE_UNBUDGETED, {
            "t": tenant_id, "a": agent_id, "k": key, "r": run_id, "m": period_start(Budget.Period.MONTH, now),
            "n": tokens, "q": quota, "base": run_spent, "w": amount, "now": now, "hold": hold_seconds})
        reservation = cursor.fetchone()[0]
    if reservation is None:
        return None
    return SpendHold(tenant_id=tenant_id, idempotency_key=key, amount_usd=amount, tokens=tokens, budgeted=False)


def _reserve(*, tenant_id: UUID, run_id: UUID, agent_id: UUID | None, key: str, amount: Decimal, tokens: int,
             run_limit: Decimal | None, run_spent: Decimal, quota: int, hold_seconds: float,
             now: datetime) -> SpendHold:
    with connection.cursor() as cursor:
        # the applicable budgets, and an earlier attempt's hold of this call taken away (one round trip)
        cursor.execute(
            "WITH stale AS (DELETE FROM public.billing_spendreservation WHERE tenant_id = %(t)s "
            "AND idempotency_key = %(k)s RETURNING amount_usd, tokens, budget_spend_ids, token_usage_id, "
            "run_spend_id, is_released) "
            f"SELECT {ASYNC_COMMIT}, (SELECT coalesce(json_agg(json_build_object('id', b.id, 'period', b.period, "
            "'limit', b.limit_usd::text) ORDER BY b.id), '[]'::json) FROM public.billing_budget b "
            "WHERE b.tenant_id = %(t)s AND b.is_enabled AND (b.scope = 'tenant' OR b.agent_id = %(a)s)), "
            "(SELECT json_build_object('amount', amount_usd::text, 'tokens', tokens, 'budgets', budget_spend_ids, "
            "'quota', token_usage_id, 'run', run_spend_id, 'released', is_released) FROM stale)",
            {"t": tenant_id, "k": key, "a": agent_id})
        _, budgets_json, stale_json = cursor.fetchone()
        budgets = _json(budgets_json)
        if stale_json is not None:
            stale = _json(stale_json)
            if not stale["released"]:
                _release_holds(cursor, budget_spend_ids=stale["budgets"], token_usage_id=stale["quota"],
                               run_spend_id=stale["run"], amount=Decimal(stale["amount"]), tokens=stale["tokens"])
        spend_ids: list[int] = []
        if budgets:
            ids = [b["id"] for b in budgets]
            cursor.execute(
                "INSERT INTO public.billing_budgetspend (budget_id, period_start, spent_usd, reserved_usd, updated_at) "
                "SELECT t.b, t.p, 0, %(w)s, now() FROM unnest(%(ids)s::uuid[], %(periods)s::timestamptz[], "
                "%(limits)s::numeric[]) AS t(b, p, l) WHERE %(w)s <= t.l ORDER BY t.b "
                "ON CONFLICT (budget_id, period_start) DO UPDATE SET "
                "reserved_usd = billing_budgetspend.reserved_usd + EXCLUDED.reserved_usd, updated_at = now() "
                "WHERE billing_budgetspend.spent_usd + billing_budgetspend.reserved_usd + EXCLUDED.reserved_usd "
                "<= (SELECT limit_usd FROM public.billing_budget WHERE id = billing_budgetspend.budget_id) "
                "RETURNING id, budget_id",
                {"w": amount, "ids": ids, "periods": [period_start(b["period"], now) for b in budgets],
                 "limits": [Decimal(b["limit"]) for b in budgets]})
            held = {str(budget_id): spend_id for spend_id, budget_id in cursor.fetchall()}
            refused = [b for b in budgets if b["id"] not in held]
            if refused:
                raise _Refused("budget", refused[0])
            spend_ids = [held[b["id"]] for b in budgets]
        month = period_start(Budget.Period.MONTH, now)
        # the token quota's hold, the run's and the reservation in one statement; the quota's row is locked before
        # the run's (the run's insert reads the quota's result first), the lock order of every statement here
        cursor.execute(
            "WITH quota AS (INSERT INTO public.billing_tokenquotausage (tenant_id, period_start, used_tokens, "
            "reserved_tokens, updated_at) SELECT %(t)s, %(m)s, 0, %(n)s, now() WHERE %(n)s <= %(q)s "
            "ON CONFLICT (tenant_id, period_start) DO UPDATE SET "
            "reserved_tokens = billing_tokenquotausage.reserved_tokens + EXCLUDED.reserved_tokens, updated_at = now() "
            "WHERE billing_tokenquotausage.used_tokens + billing_tokenquotausage.reserved_tokens "
            "+ EXCLUDED.reserved_tokens <= %(q)s RETURNING id), "
            "run AS (INSERT INTO public.billing_runspend (tenant_id, run_id, limit_usd, spent_usd, reserved_usd, "
            "created_at) SELECT %(t)s, %(r)s, NULL, %(base)s, %(w)s, now() "
            "WHERE EXISTS (SELECT 1 FROM quota) AND (%(lim)s::numeric IS NULL OR %(base)s + %(w)s <= %(lim)s::numeric) "
            "ON CONFLICT (tenant_id, run_id) DO UPDATE SET reserved_usd = billing_runspend.reserved_usd "
            "+ EXCLUDED.reserved_usd WHERE least(billing_runspend.limit_usd, %(lim)s::numeric) IS NULL "
            "OR billing_runspend.spent_usd + billing_runspend.reserved_usd + EXCLUDED.reserved_usd "
            "<= least(billing_runspend.limit_usd, %(lim)s::numeric) RETURNING id), "
            "held AS (INSERT INTO public.billing_spendreservation (tenant_id, idempotency_key, run_id, amount_usd, "
            "tokens, budget_spend_ids, token_usage_id, run_spend_id, is_released, expires_at, created_at) "
            "SELECT %(t)s, %(k)s, %(r)s, %(w)s, %(n)s, %(ids)s::jsonb, quota.id, run.id, false, "
            "%(now)s + make_interval(secs => %(hold)s), now() FROM quota, run RETURNING id) "
            "SELECT (SELECT id FROM quota), (SELECT id FROM held)",
            {"t": tenant_id, "m": month, "n": tokens, "q": quota, "r": run_id, "base": run_spent, "w": amount,
             "lim": run_limit, "k": key, "ids": json.dumps(spend_ids), "now": now, "hold": hold_seconds})
        quota_held, reservation = cursor.fetchone()
        if quota_held is None:
            raise _Refused("quota", {"period_start": month})
        if reservation is None:
            raise _Refused("run", {"run_id": run_id, "spec_limit": run_limit})
    return SpendHold(tenant_id=tenant_id, idempotency_key=key, amount_usd=amount, tokens=tokens,
                     budgeted=bool(spend_ids))


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _refusal(refused: _Refused, *, tenant_id: UUID, sla_tier: str, quota: int, amount: Decimal, tokens: int,
             call: str, now: datetime) -> BudgetExceeded:
    """The error naming what refused the call, its limit and spend, the call's worst case and what to do; the
    refusing budget period (or quota month) is marked exhausted, so new runs are refused until it resets."""
    worst = f"this call may cost up to {_usd(amount)}" + (f" ({call})" if call else "")
    with transaction.atomic(), connection.cursor() as cursor:
        budget = Budget.objects.filter(id=refused.detail["id"]).first() if refused.kind == "budget" else None
        if refused.kind == "budget" and budget is None:  # deleted meanwhile: say so rather than fail the step
            return BudgetExceeded(f"A budget was deleted while this call was held against it; {worst}. The call "
                                  "was not made. Retry the run.")
        if budget is not None:
            started = period_start(budget.period, now)
            cursor.execute(
                "INSERT INTO public.billing_budgetspend (budget_id, period_start, spent_usd, reserved_usd, "
                "exhausted_at, updated_at) VALUES (%s, %s, 0, 0, now(), now()) ON CONFLICT (budget_id, period_start) "
                "DO UPDATE SET exhausted_at = coalesce(billing_budgetspend.exhausted_at, now()) "
                "RETURNING spent_usd, reserved_usd", [budget.id, started])
            spent, reserved = cursor.fetchone()
            reset = period_end(budget.period, now)
            when = f" or wait until the period resets at {reset.isoformat()}" if reset else \
                "; a total budget does not reset"
            return BudgetExceeded(
                f"The {_budget_name(budget.scope, budget.agent_name, budget.period)} of {_usd(budget.limit_usd)} "
                f"would be exceeded: {_usd(spent)} spent and {_usd(reserved)} held by calls in flight this period; "
                f"{worst}. The call was not made. Raise the budget (PATCH /v1/budgets/{budget.id}){when}.",
                extra={"budget_id": str(budget.id), "limit_usd": str(budget.limit_usd), "spent_usd": str(spent),
                       "reserved_usd": str(reserved), "worst_case_usd": str(amount)})
        if refused.kind == "quota":
            cursor.execute(
                "INSERT INTO public.billing_tokenquotausage (tenant_id, period_start, used_tokens, reserved_tokens, "
                "exhausted_at, updated_at) VALUES (%s, %s, 0, 0, now(), now()) ON CONFLICT (tenant_id, period_start) "
                "DO UPDATE SET exhausted_at = coalesce(billing_tokenquotausage.exhausted_at, now()) "
                "RETURNING used_tokens, reserved_tokens", [tenant_id, refused.detail["period_start"]])
            used, reserved = cursor.fetchone()
            reset = period_end(Budget.Period.MONTH, now)
            assert reset is not None
            return BudgetExceeded(
                f"The tenant's monthly token quota of {_tokens(quota)} tokens ({sla_tier} plan) would be exceeded: "
                f"{_tokens(used)} used and {_tokens(reserved)} held by calls in flight; this call may use up to "
                f"{_tokens(tokens)} tokens" + (f" ({call})" if call else "") + ". The call was not made. Wait "
                f"until the quota resets at {reset.isoformat()} or move to a larger plan.",
                extra={"quota_tokens": quota, "used_tokens": used, "reserved_tokens": reserved,
                       "worst_case_tokens": tokens})
        cursor.execute("SELECT limit_usd, spent_usd, reserved_usd FROM public.billing_runspend "
                       "WHERE tenant_id = %s AND run_id = %s", [tenant_id, refused.detail["run_id"]])
        row = cursor.fetchone()
        own, spent, reserved = row if row is not None else (None, Decimal(0), Decimal(0))
        spec_limit = refused.detail["spec_limit"]
        limits = [(value, name) for value, name in ((spec_limit, "the agent's limits.max_cost_usd"),
                                                    (own, "the run's budget_usd")) if value is not None]
        limit, name = min(limits, key=lambda pair: pair[0])
        return BudgetExceeded(
            f"The run's limit of {_usd(limit)} ({name}) would be exceeded: {_usd(spent)} spent and "
            f"{_usd(reserved)} held by calls in flight; {worst}. The call was not made. Raise "
            f"{'limits.max_cost_usd in the agent' + chr(39) + 's spec' if name.startswith('the agent') else 'budget_usd'}"
            " and start the run again.",
            extra={"limit_usd": str(limit), "spent_usd": str(spent), "reserved_usd": str(reserved),
                   "worst_case_usd": str(amount)})


def _release_holds(cursor: Any, *, budget_spend_ids: Sequence[int], token_usage_id: int | None,
                   run_spend_id: int | None, amount: Decimal, tokens: int) -> None:
    if budget_spend_ids:
        cursor.execute(
            "UPDATE public.billing_budgetspend SET reserved_usd = greatest(reserved_usd - %s, 0), updated_at = now() "
            "WHERE id IN (SELECT id FROM public.billing_budgetspend WHERE id = ANY(%s) ORDER BY budget_id "
            "FOR UPDATE)", [amount, list(budget_spend_ids)])
    if token_usage_id is not None:
        cursor.execute("UPDATE public.billing_tokenquotausage SET reserved_tokens = greatest(reserved_tokens - %s, 0), "
                       "updated_at = now() WHERE id = %s", [tokens, token_usage_id])
    if run_spend_id is not None:
        cursor.execute("UPDATE public.billing_runspend SET reserved_usd = greatest(reserved_usd - %s, 0) "
                       "WHERE id = %s", [amount, run_spend_id])


@dataclass(frozen=True)
class AlertRaised:
    budget_id: UUID
    threshold: int
    spent_usd: Decimal
    limit_usd: Decimal
    period_start: datetime


# A hold held against no budget (the quota's and the run's only) settles in one statement, its own transaction:
# no budget threshold can be crossed, so nothing else must commit with it. The same rows, changes and lock order
# (the reservation, the quota, the run) as the general path below, which a hold with budgets takes.
_SETTLE_UNBUDGETED = (
    "WITH held AS (DELETE FROM public.billing_spendreservation WHERE tenant_id = %(t)s AND idempotency_key = %(k)s "
    f"AND budget_spend_ids = '[]'::jsonb AND {ASYNC_COMMIT} = 'off' "
    "RETURNING CASE WHEN is_released THEN 0 ELSE amount_usd END AS freed, "
    "CASE WHEN is_released THEN 0 ELSE tokens END AS freed_tokens, token_usage_id, run_spend_id), "
    "quota AS (UPDATE public.billing_tokenquotausage q SET used_tokens = q.used_tokens + %(n)s, "
    "reserved_tokens = greatest(q.reserved_tokens - held.freed_tokens, 0), updated_at = now() FROM held "
    "WHERE q.id = held.token_usage_id RETURNING q.id), "
    "run AS (UPDATE public.billing_runspend r SET spent_usd = r.spent_usd + %(c)s, "
    "reserved_usd = greatest(r.reserved_usd - held.freed, 0) FROM held "
    "WHERE r.id = held.run_spend_id AND (SELECT count(*) FROM quota) >= 0 RETURNING r.id) "
    "SELECT count(*) FROM held")


def spend_settle(*, tenant: Any, idempotency_key: str, cost_usd: Decimal, tokens: int,
                 budgeted: bool = True) -> list[AlertRaised]:
    """Count an LLM call's actual cost and tokens against what its hold named, and free the hold (a call that
    failed settles 0). Budget thresholds its spend crossed are alerted once each (recorded, audit-logged,
    logged). Idempotent: a second settlement of the same call finds no hold and changes nothing.
    ``budgeted=False`` (the hold said it held no budget): one statement, unless the hold turns out to have
    budgets after all (a later attempt of the call held it again), which then settles the general way."""
    if not budgeted and not connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute(_SETTLE_UNBUDGETED, {"t": tenant.id, "k": idempotency_key, "n": tokens, "c": cost_usd})
            if cursor.fetchone()[0]:
                return []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM public.billing_spendreservation WHERE tenant_id = %s AND idempotency_key = %s "
            f"AND {ASYNC_COMMIT} = 'off' "
            "RETURNING amount_usd, tokens, budget_spend_ids, token_usage_id, run_spend_id, is_released",
            [tenant.id, idempotency_key])
        row = cursor.fetchone()
        if row is None:
            return []
        amount, held_tokens, spend_ids, token_usage_id, run_spend_id, is_released = row
        spend_ids = _json(spend_ids)
        freed, freed_tokens = (Decimal(0), 0) if is_released else (amount, held_tokens)
        crossed: list[AlertRaised] = []
        if spend_ids:
            cursor.execute(
                "UPDATE public.billing_budgetspend s SET spent_usd = s.spent_usd + %(c)s, "
                "reserved_usd = greatest(s.reserved_usd - %(f)s, 0), updated_at = now() FROM public.billing_budget b "
                "WHERE s.id IN (SELECT id FROM public.billing_budgetspend WHERE id = ANY(%(ids)s) ORDER BY budget_id "
                "FOR UPDATE) AND b.id = s.budget_id "
                "RETURNING s.budget_id, s.period_start, s.spent_usd, b.limit_usd, b.alert_thresholds",
                {"c": cost_usd, "f": freed, "ids": list(spend_ids)})
            for budget_id, started, spent, limit, thresholds in cursor.fetchall():
                before = spent - cost_usd
                crossed += [AlertRaised(budget_id=budget_id, threshold=t, spent_usd=spent, limit_usd=limit,
                                        period_start=started)
                            for t in _json(thresholds) if before < limit * t / 100 <= spent and cost_usd > 0]
        # the quota's row before the run's (the run's update reads the quota's result first)
        cursor.execute(
            "WITH quota AS (UPDATE public.billing_tokenquotausage SET used_tokens = used_tokens + %(n)s, "
            "reserved_tokens = greatest(reserved_tokens - %(fn)s, 0), updated_at = now() WHERE id = %(q)s "
            "RETURNING id) UPDATE public.billing_runspend SET spent_usd = spent_usd + %(c)s, "
            "reserved_usd = greatest(reserved_usd - %(f)s, 0) WHERE id = %(r)s "
            "AND (SELECT count(*) FROM quota) >= 0",
            {"n": tokens, "fn": freed_tokens, "q": token_usage_id, "c": cost_usd, "f": freed, "r": run_spend_id})
        if crossed:
            cursor.execute("SET LOCAL synchronous_commit TO on")  # alerts and their audit events are kept for sure
        return _alerts_record(tenant=tenant, crossed=crossed)


def spend_release(*, tenant: Any, idempotency_key: str, budgeted: bool = True) -> None:
    """Free a hold whose call was not made or failed without a reply (nothing spent). Idempotent."""
    spend_settle(tenant=tenant, idempotency_key=idempotency_key, cost_usd=Decimal(0), tokens=0, budgeted=budgeted)


def _alerts_record(*, tenant: Any, crossed: Sequence[AlertRaised]) -> list[AlertRaised]:
    """Record each crossed threshold once (the unique constraint decides between racing settlements), and
    audit-log and log the ones this call recorded."""
    raised: list[AlertRaised] = []
    for alert in crossed:
        created = BudgetAlert.objects.bulk_create(
            [BudgetAlert(tenant_id=tenant.id, budget_id=alert.budget_id, period_start=alert.period_start,
                         threshold=alert.threshold, spent_usd=alert.spent_usd, limit_usd=alert.limit_usd)],
            ignore_conflicts=True)
        # with ignore_conflicts the row comes back either way: only a row now readable by its values is ours
        if not BudgetAlert.objects.filter(id=created[0].id).exists():
            continue
        raised.append(alert)
        data = {"threshold": alert.threshold, "spent_usd": str(alert.spent_usd), "limit_usd": str(alert.limit_usd),
                "period_start": alert.period_start.isoformat()}
        audit_event_record(tenant=tenant, actor=SYSTEM, action="budget.alert", target_type="budget",
                           target_id=str(alert.budget_id), data=data)
        logger.warning("Budget %s of tenant %s crossed %s%% of its limit: %s of %s spent this period",
                       alert.budget_id, tenant.schema_name, alert.threshold, alert.spent_usd, alert.limit_usd)
    if raised:
        transaction.on_commit(partial(_alerts_email_send, tenant=tenant, alerts=tuple(raised)))
    return raised


def _alerts_email_send(*, tenant: Any, alerts: Sequence[AlertRaised]) -> None:
    """Tell the tenant's owners and finance members (after the alerts committed; a mail failure is logged)."""
    from control_plane.identity import selectors as identity_selectors
    from tenants import roles

    recipients = sorted({m.user.email for m in identity_selectors.membership_list(tenant=tenant)
                         if m.role in (roles.OWNER, roles.FINANCE) and m.user.email})
    if not recipients:
        return
    budgets = {b.id: b for b in Budget.objects.filter(id__in=[a.budget_id for a in alerts])}
    lines = []
    for alert in alerts:
        budget = budgets.get(alert.budget_id)
        name = _budget_name(budget.scope, budget.agent_name, budget.period) if budget else "budget"
        lines.append(f"- The {name} reached {alert.threshold}% of its limit: {_usd(alert.spent_usd)} of "
                     f"{_usd(alert.limit_usd)} spent this period (budget {alert.budget_id}).")
    try:
        send_mail(subject=f"Agentplane budget alert for {tenant.name}",
                  message="\n".join(lines) + "\n\nSee GET /v1/budgets and /v1/budget-alerts; a budget's limit is "
                  "changed with PATCH /v1/budgets/{id}. At 100% new LLM calls that do not fit are refused.",
                  from_email=None, recipient_list=recipients)
    except (OSError, BadHeaderError):
        logger.exception("Budget alert email to %d members of tenant %s failed", len(recipients), tenant.schema_name)


def spend_reservations_expire(*, tenant_id: UUID | None = None, now: datetime | None = None,
                              batch: int = 500) -> int:
    """Release holds past their expiry (their worker died mid-call): what they held is free again; a late
    settlement still counts its spend. Holds released over a day ago are deleted. Returns how many were
    released. Idempotent; safe to run concurrently (skips holds being settled)."""
    now = now or timezone.now()
    tenant_filter = "AND tenant_id = %(t)s" if tenant_id is not None else ""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE public.billing_spendreservation SET is_released = true WHERE id IN ("
            "SELECT id FROM public.billing_spendreservation WHERE NOT is_released AND expires_at < %(now)s "
            f"{tenant_filter} ORDER BY id LIMIT %(batch)s FOR UPDATE SKIP LOCKED) "
            "RETURNING amount_usd, tokens, budget_spend_ids, token_usage_id, run_spend_id",
            {"now": now, "t": tenant_id, "batch": batch})
        released = cursor.fetchall()
        budget_amounts: dict[int, Decimal] = {}
        token_amounts: dict[int, int] = {}
        run_amounts: dict[int, Decimal] = {}
        for amount, tokens, spend_ids, token_usage_id, run_spend_id in released:
            for spend_id in _json(spend_ids):
                budget_amounts[spend_id] = budget_amounts.get(spend_id, Decimal(0)) + amount
            if token_usage_id is not None:
                token_amounts[token_usage_id] = token_amounts.get(token_usage_id, 0) + tokens
            if run_spend_id is not None:
                run_amounts[run_spend_id] = run_amounts.get(run_spend_id, Decimal(0)) + amount
        # the same lock order as reservations: budget periods by budget id, then quotas, then runs
        if budget_amounts:
            cursor.execute("SELECT id FROM public.billing_budgetspend WHERE id = ANY(%s) ORDER BY budget_id "
                           "FOR UPDATE", [list(budget_amounts)])
            for spend_id in [row[0] for row in cursor.fetchall()]:
                cursor.execute("UPDATE public.billing_budgetspend SET reserved_usd = greatest(reserved_usd - %s, 0), "
                               "updated_at = now() WHERE id = %s", [budget_amounts[spend_id], spend_id])
        for usage_id in sorted(token_amounts):
            cursor.execute("UPDATE public.billing_tokenquotausage SET reserved_tokens = greatest(reserved_tokens - %s, "
                           "0), updated_at = now() WHERE id = %s", [token_amounts[usage_id], usage_id])
        for run_spend_id in sorted(run_amounts):
            cursor.execute("UPDATE public.billing_runspend SET reserved_usd = greatest(reserved_usd - %s, 0) "
                           "WHERE id = %s", [run_amounts[run_spend_id], run_spend_id])
        cursor.execute(f"DELETE FROM public.billing_spendreservation WHERE is_released {tenant_filter} "
                       "AND expires_at < %(old)s", {"t": tenant_id, "old": now - timedelta(days=1)})
    if released:
        logger.warning("Released %d spend holds past their expiry (their workers stopped mid-call)", len(released))
    return len(released)
