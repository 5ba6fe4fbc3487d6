"""Writes of the billing context, by topic. Import the package: ``from billing import services``."""

from billing.services.metering import UsageCollected, usage_collect, usage_rollup, usage_rollup_recent

__all__ = ["UsageCollected", "usage_collect", "usage_rollup", "usage_rollup_recent"]
