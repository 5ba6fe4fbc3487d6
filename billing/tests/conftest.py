"""Fixtures of the billing tests: a crafted day of usage in two tenants; the local fake of Stripe's API
(billing/tests/fake_stripe.py) and the real gateway (the official SDK) pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django_tenants.utils import schema_context

from billing import services
from billing.stripe_gateway import StripeGateway
from billing.stripe_services import StripeCatalog
from billing.tests.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe
from billing.tests.factories import finished_run, journal

DAY = datetime(2026, 2, 10, tzinfo=timezone.utc)  # February 2026: 28 days
INFRA_PER_MONTH = Decimal("2800")  # so 100 USD a day


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


@pytest.fixture
def crafted_day(tenant_a, tenant_b):
    """Tenant A (standard: 99 USD a month, 4.00 per million tokens): sessions R1 (with sub-run R2), R3 and R4
    (a tool call only). Tenant B (professional: 499, 3.50): session R5, with a replayed call and one more call
    the next day. Both tenants exist since January."""
    Tenant = type(tenant_a.tenant)  # the registry's model, without importing it across contexts
    Tenant.objects.filter(id=tenant_a.tenant.id).update(created_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    Tenant.objects.filter(id=tenant_b.tenant.id).update(created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                                                        sla_tier="professional")
    with schema_context(tenant_a.schema):
        r1 = finished_run(finished_at=at(10), started_at=at(9))
        r2 = finished_run(agent="researcher", parent=r1, finished_at=at(9 + 50 / 60), started_at=at(9 + 5 / 60))
        r3 = finished_run(finished_at=at(11), started_at=at(10.25))
        r4 = finished_run(finished_at=at(12), started_at=at(11.25))
        journal(r1, step=0, key="c1", finished_at=at(9 + 10 / 60), input_tokens=200_000, output_tokens=50_000,
                cached_input_tokens=200_000, cost_usd="0.04")
        journal(r1, step=1, key="c2", finished_at=at(9 + 20 / 60), input_tokens=200_000, output_tokens=50_000,
                cost_usd="0.06")
        journal(r2, step=0, key="c3", finished_at=at(9 + 40 / 60), input_tokens=100_000, output_tokens=25_000,
                cost_usd="0.05")
        journal(r3, step=0, key="c4", finished_at=at(10.5), input_tokens=100_000, output_tokens=25_000,
                cost_usd="0.06")
        journal(r4, step=0, key="t1", kind="tool", name="calculator", finished_at=at(11.5))
    with schema_context(tenant_b.schema):
        r5 = finished_run(agent="support", finished_at=at(15), started_at=at(13.75))
        c5 = journal(r5, step=0, key="c5", name="openai/gpt-4o", finished_at=at(14), input_tokens=100_000,
                     output_tokens=20_000, cost_usd="0.45")
        journal(r5, step=1, key="c6", name="openai/gpt-4o", finished_at=at(14.5), reused_from=c5.id,
                input_tokens=100_000, output_tokens=20_000, cost_usd="0.45")
        journal(r5, step=2, key="c7", name="openai/gpt-4o", finished_at=at(24), input_tokens=1000, cost_usd="0.01")
    for provisioned in (tenant_a, tenant_b):
        services.usage_collect_and_roll_up(tenant=provisioned.tenant, now=at(25))
    return tenant_a, tenant_b


CATALOG = StripeCatalog(
    fee_prices={"standard": "price_fee_standard", "professional": "price_fee_professional",
                "enterprise": "price_fee_enterprise"},
    usage_prices={"standard": "price_tokens_standard", "professional": "price_tokens_professional",
                  "enterprise": "price_tokens_enterprise"},
    meter_event_name="agentplane_llm_tokens",
)


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


def gateway_for(fake: FakeStripe, *, max_network_retries: int = 0, timeout_seconds: float = 0.5) -> StripeGateway:
    return StripeGateway(api_key=API_KEY, api_base=fake.url, webhook_secret=WEBHOOK_SECRET,
                         timeout_seconds=timeout_seconds, connect_timeout_seconds=0.5,
                         max_network_retries=max_network_retries)


@pytest.fixture
def gateway(fake_stripe: FakeStripe) -> StripeGateway:
    """The gateway without the SDK's own retries: each test decides who retries."""
    return gateway_for(fake_stripe)


@pytest.fixture
def stripe_settings(settings, fake_stripe: FakeStripe):  # type: ignore[no-untyped-def]
    """Settings as a deployment with Stripe on would have them, pointed at the fake (for APIs and tasks)."""
    settings.STRIPE_ENABLED = True
    settings.STRIPE_API_KEY = API_KEY
    settings.STRIPE_API_BASE = fake_stripe.url
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_PRICE_IDS = dict(CATALOG.fee_prices)
    settings.STRIPE_USAGE_PRICE_IDS = dict(CATALOG.usage_prices)
    settings.STRIPE_METER_EVENT_NAME = CATALOG.meter_event_name
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    settings.STRIPE_TIMEOUT_SECONDS = 0.5
    settings.BILLING_GRACE_DAYS = 7
    settings.BILLING_USAGE_SETTLE_MINUTES = 15
    return settings
