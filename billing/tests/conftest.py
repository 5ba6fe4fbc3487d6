"""Stripe billing's fixtures: the local fake of Stripe's API (billing/tests/fake_stripe.py) and the real gateway
(the official SDK) pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billing.stripe_gateway import StripeGateway
from billing.stripe_services import StripeCatalog
from billing.tests.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe

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
