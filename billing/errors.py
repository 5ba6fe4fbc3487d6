"""Typed errors of the billing context (metering, budgets, quotas, plans, Stripe)."""

from __future__ import annotations

from common.errors import AppError


class BillingError(AppError):
    code = "billing_error"
    http_status = 400


class BudgetNotFound(AppError):
    code = "budget_not_found"
    http_status = 404
    title = "Not found"


class BudgetInvalid(AppError):
    code = "invalid"
    http_status = 400
    title = "Invalid input"


class BudgetConflict(AppError):
    code = "budget_exists"
    http_status = 409
    title = "Conflict with the current state"


class BudgetExceeded(AppError):
    """An LLM call's worst case does not fit in a budget, the run's limit or the token quota: the call is not
    made (the executor fails the run with this message)."""

    code = "budget_exceeded"
    http_status = 429
    title = "Budget exceeded"


class BudgetExhausted(AppError):
    """A new run is refused: a tenant or agent budget of the current period is used up (429, Retry-After until
    the period resets)."""

    code = "budget_exhausted"
    http_status = 429
    title = "Budget exhausted"


class TokenQuotaExhausted(AppError):
    code = "token_quota_exhausted"
    http_status = 429
    title = "Token quota exhausted"
