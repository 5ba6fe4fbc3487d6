"""Typed errors of the billing context (metering, budgets, quotas, plans, Stripe)."""

from __future__ import annotations

from common.errors import AppError


class BillingError(AppError):
    code = "billing_error"
    http_status = 400


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
