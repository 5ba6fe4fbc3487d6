"""Billing's models, one module per topic (all in the public schema: billing is a shared app)."""

from billing.models.metering import UsageCollection, UsageRecord, UsageRollup

__all__ = ["UsageCollection", "UsageRecord", "UsageRollup"]
