"""Billing's models, one module per topic (all in the public schema: billing is a shared app)."""

from billing.models.budgets import Budget, BudgetAlert, BudgetSpend, RunSpend, SpendReservation, TokenQuotaUsage
from billing.models.metering import UsageRecord, UsageRollup

__all__ = ["Budget", "BudgetAlert", "BudgetSpend", "RunSpend", "SpendReservation", "TokenQuotaUsage", "UsageRecord",
           "UsageRollup"]
