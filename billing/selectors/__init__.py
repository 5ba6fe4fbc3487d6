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
from billing.selectors.finance import (
    FINANCE_DIMENSIONS,
    METRIC_COLUMNS,
    SESSION_COLUMNS,
    FinanceReport,
    PlanPriceRevenue,
    RevenueSource,
    finance_report,
    session_cost_list,
)
from billing.selectors.usage import (
    USAGE_DIMENSIONS,
    USAGE_EXPORT_COLUMNS,
    MonthAgainstPlan,
    usage_month_against_plan,
    usage_record_count,
    usage_record_export,
    usage_rollup_list,
    usage_totals,
)

__all__ = [
    "BudgetStatus", "FINANCE_DIMENSIONS", "FinanceReport", "METRIC_COLUMNS", "MonthAgainstPlan", "PlanPriceRevenue",
    "RevenueSource", "SESSION_COLUMNS", "TokenQuotaStatus", "USAGE_DIMENSIONS", "USAGE_EXPORT_COLUMNS",
    "budget_alert_list", "budget_get", "budget_list", "budget_status", "finance_report", "run_spend_get",
    "session_cost_list", "token_quota_get", "usage_month_against_plan", "usage_record_count", "usage_record_export",
    "usage_rollup_list", "usage_totals"
]
