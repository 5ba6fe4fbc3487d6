"""Rewrap every tenant's data keys under MASTER_KEY_CURRENT. Thin: parse, call one service, print."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from common.actors import Actor
from control_plane.encryption import services
from tenants.selectors import tenant_get


class Command(BaseCommand):
    help = ("Rewrap every tenant's data keys with the current master key (MASTER_KEY_CURRENT). Reads go on meanwhile; "
            "afterwards, a master key no longer listed as in use can be removed from MASTER_KEYS.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", action="append", default=[],
                            help="Only this tenant's keys (a slug; may be repeated). Default: every tenant's.")

    def handle(self, *args: Any, tenant: list[str], **options: Any) -> None:
        tenant_ids = [tenant_get(slug=slug).id for slug in tenant] or None
        report = services.master_key_rotate(actor=Actor(kind="system", id="manage.py keys_rotate_master"),
                                            tenant_ids=tenant_ids)
        self.stdout.write(f"Rewrapped {report.rewrapped} data keys of {report.tenants} tenants under master key "
                          f"{report.current_master_key_id!r}.")
        for master_key_id, count in sorted(report.still_used.items()):
            self.stdout.write(f"master key {master_key_id!r} wraps {count} active data keys")
