"""Billing's models, one module per topic (all in the public schema: billing is a shared app)."""

from billing.models.budgets import Budget, BudgetAlert, BudgetSpend, RunSpend, SpendReservation, TokenQuotaUsage
from billing.models.metering import UsageCollection, UsageRecord, UsageRollup
from billing.models.stripe import BillingAccount, Invoice, StripeWebhookEvent, UsageReport

__all__ = ["BillingAccount", "Budget", "BudgetAlert", "BudgetSpend", "Invoice", "RunSpend", "SpendReservation",
           "StripeWebhookEvent", "TokenQuotaUsage", "UsageCollection", "UsageRecord", "UsageReport", "UsageRollup"]
