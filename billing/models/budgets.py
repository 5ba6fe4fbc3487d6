"""Budgets (per tenant and per agent, in USD, per day, month or in total) and what counts against them.

Every LLM call first reserves its worst-case cost against each budget that applies (and its worst-case tokens
against the tenant's monthly token quota, and its cost against the run's own limit), with conditional updates
that never let spent + reserved pass a limit; after the call the actual cost is settled and the reservation
released. A reservation carries an expiry, so a crashed worker's hold lapses (billing/services/budgets.py).
"""

from __future__ import annotations

import uuid

from django.db import models

DEFAULT_ALERT_THRESHOLDS = [50, 80, 100]


def default_alert_thresholds() -> list[int]:
    return list(DEFAULT_ALERT_THRESHOLDS)


class Budget(models.Model):
    """A spending limit in USD of the whole tenant or of one agent, per UTC day, calendar month or in total."""

    class Scope(models.TextChoices):
        TENANT = "tenant"
        AGENT = "agent"

    class Period(models.TextChoices):
        DAY = "day"
        MONTH = "month"
        TOTAL = "total"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="budgets")
    scope = models.CharField(max_length=8, choices=Scope.choices)
    agent_id = models.UUIDField(null=True, blank=True)
    agent_name = models.CharField(max_length=200, blank=True, default="")
    period = models.CharField(max_length=8, choices=Period.choices)
    limit_usd = models.DecimalField(max_digits=16, decimal_places=8)
    alert_thresholds = models.JSONField(default=default_alert_thresholds)  # percents of the limit, ascending
    is_enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "scope", "agent_id", "period"], nulls_distinct=False,
                                    name="budget_one_per_scope_and_period"),
            models.CheckConstraint(condition=(models.Q(scope="tenant", agent_id__isnull=True)
                                              | models.Q(scope="agent", agent_id__isnull=False)),
                                   name="budget_agent_scope_names_an_agent"),
            models.CheckConstraint(condition=models.Q(limit_usd__gte=0), name="budget_limit_not_negative"),
        ]


class BudgetSpend(models.Model):
    """What one budget's period has spent (settled) and holds (reserved by calls in flight)."""

    id = models.BigAutoField(primary_key=True)
    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="spends")
    period_start = models.DateTimeField()
    spent_usd = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    reserved_usd = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    # set when the budget refused a call in this period: new runs are refused until the period ends or the limit
    # is raised (spent alone rarely reaches the limit: the last call's worst case does not fit first)
    exhausted_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["period_start", "id"]
        constraints = [models.UniqueConstraint(fields=["budget", "period_start"], name="budget_spend_one_per_period")]


class TokenQuotaUsage(models.Model):
    """A tenant's LLM tokens (input and output) in one calendar month against its plan's tokens_per_month."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="token_quota_usage")
    period_start = models.DateTimeField()
    used_tokens = models.BigIntegerField(default=0)
    reserved_tokens = models.BigIntegerField(default=0)
    exhausted_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["period_start", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "period_start"], name="token_quota_one_per_month")]


class RunSpend(models.Model):
    """One run's spend against its own limit: the spec's limits.max_cost_usd and the run's optional budget_usd
    (given at its start, kept here as ``limit_usd``); the smaller applies."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="run_spends")
    run_id = models.UUIDField()
    limit_usd = models.DecimalField(max_digits=16, decimal_places=8, null=True, blank=True)
    spent_usd = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    reserved_usd = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "run_id"], name="run_spend_one_per_run")]


class SpendReservation(models.Model):
    """The worst case of one LLM call in flight, held against budget periods, the token quota and its run.
    Keyed by the call's idempotency key (``{run_id}:{step}:{command key}``). Past ``expires_at`` a sweep releases
    it (``is_released``): its worker crashed; a late settlement still counts what was spent."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="spend_reservations")
    idempotency_key = models.CharField(max_length=300)
    run_id = models.UUIDField()
    amount_usd = models.DecimalField(max_digits=18, decimal_places=8)
    tokens = models.BigIntegerField()
    budget_spend_ids = models.JSONField(default=list)
    token_usage_id = models.BigIntegerField(null=True, blank=True)
    run_spend_id = models.BigIntegerField(null=True, blank=True)
    is_released = models.BooleanField(default=False)
    expires_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "idempotency_key"], name="spend_reservation_once")]


class BudgetAlert(models.Model):
    """A budget's settled spend crossed one of its thresholds in one period: recorded once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="budget_alerts")
    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField()  # percent of the limit
    spent_usd = models.DecimalField(max_digits=18, decimal_places=8)
    limit_usd = models.DecimalField(max_digits=16, decimal_places=8)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["budget", "period_start", "threshold"],
                                               name="budget_alert_once_per_threshold")]
