"""Turn a tenant's payload encryption on or off (audited). Thin: parse, call one service, print."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from common.actors import Actor
from control_plane.encryption import services
from tenants.selectors import tenant_get


class Command(BaseCommand):
    help = ("Encrypt (or stop encrypting) the tenant's checkpoint and memory payloads from now on; what is stored "
            "stays as it is and reads back either way.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--on", dest="encrypts", action="store_true")
        group.add_argument("--off", dest="encrypts", action="store_false")

    def handle(self, *args: Any, tenant: str, encrypts: bool, **options: Any) -> None:
        keyring = services.tenant_payload_encryption_set(
            tenant=tenant_get(slug=tenant), encrypts_payloads=encrypts,
            actor=Actor(kind="system", id="manage.py keys_payload_policy"))
        self.stdout.write(f"Tenant {tenant!r}: payload encryption {'on' if keyring.encrypts_payloads else 'off'}.")
