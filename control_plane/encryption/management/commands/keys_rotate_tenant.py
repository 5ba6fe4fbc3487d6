"""Rotate a tenant's data key and re-seal its values. Thin: parse, call one service, print."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from common.actors import Actor
from control_plane.encryption import services
from tenants.selectors import tenant_get


class Command(BaseCommand):
    help = ("Add a data key version for the tenant (new writes use it at once), re-seal every sealed value in "
            "batches, then retire the older versions. Reads and writes go on meanwhile.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument("--batch", type=int, default=500, help="Rows re-sealed per transaction.")
        parser.add_argument("--grace-seconds", type=float, default=None,
                            help="How long other processes may still seal with the old version (default: "
                                 "ENCRYPTION_CACHE_SECONDS) before the last pass and the retirement.")

    def handle(self, *args: Any, tenant: str, batch: int, grace_seconds: float | None, **options: Any) -> None:
        if batch < 1:
            raise CommandError("--batch is at least 1.")
        report = services.tenant_data_key_rotate(
            tenant=tenant_get(slug=tenant), actor=Actor(kind="system", id="manage.py keys_rotate_tenant"),
            batch=batch, grace_seconds=grace_seconds)
        self.stdout.write(f"Tenant {tenant!r}: data key version {report.from_version} -> {report.to_version}; "
                          f"re-sealed {report.resealed.total} values {report.resealed.resealed}.")
        if report.remaining:
            raise CommandError(f"{report.remaining} values still sealed with an older version do not open "
                               f"({report.resealed.unreadable}); versions kept. See the log, then run it again.")
        self.stdout.write(f"Retired versions {report.retired_versions}.")
