"""The billing endpoints: a tenant's own billing overview, and the operator's account routes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

from billing.models import BillingAccount, Invoice, UsageReport
from billing.stripe_selectors import RevenueDay, invoices_paid_by_day
from billing.stripe_services import BILLING_ACTOR, billing_account_open
from billing.tests.conftest import CATALOG
from conftest import bearer
from tenants.selectors import tenant_get

REPO = Path(__file__).resolve().parents[2]


def _invoice(tenant, stripe_id: str, *, amount: int, paid_at: datetime | None, status: str = "paid",
             currency: str = "usd") -> Invoice:
    return Invoice.objects.create(stripe_invoice_id=stripe_id, tenant=tenant, status=status, amount_due=amount,
                                  amount_paid=amount if status == "paid" else 0, currency=currency, paid_at=paid_at)


def test_a_tenant_without_an_account_sees_its_plan_only(client, tenant_a):
    # when
    response = client.get("/v1/billing", **bearer(tenant_a.key))
    # then
    assert response.status_code == 200
    body = response.json()
    assert body["plan"]["tier"] == "standard" and body["plan"]["monthly_fee_usd"] == "99.00"
    assert body["plan"]["usage_usd_per_million_tokens"] == "4.00"
    assert (body["account"], body["invoices"], body["usage_reports"]) == (None, [], [])


def test_a_tenant_sees_its_account_invoices_and_usage_reports(client, tenant_a, tenant_b, gateway):
    # given
    account = billing_account_open(tenant=tenant_a.tenant, gateway=gateway, catalog=CATALOG, actor=BILLING_ACTOR)
    paid_at = datetime(2026, 11, 1, 9, 30, tzinfo=timezone.utc)
    _invoice(tenant_a.tenant, "in_a1", amount=9900, paid_at=paid_at)
    _invoice(tenant_b.tenant, "in_b1", amount=49900, paid_at=paid_at)
    hour = datetime(2026, 11, 1, 8, tzinfo=timezone.utc)
    UsageReport.objects.create(tenant=tenant_a.tenant, hour=hour, quantity=1234, event_name="agentplane_llm_tokens",
                               stripe_customer_id=account.stripe_customer_id, identifier="k1", idempotency_key="k1",
                               status="reported", reported_at=hour)
    # when
    body = client.get("/v1/billing", **bearer(tenant_a.key)).json()
    # then
    assert {key: body["account"][key] for key in ("tier", "status", "stripe_customer_id", "grace_deadline",
                                                  "is_suspended_for_nonpayment")} == {
        "tier": "standard", "status": "active", "stripe_customer_id": account.stripe_customer_id,
        "grace_deadline": None, "is_suspended_for_nonpayment": False}
    assert [(i["stripe_invoice_id"], i["amount_paid"], i["paid_at"]) for i in body["invoices"]] == [
        ("in_a1", 9900, "2026-11-01T09:30:00Z")]
    assert [(r["hour"], r["quantity"], r["status"]) for r in body["usage_reports"]] == [
        ("2026-11-01T08:00:00Z", 1234, "reported")]


def test_operator_opens_an_account_changes_its_tier_and_cancels_it(client, tenant_a, operator_key, fake_stripe,
                                                                   stripe_settings):
    as_operator = bearer(operator_key)
    base = f"/v1/platform/tenants/{tenant_a.tenant.slug}/billing"
    # when / then: not opened yet
    assert client.get(base, **as_operator).json()["code"] == "billing_account_not_found"
    opened = client.post(base, **as_operator)
    assert opened.status_code == 200 and opened.json()["status"] == "active"
    assert client.post(base, **as_operator).json() == opened.json()  # idempotent
    assert len(fake_stripe.customers) == 1
    # a wrong tier is refused with what to send; nothing changes
    refused = client.post(f"{base}/tier", json.dumps({"sla_tier": "gold"}), content_type="application/json",
                          **as_operator)
    assert refused.status_code == 400 and "sla_tier" in refused.json()["errors"]
    assert len(fake_stripe.calls("/v1/subscriptions/")) == 0
    changed = client.post(f"{base}/tier", json.dumps({"sla_tier": "enterprise"}), content_type="application/json",
                          **as_operator)
    assert changed.json()["tier"] == "enterprise"
    assert tenant_get(slug=tenant_a.tenant.slug).sla_tier == "enterprise"
    canceled = client.post(f"{base}/cancel", **as_operator)
    assert canceled.json()["status"] == "canceled"
    # a canceled account takes no tier change
    conflict = client.post(f"{base}/tier", json.dumps({"sla_tier": "standard"}), content_type="application/json",
                           **as_operator)
    assert (conflict.status_code, conflict.json()["code"]) == (409, "billing_account_state_conflict")


def test_operator_routes_say_when_stripe_is_off(client, tenant_a, operator_key, settings):
    # given
    settings.STRIPE_ENABLED = False
    # when
    response = client.post(f"/v1/platform/tenants/{tenant_a.tenant.slug}/billing", **bearer(operator_key))
    # then
    assert (response.status_code, response.json()["code"]) == (404, "stripe_not_enabled")
    assert not BillingAccount.objects.exists()


def test_stripe_unavailable_is_a_503_naming_the_step(client, tenant_a, operator_key, fake_stripe, stripe_settings):
    # given
    fake_stripe.fail_next("/v1/customers", status=500)
    # when
    response = client.post(f"/v1/platform/tenants/{tenant_a.tenant.slug}/billing", **bearer(operator_key))
    # then
    assert (response.status_code, response.json()["code"]) == (503, "stripe_unavailable")
    assert f"creating the customer of tenant '{tenant_a.tenant.slug}'" in response.json()["detail"]


def test_invoices_paid_by_day_sums_paid_invoices_per_tenant_day_and_currency(tenant_a, tenant_b):
    # given
    day1, day2 = datetime(2026, 11, 1, 9, tzinfo=timezone.utc), datetime(2026, 11, 2, 23, 59, tzinfo=timezone.utc)
    _invoice(tenant_a.tenant, "in_1", amount=9900, paid_at=day1)
    _invoice(tenant_a.tenant, "in_2", amount=100, paid_at=day1.replace(hour=20))
    _invoice(tenant_a.tenant, "in_3", amount=700, paid_at=day1, currency="eur")
    _invoice(tenant_b.tenant, "in_4", amount=49900, paid_at=day2)
    _invoice(tenant_b.tenant, "in_5", amount=5000, paid_at=None, status="open")
    _invoice(tenant_b.tenant, "in_6", amount=1, paid_at=datetime(2026, 11, 3, tzinfo=timezone.utc))
    # when
    days = invoices_paid_by_day(start=date(2026, 11, 1), end=date(2026, 11, 3))
    only_a = invoices_paid_by_day(start=date(2026, 11, 1), end=date(2026, 11, 3), tenant_id=tenant_a.tenant.id)
    # then
    a, b = tenant_a.tenant.id, tenant_b.tenant.id
    assert sorted(days, key=lambda d: (d.day, str(d.tenant_id), d.currency)) == sorted([
        RevenueDay(tenant_id=a, day=date(2026, 11, 1), currency="eur", amount_paid=700),
        RevenueDay(tenant_id=a, day=date(2026, 11, 1), currency="usd", amount_paid=10000),
        RevenueDay(tenant_id=b, day=date(2026, 11, 2), currency="usd", amount_paid=49900),
    ], key=lambda d: (d.day, str(d.tenant_id), d.currency))
    assert {d.tenant_id for d in only_a} == {a}


def test_stripe_on_but_incomplete_fails_at_boot_naming_the_variable():
    # given: Stripe on, the price of one tier missing
    env = {**os.environ, "STRIPE_ENABLED": "true", "STRIPE_API_KEY": "sk_test_x", "STRIPE_WEBHOOK_SECRET": "whsec_x",
           "STRIPE_PRICE_STANDARD": "p1", "STRIPE_PRICE_PROFESSIONAL": "p2", "STRIPE_PRICE_ENTERPRISE": "",
           "STRIPE_USAGE_PRICE_STANDARD": "u1", "STRIPE_USAGE_PRICE_PROFESSIONAL": "u2",
           "STRIPE_USAGE_PRICE_ENTERPRISE": "u3"}
    # when
    failed = subprocess.run([sys.executable, "-c", "import control_plane.settings.base"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    complete = subprocess.run([sys.executable, "-c", "import control_plane.settings.base"], cwd=REPO,
                              env={**env, "STRIPE_PRICE_ENTERPRISE": "p3"}, capture_output=True, text=True,
                              timeout=60)
    # then
    assert failed.returncode == 1
    assert ("STRIPE_ENABLED=true but STRIPE_PRICE_ENTERPRISE is unset; set it or set STRIPE_ENABLED=false."
            in failed.stderr)
    assert complete.returncode == 0, complete.stderr


def test_only_the_gateway_imports_stripe():
    # STYLE.md: one module talks to Stripe's SDK; everything else goes through it
    importing = sorted(
        str(path.relative_to(REPO)) for package in ("billing", "common", "control_plane", "data_plane", "guardrails",
                                                     "tenants", "tests")
        for path in (REPO / package).rglob("*.py")
        if any(line.strip().startswith(("import stripe", "from stripe")) for line in path.read_text().splitlines()))
    assert importing == ["billing/stripe_gateway.py"]
