"""Opening a tenant's billing account: one customer and one subscription whatever is retried; tier changes and
cancellation through the real SDK against the fake."""

from __future__ import annotations

import pytest

from billing.errors import StripeUnavailable
from billing.models import BillingAccount
from billing.stripe_services import BILLING_ACTOR, billing_account_cancel, billing_account_open, \
    billing_account_tier_change
from billing.tests.conftest import CATALOG, gateway_for
from control_plane.audit.models import AuditEvent
from django_tenants.utils import schema_context
from tenants.selectors import tenant_get


def test_open_creates_one_customer_and_a_subscription_to_the_tier(tenant_a, fake_stripe, gateway):
    # when
    account = billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    # then
    assert account.status == BillingAccount.Status.ACTIVE
    assert list(fake_stripe.customers) == [account.stripe_customer_id]
    customer = fake_stripe.customers[account.stripe_customer_id]
    assert customer["metadata"] == {"tenant_id": str(tenant_a.tenant.id), "tenant_slug": tenant_a.tenant.slug}
    subscription = fake_stripe.subscriptions[account.stripe_subscription_id]
    assert subscription["customer"] == account.stripe_customer_id
    assert [item["price"]["id"] for item in subscription["items"]["data"]] == ["price_fee_standard",
                                                                             "price_tokens_standard"]
    assert [item["id"] for item in subscription["items"]["data"]] == [account.stripe_fee_item_id,
                                                                      account.stripe_usage_item_id]
    assert [r.idempotency_key for r in fake_stripe.calls("/v1/")] == [
        f"{tenant_a.tenant.id}:customer", f"{tenant_a.tenant.id}:subscription:{account.stripe_customer_id}"]
    with schema_context(tenant_a.schema):
        event = AuditEvent.objects.get(action="billing.account_open")
    assert (event.actor_kind, event.actor_id, event.data["tier"]) == ("system", "billing", "standard")


def test_open_again_changes_nothing_and_calls_stripe_no_more(tenant_a, fake_stripe, gateway):
    # given
    first = billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    # when
    again = billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    # then
    assert (again.pk, again.stripe_customer_id, again.stripe_subscription_id) == (
        first.pk, first.stripe_customer_id, first.stripe_subscription_id)
    assert len(fake_stripe.requests) == 2
    assert len(fake_stripe.customers) == 1 and len(fake_stripe.subscriptions) == 1


def test_a_timeout_retried_by_the_sdk_creates_one_customer(tenant_a, fake_stripe):
    # given: Stripe creates the customer but answers after the client gave up; the SDK retries with the same key
    gateway = gateway_for(fake_stripe, max_network_retries=2, timeout_seconds=0.3)
    fake_stripe.fail_next("/v1/customers", delay_seconds=1.0)
    # when
    account = billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    # then: two requests reached Stripe, one ran, the second was answered with the first's customer
    calls = fake_stripe.calls("/v1/customers")
    assert [(call.executed, call.replayed) for call in calls] == [(True, False), (False, True)]
    assert list(fake_stripe.customers) == [account.stripe_customer_id]
    assert account.status == BillingAccount.Status.ACTIVE


def test_a_crash_after_stripe_answered_is_retried_without_a_second_customer(tenant_a, fake_stripe, gateway):
    # given: Stripe created the customer and the subscription but the answer to the latter was lost (our process
    # saw a 500 and gave up, as if it had died after Stripe answered)
    fake_stripe.fail_next("/v1/subscriptions", after_processing=True)
    with pytest.raises(StripeUnavailable):
        billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    half_open = BillingAccount.objects.get(tenant=tenant_a.tenant)
    assert (half_open.status, half_open.stripe_subscription_id) == (BillingAccount.Status.OPENING, "")
    # when: the task is retried
    account = billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    # then: the same customer, and the subscription Stripe made the first time
    assert len(fake_stripe.customers) == 1 and list(fake_stripe.subscriptions) == [account.stripe_subscription_id]
    assert [call.replayed for call in fake_stripe.calls("/v1/subscriptions")] == [False, True]
    assert account.status == BillingAccount.Status.ACTIVE


