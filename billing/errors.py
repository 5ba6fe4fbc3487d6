"""Typed errors of the billing context (metering, budgets, quotas, plans, Stripe)."""

from __future__ import annotations

from common.errors import AppError, TransientError


class BillingError(AppError):
    code = "billing_error"
    http_status = 400


class StripeUnavailable(TransientError):
    """Stripe did not answer in time, refused for a moment (429) or failed (5xx): retry with the same
    idempotency key, which makes the retry safe."""

    code = "stripe_unavailable"
    http_status = 503
    title = "Billing provider unavailable"


class StripeRejected(BillingError):
    """Stripe refused the request for good (invalid parameters, unknown customer, bad key): retrying the same
    request cannot succeed; the message says what Stripe said."""

    code = "stripe_rejected"
    http_status = 502
    title = "Billing provider refused the request"


class StripeNotConfigured(BillingError):
    code = "stripe_not_enabled"
    http_status = 404
    title = "Stripe billing is not enabled"


class WebhookSignatureInvalid(BillingError):
    code = "webhook_signature_invalid"
    http_status = 400
    title = "Webhook signature invalid"


class WebhookPayloadInvalid(BillingError):
    code = "webhook_payload_invalid"
    http_status = 400
    title = "Webhook payload invalid"


class BillingAccountNotFound(BillingError):
    code = "billing_account_not_found"
    http_status = 404
    title = "Not found"


class BudgetNotFound(AppError):
    code = "budget_not_found"
    http_status = 404
    title = "Not found"


class BillingAccountStateConflict(BillingError):
    code = "billing_account_state_conflict"
    http_status = 409
    title = "Conflict with the current state"
# --- Quotas and rate limits of the SLA tiers (billing/quotas.py, docs/quotas.md) ---------------------------

class RequestRateLimited(AppError):
    """The tenant's API requests went past its tier's rate (its token bucket is empty)."""

    code = "rate_limited"
    http_status = 429
    title = "Too many requests"
    bucket: object = None  # the tenant's bucket when refused (common.token_bucket.BucketResult)


class RunRateExceeded(AppError):
    """The tenant started more runs than its tier allows per minute."""

    code = "run_rate_exceeded"
    http_status = 429
    title = "Too many runs started"


class ConcurrentRunsExceeded(AppError):
    """The tenant has as many runs at once as its tier allows."""

    code = "concurrent_runs_exceeded"
    http_status = 429
    title = "Too many runs at once"
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
