"""Stripe billing's writes: billing accounts (customer + subscription per tenant), tier changes, hourly usage
reports, webhook intake and the suspension of tenants that do not pay (docs/billing-stripe.md).

Every call to Stripe happens outside any transaction and carries an idempotency key derived from what it does
(``{tenant_id}:customer``, ``{tenant_id}:{hour}``, ...), so a retried task, a crash between Stripe's answer and
our commit, or a second run sends the same request again and Stripe answers it with the first response.
Settings are never read here: the gateway, the catalog of prices and the durations come as arguments
(billing/stripe_wiring.py builds them). ``now`` is an argument too, so tests control the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F

from billing import stripe_selectors as selectors
from billing.errors import (
    BillingAccountNotFound,
    BillingAccountStateConflict,
    StripeNotConfigured,
    StripeRejected,
)
from billing.models import BillingAccount, Invoice, StripeWebhookEvent, UsageReport
from billing.plans import TIERS
from billing.stripe_gateway import StripeGateway, StripeWebhookEvent as VerifiedEvent, invoice_from_json
from common.actors import Actor
from common.errors import InvalidInput
from control_plane.audit.services import audit_event_record
from tenants import selectors as tenant_selectors
from tenants import services as tenant_services

BILLING_ACTOR = Actor(kind="system", id="billing", label="Stripe billing")
NONPAYMENT_REASON = ("Suspended for non-payment: an invoice is unpaid past its grace period. Paying it in Stripe "
                     "reactivates the tenant.")
PAID_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded"})


@dataclass(frozen=True)
class StripeCatalog:
    """Each tier's prices at Stripe (monthly fee, metered tokens) and the meter's event name."""

    fee_prices: Mapping[str, str]
    usage_prices: Mapping[str, str]
    meter_event_name: str

    def prices_for(self, tier: str) -> tuple[str, str]:
        fee, usage = self.fee_prices.get(tier, ""), self.usage_prices.get(tier, "")
        if not fee or not usage:
            raise StripeNotConfigured(f"No Stripe prices are configured for tier {tier!r}; set "
                                      f"STRIPE_PRICE_{tier.upper()} and STRIPE_USAGE_PRICE_{tier.upper()}.")
        return fee, usage


def _audit_account(account: BillingAccount, *, actor: Actor, action: str, data: dict[str, Any]) -> None:
    audit_event_record(tenant=account.tenant, actor=actor, action=action, target_type="billing_account",
                       target_id=str(account.id), data=data)


# --- accounts --------------------------------------------------------------------------------------------

def billing_account_open(*, tenant: Any, gateway: StripeGateway, catalog: StripeCatalog,
                         actor: Actor) -> BillingAccount:
    """Give the tenant a Stripe customer and a subscription to its tier. Idempotent: each step that is done is
    skipped, and each Stripe request carries a key derived from the tenant, so a retried call (even after a crash
    between Stripe's answer and our commit) never creates a second customer or subscription.
    Raises StripeUnavailable (retry), StripeRejected, StripeNotConfigured, BillingAccountStateConflict."""
    account, _ = BillingAccount.objects.select_related("tenant").get_or_create(
        tenant=tenant, defaults={"tier": tenant.sla_tier})
    if account.status == BillingAccount.Status.CANCELED:
        raise BillingAccountStateConflict(f"The billing account of tenant {tenant.slug!r} is canceled; a canceled "
                                          "subscription is not reopened automatically.")
    if account.stripe_subscription_id:
        return account
    fee_price, usage_price = catalog.prices_for(account.tier)
    if not account.stripe_customer_id:
        customer = gateway.customer_create(tenant_id=str(tenant.id), name=tenant.name, slug=tenant.slug,
                                           idempotency_key=f"{tenant.id}:customer")
        BillingAccount.objects.filter(pk=account.pk, stripe_customer_id="").update(stripe_customer_id=customer.id)
        account.refresh_from_db()
    subscription = gateway.subscription_create(
        customer_id=account.stripe_customer_id, fee_price_id=fee_price, usage_price_id=usage_price,
        tier=account.tier, tenant_id=str(tenant.id),
        idempotency_key=f"{tenant.id}:subscription:{account.stripe_customer_id}")
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().select_related("tenant").get(pk=account.pk)
        if locked.stripe_subscription_id:  # a concurrent call finished first (Stripe answered both the same)
            return locked
        locked.stripe_subscription_id = subscription.id
        locked.stripe_fee_item_id = subscription.fee_item_id
        locked.stripe_usage_item_id = subscription.usage_item_id
        locked.subscription_status = subscription.status
        locked.status = BillingAccount.Status.ACTIVE
        locked.save()
        _audit_account(locked, actor=actor, action="billing.account_open",
                       data={"tier": locked.tier, "customer": locked.stripe_customer_id,
                             "subscription": subscription.id})
    return locked


def _account_for_update(*, tenant: Any) -> BillingAccount:
    try:
        return BillingAccount.objects.select_related("tenant").get(tenant=tenant)
    except BillingAccount.DoesNotExist:
        raise BillingAccountNotFound(f"Tenant {tenant.slug!r} has no billing account; open one first.") from None


def billing_account_tier_change(*, tenant: Any, tier: str, gateway: StripeGateway, catalog: StripeCatalog,
                                actor: Actor) -> BillingAccount:
    """Move the tenant's subscription to another tier's prices (prorated by Stripe) and the tenant to that tier.
    Idempotent: the same tier again changes nothing. Raises InvalidInput, BillingAccountNotFound,
    BillingAccountStateConflict, StripeUnavailable, StripeRejected, StripeNotConfigured."""
    if tier not in TIERS:
        raise InvalidInput(f"sla_tier {tier!r} is not one of {', '.join(TIERS)}.",
                           extra={"errors": {"sla_tier": [f"one of {', '.join(TIERS)}"]}})
    account = _account_for_update(tenant=tenant)
    if account.status not in (BillingAccount.Status.ACTIVE, BillingAccount.Status.PAST_DUE):
        raise BillingAccountStateConflict(f"The billing account of tenant {tenant.slug!r} is {account.status}; a "
                                          "tier change needs an active or past_due subscription.")
    if account.tier == tier:
        return account
    fee_price, usage_price = catalog.prices_for(tier)
    gateway.subscription_prices_change(
        subscription_id=account.stripe_subscription_id, fee_item_id=account.stripe_fee_item_id,
        fee_price_id=fee_price, usage_item_id=account.stripe_usage_item_id, usage_price_id=usage_price, tier=tier,
        idempotency_key=f"{tenant.id}:tier:{account.tier_revision + 1}:{tier}")
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().select_related("tenant").get(pk=account.pk)
        previous = locked.tier
        locked.tier = tier
        locked.tier_revision += 1
        locked.save(update_fields=["tier", "tier_revision", "updated_at"])
        tenant_services.tenant_tier_change(tenant=locked.tenant, sla_tier=tier, actor=actor)
        _audit_account(locked, actor=actor, action="billing.tier_change", data={"from": previous, "to": tier})
    return locked


def billing_account_cancel(*, tenant: Any, gateway: StripeGateway, actor: Actor) -> BillingAccount:
    """Cancel the tenant's subscription now. Idempotent. Raises BillingAccountNotFound, StripeUnavailable,
    StripeRejected."""
    account = _account_for_update(tenant=tenant)
    if account.status == BillingAccount.Status.CANCELED:
        return account
    if account.stripe_subscription_id:
        gateway.subscription_cancel(subscription_id=account.stripe_subscription_id,
                                    idempotency_key=f"{tenant.id}:cancel:{account.stripe_subscription_id}")
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().select_related("tenant").get(pk=account.pk)
        _account_cancel(locked, actor=actor, subscription_status="canceled")
    return locked


def _account_cancel(account: BillingAccount, *, actor: Actor, subscription_status: str) -> None:
    previous = account.status
    account.status = BillingAccount.Status.CANCELED
    account.subscription_status = subscription_status
    account.past_due_since = account.grace_deadline = None
    account.save()
    if previous != BillingAccount.Status.CANCELED:
        _audit_account(account, actor=actor, action="billing.account_cancel", data={"from": previous})


# --- usage ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UsageReportRun:
    reported: list[str] = field(default_factory=list)  # idempotency keys
    failed: list[str] = field(default_factory=list)


def usage_report_key(*, tenant_id: Any, hour: datetime) -> str:
    """The identifier and idempotency key of a tenant's hour: deterministic, so every retry sends the same."""
    return f"{tenant_id}:{hour.strftime('%Y-%m-%dT%H:00Z')}"


def usage_report_begin(*, tenant_id: Any, hour: datetime, tokens: int, event_name: str) -> UsageReport:
    """Record the report of a tenant's hour before it is sent (``pending``, with its quantity). Idempotent: an
    hour already recorded is returned as it is, with the quantity first recorded."""
    account = BillingAccount.objects.get(tenant_id=tenant_id)
    key = usage_report_key(tenant_id=tenant_id, hour=hour)
    report, _ = UsageReport.objects.get_or_create(
        idempotency_key=key,
        defaults={"tenant_id": tenant_id, "hour": hour, "quantity": tokens, "event_name": event_name,
                  "stripe_customer_id": account.stripe_customer_id, "identifier": key})
    return report


def usage_report_send(*, report: UsageReport, gateway: StripeGateway, now: datetime) -> UsageReport:
    """Send a pending report to Stripe with its recorded identifier, quantity and idempotency key, then mark it
    reported. A refused report is marked failed (not retried); StripeUnavailable is raised for a retry."""
    if report.status != UsageReport.Status.PENDING:
        return report
    UsageReport.objects.filter(pk=report.pk).update(attempts=F("attempts") + 1)
    try:
        gateway.meter_event_report(event_name=report.event_name, customer_id=report.stripe_customer_id,
                                   value=report.quantity, identifier=report.identifier, timestamp=report.hour,
                                   idempotency_key=report.idempotency_key)
    except StripeRejected as exc:
        with transaction.atomic():
            changed = UsageReport.objects.filter(pk=report.pk, status=UsageReport.Status.PENDING).update(
                status=UsageReport.Status.FAILED, error=exc.message[:1000])
            report.refresh_from_db()
            if changed:  # two workers may send the same report at once: one of them records the outcome
                audit_event_record(tenant=report.tenant, actor=BILLING_ACTOR, action="billing.usage_report_fail",
                                   target_type="usage_report", target_id=report.idempotency_key,
                                   data={"quantity": report.quantity, "error": exc.message[:500]})
        return report
    with transaction.atomic():
        changed = UsageReport.objects.filter(pk=report.pk, status=UsageReport.Status.PENDING).update(
            status=UsageReport.Status.REPORTED, reported_at=now, error="")
        report.refresh_from_db()
        if changed:
            audit_event_record(tenant=report.tenant, actor=BILLING_ACTOR, action="billing.usage_report",
                               target_type="usage_report", target_id=report.idempotency_key,
                               data={"quantity": report.quantity, "event_name": report.event_name})
    return report


def usage_report_all(*, gateway: StripeGateway, event_name: str, now: datetime, settle: timedelta) -> UsageReportRun:
    """Report every closed hour of LLM usage not yet reported, of every tenant with an open subscription, then
    any report left pending by an earlier run. Idempotent: an hour is billed once whatever is retried or run
    again. Raises StripeUnavailable at the first transient failure (what was reported stays reported)."""
    run = UsageReportRun()
    for hour in selectors.usage_hours_unreported(now=now, settle=settle):
        report = usage_report_begin(tenant_id=hour.tenant_id, hour=hour.hour, tokens=hour.tokens,
                                    event_name=event_name)
        sent = usage_report_send(report=report, gateway=gateway, now=now)
        (run.reported if sent.status == UsageReport.Status.REPORTED else run.failed).append(sent.idempotency_key)
    for report in UsageReport.objects.filter(status=UsageReport.Status.PENDING).select_related("tenant"):
        sent = usage_report_send(report=report, gateway=gateway, now=now)
        (run.reported if sent.status == UsageReport.Status.REPORTED else run.failed).append(sent.idempotency_key)
    return run


# --- webhooks and payment state -------------------------------------------------------------------------

@dataclass(frozen=True)
class WebhookOutcome:
    event_id: str
    type: str
    outcome: str
    is_duplicate: bool = False


def stripe_webhook_receive(*, payload: bytes, signature_header: str | None, gateway: StripeGateway,
                           grace: timedelta, now: datetime) -> WebhookOutcome:
    """Verify a webhook's signature, then apply its event once: a payment marks the account active and
    reactivates a tenant billing suspended; a failed payment starts the grace period; subscription updates keep
    the account in sync. A redelivered event id changes nothing. Raises WebhookSignatureInvalid and
    WebhookPayloadInvalid before anything is written."""
    event = gateway.webhook_event_verify(payload=payload, signature_header=signature_header)
    with transaction.atomic():
        record, created = StripeWebhookEvent.objects.get_or_create(
            event_id=event.id, defaults={"type": event.type, "received_at": now})
        if not created:
            record = StripeWebhookEvent.objects.select_for_update().get(pk=record.pk)
            if record.processed_at is not None:
                return WebhookOutcome(event_id=event.id, type=event.type, outcome=record.outcome, is_duplicate=True)
        account, outcome = _event_apply(event, grace=grace, now=now)
        record.tenant_id = account.tenant_id if account else None
        record.outcome = outcome
        record.processed_at = now
        record.save()
    return WebhookOutcome(event_id=event.id, type=event.type, outcome=outcome)


def _event_apply(event: VerifiedEvent, *, grace: timedelta, now: datetime) -> tuple[BillingAccount | None, str]:
    data = event.object
    customer_id = str(data.get("customer") or "")
    account = (BillingAccount.objects.select_for_update().select_related("tenant")
               .filter(stripe_customer_id=customer_id).first() if customer_id else None)
    if event.type not in PAID_EVENTS | {"invoice.payment_failed", "customer.subscription.updated",
                                        "customer.subscription.deleted"}:
        return account, "ignored: not an event we act on"
    if account is None:
        return None, f"ignored: no billing account for customer {customer_id or '(none)'}"
    if event.type in PAID_EVENTS:
        invoice = _invoice_record(account, data, paid_at_default=event.created)
        return account, _account_mark_paid(account, invoice_id=invoice.stripe_invoice_id)
    if event.type == "invoice.payment_failed":
        invoice = _invoice_record(account, data, paid_at_default=None)
        if invoice.status == "paid":  # a late delivery about an invoice that was paid since
            return account, f"ignored: invoice {invoice.stripe_invoice_id} is already paid"
        return account, _account_mark_past_due(account, grace=grace, now=now,
                                               reason=f"payment of invoice {invoice.stripe_invoice_id} failed")
    status = str(data.get("status") or "")
    if event.type == "customer.subscription.deleted" or status in ("canceled", "incomplete_expired"):
        _account_cancel(account, actor=BILLING_ACTOR, subscription_status=status or "canceled")
        return account, "account canceled"
    account.subscription_status = status
    account.save(update_fields=["subscription_status", "updated_at"])
    if status in ("past_due", "unpaid"):
        return account, _account_mark_past_due(account, grace=grace, now=now, reason=f"subscription is {status}")
    return account, f"subscription status {status}"


def _invoice_record(account: BillingAccount, data: Mapping[str, Any], *, paid_at_default: datetime | None) -> Invoice:
    parsed = invoice_from_json(data)
    existing = Invoice.objects.select_for_update().filter(stripe_invoice_id=parsed.id).first()
    if existing is not None and existing.status == "paid" and parsed.status != "paid":
        return existing  # a paid invoice stays paid, whatever order its events arrive in
    values = {"tenant_id": account.tenant_id, "stripe_subscription_id": parsed.subscription_id,
              "status": parsed.status, "amount_due": parsed.amount_due, "amount_paid": parsed.amount_paid,
              "currency": parsed.currency, "period_start": parsed.period_start, "period_end": parsed.period_end,
              "paid_at": parsed.paid_at or (paid_at_default if parsed.status == "paid" else None)}
    invoice, _ = Invoice.objects.update_or_create(stripe_invoice_id=parsed.id, defaults=values)
    return invoice


def _account_mark_paid(account: BillingAccount, *, invoice_id: str) -> str:
    previous = account.status
    if account.status == BillingAccount.Status.PAST_DUE:
        account.status = BillingAccount.Status.ACTIVE
    account.past_due_since = account.grace_deadline = None
    was_suspended_by_billing = account.is_suspended_for_nonpayment
    account.is_suspended_for_nonpayment = False
    account.save()
    outcome = f"invoice {invoice_id} paid"
    if was_suspended_by_billing:
        if _suspended_by_billing(account.tenant):
            account.tenant = tenant_services.tenant_reactivate(tenant=account.tenant, actor=BILLING_ACTOR)
            outcome += "; tenant reactivated"
        else:  # an operator suspended it (again) since, or reactivated it already: theirs to lift
            outcome += "; tenant left as the operator set it"
    if previous != account.status or was_suspended_by_billing:
        _audit_account(account, actor=BILLING_ACTOR, action="billing.account_paid",
                       data={"from": previous, "to": account.status, "invoice": invoice_id, "outcome": outcome})
    return outcome


def _suspended_by_billing(tenant: Any) -> bool:
    """Whether the tenant is suspended and its latest status change is billing's suspension for non-payment."""
    latest = tenant_selectors.tenant_lifecycle_list(tenant=tenant).order_by("occurred_at").last()
    return (tenant.status == "suspended" and latest is not None and latest.action == "suspend"
            and latest.actor == str(BILLING_ACTOR))


def _account_mark_past_due(account: BillingAccount, *, grace: timedelta, now: datetime, reason: str) -> str:
    if account.status != BillingAccount.Status.ACTIVE:  # already past due: the first failure's deadline holds
        return f"{reason}; already {account.status}"
    account.status = BillingAccount.Status.PAST_DUE
    account.past_due_since = now
    account.grace_deadline = now + grace
    account.save()
    _audit_account(account, actor=BILLING_ACTOR, action="billing.account_past_due",
                   data={"reason": reason, "grace_deadline": account.grace_deadline.isoformat()})
    return f"{reason}; past_due until {account.grace_deadline.isoformat()}"


def billing_grace_expire(*, now: datetime) -> list[str]:
    """Suspend every active tenant whose account is past due beyond its grace deadline; returns their slugs.
    A tenant already suspended (by an operator) is left alone and not marked, so a later payment does not lift
    the operator's suspension. Idempotent."""
    suspended: list[str] = []
    due = BillingAccount.objects.filter(status=BillingAccount.Status.PAST_DUE, grace_deadline__lte=now,
                                        is_suspended_for_nonpayment=False).values_list("pk", flat=True)
    for pk in list(due):
        with transaction.atomic():
            account = BillingAccount.objects.select_for_update().select_related("tenant").get(pk=pk)
            # re-checked under the lock: a payment may have arrived since the query above
            if (account.status != BillingAccount.Status.PAST_DUE or account.is_suspended_for_nonpayment
                    or account.grace_deadline is None or account.grace_deadline > now
                    or account.tenant.status != "active"):
                continue
            tenant_services.tenant_suspend(tenant=account.tenant, reason=NONPAYMENT_REASON, actor=BILLING_ACTOR)
            account.is_suspended_for_nonpayment = True
            account.save(update_fields=["is_suspended_for_nonpayment", "updated_at"])
            _audit_account(account, actor=BILLING_ACTOR, action="billing.suspend_for_nonpayment",
                           data={"past_due_since": account.past_due_since.isoformat() if account.past_due_since
                                 else None, "grace_deadline": account.grace_deadline.isoformat()})
            suspended.append(account.tenant.slug)
    return suspended

