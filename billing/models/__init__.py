"""Billing's models, one module per topic (all in the public schema: billing is a shared app)."""

from billing.models.metering import UsageCollection, UsageRecord, UsageRollup
from billing.models.stripe import BillingAccount, Invoice, StripeWebhookEvent, UsageReport

__all__ = ["BillingAccount", "Invoice", "StripeWebhookEvent", "UsageCollection", "UsageRecord", "UsageReport",
           "UsageRollup"]
