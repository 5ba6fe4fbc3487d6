"""Stripe billing's Celery tasks. Thin: read the wiring, call one service, and own the retry policy.

They run in the public schema (billing is a shared app) and are idempotent: each Stripe request carries an
idempotency key derived from what it does, so a redelivered or retried task bills nothing twice.
Registered through CELERY_IMPORTS (control_plane/settings/base.py); the two periodic ones are in the beat schedule.
"""

from __future__ import annotations

from celery import shared_task
from django.db import connection
from django.utils import timezone

from billing import stripe_services as services
from billing import stripe_wiring as wiring
from billing.errors import StripeUnavailable


@shared_task(bind=True, acks_late=True, autoretry_for=(StripeUnavailable,), retry_backoff=True, max_retries=8)
def billing_account_open_task(self, *, tenant_slug: str) -> str:  # type: ignore[no-untyped-def]
    """Open the tenant's Stripe customer and subscription (after provisioning). Safe to run twice."""
    from tenants.selectors import tenant_get

    connection.set_schema_to_public()
    account = services.billing_account_open(tenant=tenant_get(slug=tenant_slug), gateway=wiring.stripe_gateway(),
                                            catalog=wiring.stripe_catalog(), actor=services.BILLING_ACTOR)
    return account.status


@shared_task(bind=True, acks_late=True, autoretry_for=(StripeUnavailable,), retry_backoff=True, max_retries=8)
def usage_report_all_task(self) -> int:  # type: ignore[no-untyped-def]
    """Report every closed hour of LLM usage to Stripe (every 15 minutes by beat). Safe to run twice."""
    if not wiring.stripe_enabled():
        return 0
    connection.set_schema_to_public()
    run = services.usage_report_all(gateway=wiring.stripe_gateway(), event_name=wiring.stripe_catalog().meter_event_name,
                                    now=timezone.now(), settle=wiring.usage_settle_delay())
    return len(run.reported)


@shared_task(acks_late=True)
def billing_grace_expire_task() -> int:
    """Suspend the tenants whose payment is overdue past the grace period (every 15 minutes by beat)."""
    if not wiring.stripe_enabled():
        return 0
    connection.set_schema_to_public()
    return len(services.billing_grace_expire(now=timezone.now()))