def test_a_stripe_outage_before_the_customer_leaves_the_account_opening_and_a_retry_finishes(tenant_a, fake_stripe,
                                                                                              gateway):
    # given
    fake_stripe.fail_next("/v1/customers", status=500)
    # when
    with pytest.raises(StripeUnavailable) as failure:
        billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    # then
    assert failure.value.code == "stripe_unavailable"
    assert "creating the customer of tenant" in failure.value.message
    assert BillingAccount.objects.get(tenant=tenant_a.tenant).stripe_customer_id == ""
    assert fake_stripe.customers == {}
    account = billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    assert len(fake_stripe.customers) == 1 and account.status == BillingAccount.Status.ACTIVE


def test_tier_change_moves_both_prices_and_the_tenant(tenant_a, fake_stripe, gateway):
    # given
    account = billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    # when
    changed = billing_account_tier_change(tenant=tenant_a.tenant, tier="professional", gateway=gateway,
                                          catalog=CATALOG, actor=BILLING_ACTOR)
    again = billing_account_tier_change(tenant=tenant_a.tenant, tier="professional", gateway=gateway,
                                        catalog=CATALOG, actor=BILLING_ACTOR)
    # then
    subscription = fake_stripe.subscriptions[account.stripe_subscription_id]
    assert [item["price"]["id"] for item in subscription["items"]["data"]] == ["price_fee_professional",
                                                                             "price_tokens_professional"]
    assert (changed.tier, changed.tier_revision, again.tier_revision) == ("professional", 1, 1)
    assert len(fake_stripe.calls(f"/v1/subscriptions/{account.stripe_subscription_id}")) == 1
    assert tenant_get(slug=tenant_a.tenant.slug).sla_tier == "professional"
    with schema_context(tenant_a.schema):
        assert AuditEvent.objects.get(action="billing.tier_change").data == {"from": "standard", "to": "professional"}


def test_cancel_cancels_the_subscription_once(tenant_a, fake_stripe, gateway):
    # given
    account = billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    # when
    billing_account_cancel(tenant=tenant_a.tenant, gateway=gateway, actor=BILLING_ACTOR)
    canceled = billing_account_cancel(tenant=tenant_a.tenant, gateway=gateway, actor=BILLING_ACTOR)
    # then
    assert canceled.status == BillingAccount.Status.CANCELED
    assert fake_stripe.subscriptions[account.stripe_subscription_id]["status"] == "canceled"
    assert len(fake_stripe.calls("/v1/subscriptions/", method="DELETE")) == 1


def test_provisioning_opens_the_account_when_stripe_is_on(client, operator_key, fake_stripe, stripe_settings,
                                                          django_capture_on_commit_callbacks):
    # given: the task runs in-process (eagerly) once the provisioning commits
    from conftest import bearer, unique_slug
    from control_plane.celery import app

    slug = unique_slug("billed")
    was_eager, app.conf.task_always_eager = app.conf.task_always_eager, True
    # when
    try:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            created = client.post("/v1/platform/tenants", {"name": "Billed", "slug": slug, "sla_tier": "enterprise"},
                                  content_type="application/json", **bearer(operator_key))
    finally:
        app.conf.task_always_eager = was_eager
    # then
    assert created.status_code == 201 and len(callbacks) == 1
    account = BillingAccount.objects.get(tenant__slug=slug)
    assert (account.status, account.tier) == ("active", "enterprise")
    subscription = fake_stripe.subscriptions[account.stripe_subscription_id]
    assert [item["price"]["id"] for item in subscription["items"]["data"]] == ["price_fee_enterprise",
                                                                             "price_tokens_enterprise"]


def test_provisioning_leaves_billing_alone_when_stripe_is_off(client, operator_key, settings,
                                                              django_capture_on_commit_callbacks):
    from conftest import bearer, unique_slug

    settings.STRIPE_ENABLED = False
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        created = client.post("/v1/platform/tenants", {"name": "Free", "slug": unique_slug("free")},
                              content_type="application/json", **bearer(operator_key))
    assert created.status_code == 201 and callbacks == []
    assert not BillingAccount.objects.exists()
