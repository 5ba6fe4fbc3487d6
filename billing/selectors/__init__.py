"""Reads of the billing context, by topic. Import the package: ``from billing import selectors``."""

from billing.selectors.budgets import (
    BudgetStatus,
    TokenQuotaStatus,
    budget_alert_list,
    budget_get,
    budget_list,
    budget_status,
    run_spend_get,
    token_quota_get,
)

__all__ = ["BudgetStatus", "TokenQuotaStatus", "budget_alert_list", "budget_get", "budget_list", "budget_status",
           "run_spend_get", "token_quota_get"]
