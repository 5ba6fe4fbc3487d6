"""Stripe billing: each tenant's billing account (customer, subscription, payment state), the usage reported to
Stripe per hour, the webhook events processed, and the invoices Stripe told us about (revenue)."""

from __future__ import annotations

from django.db import models


class BillingAccount(models.Model):
    """A tenant's customer and subscription at Stripe, and whether it pays. ``status`` is ours: ``opening``
    until the customer and subscription exist, ``past_due`` from a failed payment until one succeeds (the tenant
    is suspended when ``grace_deadline`` passes), ``canceled`` once the subscription ends."""

    class Status(models.TextChoices):
        OPENING = "opening"
        ACTIVE = "active"
        PAST_DUE = "past_due"
        CANCELED = "canceled"

    id = models.BigAutoField(primary_key=True)
    tenant = models.OneToOneField("tenants.Tenant", on_delete=models.PROTECT, related_name="billing_account")
    tier = models.CharField(max_length=16)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPENING)
    stripe_customer_id = models.CharField(max_length=64, blank=True, default="")
    stripe_subscription_id = models.CharField(max_length=64, blank=True, default="")
    stripe_fee_item_id = models.CharField(max_length=64, blank=True, default="")
    stripe_usage_item_id = models.CharField(max_length=64, blank=True, default="")
    subscription_status = models.CharField(max_length=32, blank=True, default="")  # Stripe's, as last told
    past_due_since = models.DateTimeField(null=True, blank=True)
    grace_deadline = models.DateTimeField(null=True, blank=True)
    # Set when billing suspended the tenant: only then does a payment reactivate it (never an operator's suspension).
    is_suspended_for_nonpayment = models.BooleanField(default=False)
    tier_revision = models.PositiveIntegerField(default=0)  # tier changes so far: part of their idempotency keys
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["stripe_customer_id"], condition=~models.Q(stripe_customer_id=""),
                                    name="billing_account_one_per_customer"),
        ]
        indexes = [models.Index(fields=["status", "grace_deadline"])]


class UsageReport(models.Model):
    """One hour of a tenant's LLM tokens reported to Stripe as a meter event. Recorded as ``pending`` with its
    quantity before the request and ``reported`` after: a retry re-sends the same identifier, quantity and
    idempotency key, so Stripe counts it once whatever failed in between."""

    class Status(models.TextChoices):
        PENDING = "pending"
        REPORTED = "reported"
        FAILED = "failed"  # Stripe refused it for good (the error says why); not retried

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="usage_reports")
    hour = models.DateTimeField()
    quantity = models.PositiveBigIntegerField()
    event_name = models.CharField(max_length=100)
    stripe_customer_id = models.CharField(max_length=64)
    identifier = models.CharField(max_length=100)  # the meter event's identifier (Stripe dedupes on it)
    idempotency_key = models.CharField(max_length=200, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=1000, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    reported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["hour", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "hour"], name="usage_report_once_per_hour")]
        indexes = [models.Index(fields=["status", "hour"])]


class StripeWebhookEvent(models.Model):
    """A webhook event received from Stripe (signature verified); its id is unique, so a redelivery is ignored."""

    id = models.BigAutoField(primary_key=True)
    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, null=True, blank=True,
                               related_name="stripe_webhook_events")
    outcome = models.CharField(max_length=200, blank=True, default="")
    received_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["received_at", "id"]


class Invoice(models.Model):
    """A Stripe invoice of a tenant, as its latest webhook described it. Amounts in the currency's smallest unit."""

    id = models.BigAutoField(primary_key=True)
    stripe_invoice_id = models.CharField(max_length=100, unique=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="invoices")
    stripe_subscription_id = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(max_length=32)
    amount_due = models.BigIntegerField(default=0)
    amount_paid = models.BigIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "created_at"]), models.Index(fields=["paid_at"])]
