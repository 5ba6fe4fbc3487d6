"""Two workers at once, on committed data (each thread has its own database connection): the same hour reported
by both is billed once, and the same webhook delivered twice at the same moment is applied once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Invoice, StripeWebhookEvent, UsageReport, UsageRollup
from billing.stripe_services import BILLING_ACTOR, billing_account_open, stripe_webhook_receive, usage_report_all
from billing.tests.conftest import CATALOG, gateway_for
from billing.tests.fake_stripe import FakeStripe
from conftest import destroy_tenant, provision_for_test
from control_plane.audit.models import AuditEvent


@pytest.fixture
def billed_tenant(committed) -> Iterator:
    provisioned = provision_for_test("billing-race")
    try:
        yield provisioned
    finally:
        for model in (UsageReport, UsageRollup, Invoice, StripeWebhookEvent, BillingAccount):
            model.objects.filter(tenant=provisioned.tenant).delete()
        destroy_tenant(provisioned.tenant)


def _at_once(*calls: Callable[[], object]) -> list[object]:
    """Run the calls in threads started together; their results (or exceptions) in order."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except Exception as exc:  # reported to the test, which asserts on it
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_two_workers_reporting_the_same_hour_bill_it_once(billed_tenant):
    with FakeStripe() as fake:
        # given: a closed hour of usage; Stripe slow to answer, so the two requests overlap
        gateway = gateway_for(fake, max_network_retries=3, timeout_seconds=5)
        account = billing_account_open(tenant=billed_tenant.tenant, gateway=gateway, catalog=CATALOG,
                                       actor=BILLING_ACTOR)
        now = timezone.now()
        hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
        UsageRollup.objects.create(tenant=billed_tenant.tenant, period="hour", period_start=hour, kind="llm",
                                   name="openai/gpt-4o-mini", input_tokens=300, output_tokens=30)
        fake.fail_next("/v1/billing/meter_events", delay_seconds=0.5)

        def report() -> object:
            return usage_report_all(gateway=gateway, event_name=CATALOG.meter_event_name, now=now,
                                    settle=timedelta(minutes=15))

        # when
        results = _at_once(report, report)
        # then: one request ran at Stripe; the other was told to wait (409) or answered from the first
        assert not [r for r in results if isinstance(r, Exception)], results
        assert len(fake.executed("/v1/billing/meter_events")) == 1
        assert fake.meter_total(customer_id=account.stripe_customer_id) == 330
        assert list(UsageReport.objects.filter(tenant=billed_tenant.tenant).values_list("quantity", "status")) == [
            (330, "reported")]
        with schema_context(billed_tenant.schema):
            assert AuditEvent.objects.filter(action="billing.usage_report").count() == 1


def test_the_same_webhook_delivered_twice_at_once_is_applied_once(billed_tenant):
    with FakeStripe() as fake:
        # given
        gateway = gateway_for(fake)
        account = billing_account_open(tenant=billed_tenant.tenant, gateway=gateway, catalog=CATALOG,
                                       actor=BILLING_ACTOR)
        invoice = fake.invoice_create(customer=account.stripe_customer_id,
                                      subscription=account.stripe_subscription_id, amount_due=9900)
        body, signature = fake.signed_event(event_type="invoice.payment_failed", data_object=invoice)

        def deliver() -> object:
            return stripe_webhook_receive(payload=body, signature_header=signature, gateway=gateway,
                                          grace=timedelta(days=7), now=timezone.now())

        # when
        results = _at_once(deliver, deliver)
        # then
        assert sorted(result.is_duplicate for result in results) == [False, True], results
        account.refresh_from_db()
        assert account.status == "past_due"
        assert StripeWebhookEvent.objects.filter(tenant=billed_tenant.tenant).count() == 1
        with schema_context(billed_tenant.schema):
            assert AuditEvent.objects.filter(action="billing.account_past_due").count() == 1
