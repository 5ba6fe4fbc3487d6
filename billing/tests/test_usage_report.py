"""Hourly LLM usage reported to Stripe as meter events, once: whatever is retried, re-run or lost on the way.

The rollups are written directly here (the metering collector fills them in production)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.utils import timezone as django_timezone

from billing.errors import StripeUnavailable
from billing.models import UsageReport, UsageRollup
from billing.stripe_services import BILLING_ACTOR, billing_account_open, usage_report_all, usage_report_begin, \
    usage_report_key
from billing.stripe_tasks import usage_report_all_task
from billing.tests.conftest import CATALOG

NOW = datetime(2026, 11, 20, 12, 40, tzinfo=timezone.utc)
SETTLE = timedelta(minutes=15)
EVENT = CATALOG.meter_event_name


def _rollup(tenant, hour: datetime, *, model: str = "openai/gpt-4o-mini", input_tokens: int = 0,
            output_tokens: int = 0, cached: int = 0, kind: str = "llm") -> UsageRollup:
    return UsageRollup.objects.create(tenant=tenant, period="hour", period_start=hour, kind=kind, name=model,
                                      count=1, input_tokens=input_tokens, output_tokens=output_tokens,
                                      cached_input_tokens=cached)


@pytest.fixture
def account(tenant_a, gateway):
    return billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)


def _meter_calls(fake):
    return fake.calls("/v1/billing/meter_events")


def test_each_closed_hour_is_reported_with_input_output_and_cached_tokens(tenant_a, tenant_b, fake_stripe, gateway,
                                                                          account):
    # given: two closed hours (one with two models), a tool rollup, the open hour, and a tenant without an account
    ten, eleven, noon = (NOW.replace(hour=h, minute=0) for h in (10, 11, 12))
    _rollup(tenant_a.tenant, ten, input_tokens=1000, output_tokens=200, cached=300)
    _rollup(tenant_a.tenant, ten, model="openai/gpt-4o", input_tokens=50, output_tokens=5)
    _rollup(tenant_a.tenant, ten, model="calculator", kind="tool", input_tokens=999)
    _rollup(tenant_a.tenant, eleven, input_tokens=7, output_tokens=3)
    _rollup(tenant_a.tenant, noon, input_tokens=123)
    _rollup(tenant_b.tenant, ten, input_tokens=555)
    # when
    run = usage_report_all(gateway=gateway, event_name=EVENT, now=NOW, settle=SETTLE)
    # then
    keys = [usage_report_key(tenant_id=tenant_a.tenant.id, hour=hour) for hour in (ten, eleven)]
    assert run.reported == keys and run.failed == []
    assert keys[0] == f"{tenant_a.tenant.id}:2026-11-20T10:00Z"
    assert [(c.params["identifier"], c.params["payload"], c.params["timestamp"], c.idempotency_key)
            for c in _meter_calls(fake_stripe)] == [
        (keys[0], {"stripe_customer_id": account.stripe_customer_id, "value": "1555"}, str(int(ten.timestamp())),
         keys[0]),
        (keys[1], {"stripe_customer_id": account.stripe_customer_id, "value": "10"}, str(int(eleven.timestamp())),
         keys[1])]
    assert fake_stripe.meter_total(customer_id=account.stripe_customer_id, event_name=EVENT) == 1565
    assert list(UsageReport.objects.values_list("hour", "quantity", "status", "attempts", "reported_at")) == [
        (ten, 1555, "reported", 1, NOW), (eleven, 10, "reported", 1, NOW)]


def test_an_hour_still_settling_waits(tenant_a, fake_stripe, gateway, account):
    # given: 11:00-12:00 ended 10 minutes ago, less than the settle delay
    _rollup(tenant_a.tenant, NOW.replace(hour=11, minute=0), input_tokens=10)
    # when
    run = usage_report_all(gateway=gateway, event_name=EVENT, now=NOW.replace(minute=10), settle=SETTLE)
    # then
    assert run.reported == [] and _meter_calls(fake_stripe) == [] and not UsageReport.objects.exists()


def test_a_second_run_reports_nothing_more(tenant_a, fake_stripe, gateway, account):
    # given
    _rollup(tenant_a.tenant, NOW.replace(hour=10, minute=0), input_tokens=40)
    usage_report_all(gateway=gateway, event_name=EVENT, now=NOW, settle=SETTLE)
    # when
    again = usage_report_all(gateway=gateway, event_name=EVENT, now=NOW + timedelta(hours=1), settle=SETTLE)
    # then
    assert again.reported == []
    assert len(_meter_calls(fake_stripe)) == 1
    assert fake_stripe.meter_total(customer_id=account.stripe_customer_id) == 40


def test_a_retry_after_an_outage_reports_once(tenant_a, fake_stripe, gateway, account):
    # given: Stripe fails the first attempt before doing anything
    _rollup(tenant_a.tenant, NOW.replace(hour=10, minute=0), input_tokens=40)
    fake_stripe.fail_next("/v1/billing/meter_events", status=500)
    with pytest.raises(StripeUnavailable):
        usage_report_all(gateway=gateway, event_name=EVENT, now=NOW, settle=SETTLE)
    assert UsageReport.objects.get().status == "pending"
    # when: the task is retried
    run = usage_report_all(gateway=gateway, event_name=EVENT, now=NOW + timedelta(minutes=1), settle=SETTLE)
    # then
    assert len(run.reported) == 1
    assert [c.status for c in _meter_calls(fake_stripe)] == [500, 200]
    assert len(fake_stripe.executed("/v1/billing/meter_events")) == 1
    assert UsageReport.objects.get().attempts == 2
    assert fake_stripe.meter_total(customer_id=account.stripe_customer_id) == 40


def test_a_lost_answer_is_replayed_not_billed_again(tenant_a, fake_stripe, gateway, account):
    # given: Stripe records the event, then the answer is lost (a 500 after processing)
    _rollup(tenant_a.tenant, NOW.replace(hour=10, minute=0), input_tokens=40)
    fake_stripe.fail_next("/v1/billing/meter_events", after_processing=True)
    with pytest.raises(StripeUnavailable):
        usage_report_all(gateway=gateway, event_name=EVENT, now=NOW, settle=SETTLE)
    # when
    usage_report_all(gateway=gateway, event_name=EVENT, now=NOW, settle=SETTLE)
    # then: the retry was answered from Stripe's idempotency store
    assert [(c.executed, c.replayed) for c in _meter_calls(fake_stripe)] == [(True, False), (False, True)]
    assert fake_stripe.meter_total(customer_id=account.stripe_customer_id) == 40
    assert UsageReport.objects.get().status == "reported"


def test_a_crash_after_stripe_answered_is_billed_once_when_run_again(tenant_a, fake_stripe, gateway, account):
    # given: a worker recorded the report, sent it, Stripe answered, and the worker died before recording that
    hour = NOW.replace(hour=10, minute=0)
    _rollup(tenant_a.tenant, hour, input_tokens=40)
    report = usage_report_begin(tenant_id=tenant_a.tenant.id, hour=hour, tokens=40, event_name=EVENT)
    gateway.meter_event_report(event_name=EVENT, customer_id=report.stripe_customer_id, value=report.quantity,
                               identifier=report.identifier, timestamp=report.hour,
                               idempotency_key=report.idempotency_key)
    # and late usage of that hour arrived since (the rollup was recomputed)
    _rollup(tenant_a.tenant, hour, model="openai/gpt-4o", input_tokens=5)
    # when: the next run finds the report pending
    run = usage_report_all(gateway=gateway, event_name=EVENT, now=NOW, settle=SETTLE)
    # then: it re-sends exactly what was sent (the recorded quantity), Stripe replays, nothing is billed twice
    assert run.reported == [report.idempotency_key]
    assert [(c.executed, c.replayed, c.params["payload"]["value"]) for c in _meter_calls(fake_stripe)] == [
        (True, False, "40"), (False, True, "40")]
    assert fake_stripe.meter_total(customer_id=account.stripe_customer_id) == 40
    assert UsageReport.objects.get().status == "reported"


def test_a_report_stripe_refuses_is_marked_failed_and_not_sent_again(tenant_a, fake_stripe, gateway, account):
    # given: the customer no longer exists at Stripe
    _rollup(tenant_a.tenant, NOW.replace(hour=10, minute=0), input_tokens=40)
    del fake_stripe.customers[account.stripe_customer_id]
    # when
    run = usage_report_all(gateway=gateway, event_name=EVENT, now=NOW, settle=SETTLE)
    usage_report_all(gateway=gateway, event_name=EVENT, now=NOW + timedelta(hours=1), settle=SETTLE)
    # then
    report = UsageReport.objects.get()
    assert run.failed == [report.idempotency_key]
    assert report.status == "failed"
    assert report.error == (f"Stripe refused reporting usage {report.identifier} (40 for customer "
                            f"{account.stripe_customer_id}) (HTTP 404): No such customer: "
                            f"'{account.stripe_customer_id}' (parameter id).")
    assert len(_meter_calls(fake_stripe)) == 1


def test_the_task_retries_an_outage_and_reports_once(tenant_a, fake_stripe, stripe_settings, account):
    # given: usage two hours ago, and one Stripe failure
    hour = django_timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    _rollup(tenant_a.tenant, hour, input_tokens=40)
    fake_stripe.fail_next("/v1/billing/meter_events", status=503)
    # when: the task runs (eagerly here), fails, and Celery retries it
    result = usage_report_all_task.apply()
    # then
    assert result.get() == 1
    assert [c.status for c in _meter_calls(fake_stripe)] == [503, 200]
    report = UsageReport.objects.get()
    assert (report.status, report.attempts, report.quantity) == ("reported", 2, 40)
    assert fake_stripe.meter_total(customer_id=account.stripe_customer_id) == 40
