"""Open a tenant's Stripe customer and subscription (idempotent). Thin: parse, call one service, print."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing import stripe_services as services
from billing import stripe_wiring as wiring
from tenants.selectors import tenant_get


class Command(BaseCommand):
    help = "Give a tenant its Stripe customer and a subscription to its tier (safe to run again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--slug", required=True, help="The tenant's slug.")

    def handle(self, *args: Any, slug: str, **options: Any) -> None:
        account = services.billing_account_open(tenant=tenant_get(slug=slug), gateway=wiring.stripe_gateway(),
                                                catalog=wiring.stripe_catalog(), actor=services.BILLING_ACTOR)
        self.stdout.write(f"{slug}: {account.status} customer={account.stripe_customer_id} "
                          f"subscription={account.stripe_subscription_id} tier={account.tier}")
