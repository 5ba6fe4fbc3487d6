from django.urls import path

from billing import budget_apis

urlpatterns = [
    path("budgets", budget_apis.BudgetListCreateApi.as_view(), name="budgets"),
    path("budgets/<uuid:budget_id>", budget_apis.BudgetDetailApi.as_view(), name="budget"),
    path("budget-alerts", budget_apis.BudgetAlertListApi.as_view(), name="budget-alerts"),
    path("quotas/tokens", budget_apis.TokenQuotaApi.as_view(), name="quota-tokens"),
]
