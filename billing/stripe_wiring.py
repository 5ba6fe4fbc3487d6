"""Builds the Stripe gateway and catalog from settings: the one place billing reads them (entry points call it)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings

from billing.errors import StripeNotConfigured
from billing.stripe_gateway import StripeGateway
from billing.stripe_services import StripeCatalog


def stripe_enabled() -> bool:
    return bool(settings.STRIPE_ENABLED)


def stripe_gateway() -> StripeGateway:
    """The gateway with the configured key, base address and timeouts. Raises StripeNotConfigured when off."""
    if not settings.STRIPE_ENABLED:
        raise StripeNotConfigured("Stripe billing is not enabled on this platform (STRIPE_ENABLED=false).")
    return StripeGateway(
        api_key=settings.STRIPE_API_KEY, api_base=settings.STRIPE_API_BASE,
        webhook_secret=settings.STRIPE_WEBHOOK_SECRET, timeout_seconds=settings.STRIPE_TIMEOUT_SECONDS,
        connect_timeout_seconds=settings.STRIPE_CONNECT_TIMEOUT_SECONDS,
        max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
        webhook_tolerance_seconds=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
    )


def stripe_catalog() -> StripeCatalog:
    return StripeCatalog(fee_prices=dict(settings.STRIPE_PRICE_IDS), usage_prices=dict(settings.STRIPE_USAGE_PRICE_IDS),
                         meter_event_name=settings.STRIPE_METER_EVENT_NAME)


def grace_period() -> timedelta:
    return timedelta(days=settings.BILLING_GRACE_DAYS)


def usage_settle_delay() -> timedelta:
    return timedelta(minutes=settings.BILLING_USAGE_SETTLE_MINUTES)
