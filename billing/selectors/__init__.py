"""Reads of the billing context, by topic. Import the package: ``from billing import selectors``."""

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
    "FINANCE_DIMENSIONS", "METRIC_COLUMNS", "SESSION_COLUMNS", "FinanceReport", "PlanPriceRevenue", "RevenueSource",
    "finance_report", "session_cost_list", "USAGE_DIMENSIONS", "USAGE_EXPORT_COLUMNS", "MonthAgainstPlan",
    "usage_month_against_plan", "usage_record_count", "usage_record_export", "usage_rollup_list", "usage_totals",
]
