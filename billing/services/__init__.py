"""Writes of the billing context, by topic. Import the package: ``from billing import services``."""

from billing.errors import BudgetExceeded
from billing.services.budgets import (
    AlertRaised,
    SpendHold,
    budget_create,
    budget_delete,
    budget_update,
    run_admission_check,
    run_budget_set,
    spend_release,
    spend_reservations_expire,
    spend_reserve,
    spend_settle,
)
from billing.services.metering import (
    UsageCollected,
    usage_collect,
    usage_collect_and_roll_up,
    usage_rollup,
    usage_rollup_recent,
)

__all__ = [
    "AlertRaised", "BudgetExceeded", "SpendHold", "UsageCollected", "budget_create", "budget_delete",
    "budget_update", "run_admission_check", "run_budget_set", "spend_release", "spend_reservations_expire",
    "spend_reserve", "spend_settle", "usage_collect", "usage_collect_and_roll_up", "usage_rollup",
    "usage_rollup_recent"
]
