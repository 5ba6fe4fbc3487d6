"""Typed errors of the billing context (metering, budgets, quotas, plans, Stripe)."""

from __future__ import annotations

from common.errors import AppError


class BillingError(AppError):
    code = "billing_error"
    http_status = 400
