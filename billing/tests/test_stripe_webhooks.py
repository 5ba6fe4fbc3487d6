"""Stripe's webhooks through the public endpoint: signatures checked (a failure changes nothing), events applied
once, a failed payment leading to a suspension after the grace period and a payment to the reactivation, never
lifting an operator's suspension."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Invoice, StripeWebhookEvent
from billing.stripe_services import BILLING_ACTOR, NONPAYMENT_REASON, billing_account_open, billing_grace_expire
from billing.tests.conftest import CATALOG
from billing.tests.fake_stripe import WEBHOOK_SECRET, FakeStripe, sign
from common.actors import Actor
from conftest import bearer
from control_plane.audit.models import AuditEvent
from tenants import services as tenant_services
from tenants.selectors import tenant_get

URL = "/v1/billing/stripe/webhook"
OPERATOR = Actor(kind="operator_key", id="ops-alice")


@pytest.fixture
def account(tenant_a, gateway, stripe_settings):
    return billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)


def _post(client, body: bytes, signature: str | None):
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
    return client.post(URL, data=body, content_type="application/json", **headers)


def _invoice_event(fake: FakeStripe, account: BillingAccount, event_type: str, *, invoice: dict | None = None,
                   amount: int = 9900, **signing) -> tuple[bytes, str, dict]:
    invoice = invoice or fake.invoice_create(customer=account.stripe_customer_id,
                                             subscription=account.stripe_subscription_id, amount_due=amount)
    if event_type in ("invoice.paid", "invoice.payment_succeeded"):
        invoice = fake.invoice_pay(invoice["id"])
    body, signature = fake.signed_event(event_type=event_type, data_object=invoice, **signing)
    return body, signature, invoice


def _state(tenant) -> tuple:
    """What a webhook could change."""
    with schema_context(tenant.schema_name):
        audit = AuditEvent.objects.count()
    return (list(BillingAccount.objects.values_list("status", "past_due_since", "grace_deadline",
                                                    "is_suspended_for_nonpayment", "subscription_status")),
            list(Invoice.objects.values_list("stripe_invoice_id", "status")),
            StripeWebhookEvent.objects.count(), tenant_get(slug=tenant.slug).status, audit)


def _tampered(body: bytes) -> bytes:
    event = json.loads(body)
    event["data"]["object"]["amount_due"] = 1
    return json.dumps(event).encode()


SIGNATURE_FAILURES = {
    "wrong secret": lambda body, sig, ts: (body, sign(body, secret="whsec_someone_else", timestamp=ts)),
    "tampered body": lambda body, sig, ts: (_tampered(body), sig),
    "old timestamp": lambda body, sig, ts: (body, sign(body, secret=WEBHOOK_SECRET, timestamp=ts - 301)),
    "missing header": lambda body, sig, ts: (body, None),
    "malformed header": lambda body, sig, ts: (body, "v1=deadbeef"),
}


@pytest.mark.parametrize("failure", sorted(SIGNATURE_FAILURES))
def test_a_webhook_whose_signature_fails_is_refused_and_changes_nothing(client, tenant_a, fake_stripe, account,
                                                                        failure):
    # given: a payment failure that would make the account past due
    now = int(time.time())
    body, signature, _ = _invoice_event(fake_stripe, account, "invoice.payment_failed", timestamp=now)
    body, signature = SIGNATURE_FAILURES[failure](body, signature, now)
    before = _state(tenant_a.tenant)
    # when
    response = _post(client, body, signature)
    # then
    assert (response.status_code, response.json()["code"]) == (400, "webhook_signature_invalid"), response.content
    assert "Nothing was changed" in response.json()["detail"]
    assert _state(tenant_a.tenant) == before


def test_a_payment_failure_makes_the_account_past_due_with_a_grace_period(client, tenant_a, fake_stripe, account):
    # given
    body, signature, invoice = _invoice_event(fake_stripe, account, "invoice.payment_failed")
    # when
    response = _post(client, body, signature)
    # then
    assert response.status_code == 200, response.content
    account.refresh_from_db()
    received = StripeWebhookEvent.objects.get()
    assert account.status == "past_due"
    assert account.past_due_since == received.processed_at
    assert account.grace_deadline == received.processed_at + timedelta(days=7)
    assert response.json()["outcome"] == (f"payment of invoice {invoice['id']} failed; past_due until "
                                          f"{account.grace_deadline.isoformat()}")
    assert list(Invoice.objects.values_list("stripe_invoice_id", "status", "amount_due", "amount_paid",
                                            "tenant_id")) == [(invoice["id"], "open", 9900, 0, tenant_a.tenant.id)]
    with schema_context(tenant_a.schema):
        audit = AuditEvent.objects.get(action="billing.account_past_due")
    assert (audit.actor_id, audit.target_id) == ("billing", str(account.id))


def test_a_redelivered_event_is_applied_once(client, tenant_a, fake_stripe, account):
    # given
    body, signature, _ = _invoice_event(fake_stripe, account, "invoice.payment_failed")
    first = _post(client, body, signature)
    before = _state(tenant_a.tenant)
    # when: Stripe delivers the same event again (a fresh signature, the same event id)
    again = _post(client, body, sign(body, secret=WEBHOOK_SECRET, timestamp=int(time.time())))
    # then
    assert (first.json()["is_duplicate"], again.json()["is_duplicate"]) == (False, True)
    assert again.json()["outcome"] == first.json()["outcome"]
    assert _state(tenant_a.tenant) == before


def test_unpaid_past_the_grace_period_suspends_and_paying_reactivates(client, tenant_a, fake_stripe, account):
    # given: a failed payment
    body, signature, invoice = _invoice_event(fake_stripe, account, "invoice.payment_failed")
    assert _post(client, body, signature).status_code == 200
    account.refresh_from_db()
    deadline = account.grace_deadline
    # when: the grace period has not passed yet
    assert billing_grace_expire(now=deadline - timedelta(seconds=1)) == []
    assert client.get("/v1/tenant", **bearer(tenant_a.key)).status_code == 200
    # when: it has
    assert billing_grace_expire(now=deadline + timedelta(seconds=1)) == [tenant_a.tenant.slug]
    assert billing_grace_expire(now=deadline + timedelta(hours=1)) == []  # idempotent
    # then: suspended for non-payment; the tenant's keys are refused
    tenant = tenant_get(slug=tenant_a.tenant.slug)
    assert (tenant.status, tenant.status_reason) == ("suspended", NONPAYMENT_REASON)
    refused = client.get("/v1/tenant", **bearer(tenant_a.key))
    assert (refused.status_code, refused.json()["code"]) == (403, "tenant_suspended")
    assert "non-payment" in refused.json()["detail"]
    # when: the invoice is paid
    body, signature, _ = _invoice_event(fake_stripe, account, "invoice.paid", invoice=invoice)
    response = _post(client, body, signature)
    # then: active again, and the keys work
    assert response.json()["outcome"] == f"invoice {invoice['id']} paid; tenant reactivated"
    account.refresh_from_db()
    assert (account.status, account.grace_deadline, account.is_suspended_for_nonpayment) == ("active", None, False)
    assert tenant_get(slug=tenant_a.tenant.slug).status == "active"
    assert client.get("/v1/tenant", **bearer(tenant_a.key)).status_code == 200
    paid = Invoice.objects.get(stripe_invoice_id=invoice["id"])
    assert (paid.status, paid.amount_paid, paid.paid_at is not None) == ("paid", 9900, True)
    with schema_context(tenant_a.schema):
        actions = list(AuditEvent.objects.filter(actor_id="billing").order_by("seq").values_list("action", flat=True))
    assert actions == ["billing.account_open", "billing.account_past_due", "tenant.suspend",
                       "billing.suspend_for_nonpayment", "tenant.reactivate", "billing.account_paid"]


def test_an_operator_suspension_is_never_lifted_by_a_payment(client, tenant_a, fake_stripe, account):
    # given: a failed payment, then an operator suspends the tenant for another reason
    body, signature, invoice = _invoice_event(fake_stripe, account, "invoice.payment_failed")
    _post(client, body, signature)
    tenant_services.tenant_suspend(tenant=tenant_a.tenant, reason="abuse report #42", actor=OPERATOR)
    account.refresh_from_db()
    # when: the grace period passes, then the invoice is paid
    assert billing_grace_expire(now=account.grace_deadline + timedelta(days=1)) == []
    body, signature, _ = _invoice_event(fake_stripe, account, "invoice.paid", invoice=invoice)
    response = _post(client, body, signature)
    # then: the account is paid up; the operator's suspension stands
    assert response.json()["outcome"] == f"invoice {invoice['id']} paid"
    account.refresh_from_db()
    assert (account.status, account.is_suspended_for_nonpayment) == ("active", False)
    tenant = tenant_get(slug=tenant_a.tenant.slug)
    assert (tenant.status, tenant.status_reason) == ("suspended", "abuse report #42")


def test_a_payment_does_not_lift_an_operator_suspension_made_after_billings(client, tenant_a, fake_stripe, account):
    # given: billing suspended the tenant; an operator reactivated it, then suspended it for another reason
    body, signature, invoice = _invoice_event(fake_stripe, account, "invoice.payment_failed")
    _post(client, body, signature)
    account.refresh_from_db()
    billing_grace_expire(now=account.grace_deadline + timedelta(seconds=1))
    tenant_services.tenant_reactivate(tenant=tenant_get(slug=tenant_a.tenant.slug), actor=OPERATOR)
    tenant_services.tenant_suspend(tenant=tenant_get(slug=tenant_a.tenant.slug), reason="fraud check",
                                   actor=OPERATOR)
    # when
    body, signature, _ = _invoice_event(fake_stripe, account, "invoice.paid", invoice=invoice)
    response = _post(client, body, signature)
    # then
    assert response.json()["outcome"] == f"invoice {invoice['id']} paid; tenant left as the operator set it"
    assert tenant_get(slug=tenant_a.tenant.slug).status_reason == "fraud check"


def test_a_late_payment_failure_of_a_paid_invoice_is_ignored(client, tenant_a, fake_stripe, account):
    # given: the invoice's failure and success, delivered in the wrong order
    invoice = fake_stripe.invoice_create(customer=account.stripe_customer_id,
                                         subscription=account.stripe_subscription_id, amount_due=500)
    failed_body, failed_signature = fake_stripe.signed_event(event_type="invoice.payment_failed",
                                                             data_object=dict(invoice))
    paid_body, paid_signature, _ = _invoice_event(fake_stripe, account, "invoice.paid", invoice=invoice)
    _post(client, paid_body, paid_signature)
    # when
    response = _post(client, failed_body, failed_signature)
    # then
    assert response.json()["outcome"] == f"ignored: invoice {invoice['id']} is already paid"
    account.refresh_from_db()
    assert account.status == "active"
    assert Invoice.objects.get().status == "paid"


def test_subscription_events_keep_the_account_in_sync(client, tenant_a, fake_stripe, account):
    # given
    subscription = dict(fake_stripe.subscriptions[account.stripe_subscription_id], status="past_due")
    # when: Stripe says the subscription is past due, then that it was deleted
    _post(client, *fake_stripe.signed_event(event_type="customer.subscription.updated", data_object=subscription))
    account.refresh_from_db()
    assert (account.status, account.subscription_status) == ("past_due", "past_due")
    deleted = dict(subscription, status="canceled")
    response = _post(client, *fake_stripe.signed_event(event_type="customer.subscription.deleted",
                                                       data_object=deleted))
    # then
    assert response.json()["outcome"] == "account canceled"
    account.refresh_from_db()
    assert (account.status, account.subscription_status, account.grace_deadline) == ("canceled", "canceled", None)


def test_an_event_about_an_unknown_customer_is_acknowledged_and_ignored(client, tenant_a, fake_stripe, account):
    # given
    before = _state(tenant_a.tenant)[:2]
    body, signature = fake_stripe.signed_event(event_type="invoice.paid", data_object={
        "id": "in_other", "object": "invoice", "customer": "cus_not_ours", "status": "paid"})
    # when
    response = _post(client, body, signature)
    # then
    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored: no billing account for customer cus_not_ours"
    assert _state(tenant_a.tenant)[:2] == before


def test_the_webhook_is_not_served_when_stripe_is_off(client, db, settings, fake_stripe):
    # given
    settings.STRIPE_ENABLED = False
    body, signature = fake_stripe.signed_event(event_type="invoice.paid", data_object={"id": "in_1"})
    # when
    response = _post(client, body, signature)
    # then
    assert (response.status_code, response.json()["code"]) == (404, "stripe_not_enabled")
    assert not StripeWebhookEvent.objects.exists()
