"""Re-seal v1 values (and any of an older data key version) with each tenant's current data key. Thin."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from common.actors import Actor
from control_plane.encryption import services
from tenants.selectors import tenant_get, tenant_list


class Command(BaseCommand):
    help = "Re-seal every v1 value (one process-wide key) as v2 (the tenant's data key), for one tenant or all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="The tenant's slug (default: every active or suspended tenant).")
        parser.add_argument("--batch", type=int, default=500, help="Rows re-sealed per transaction.")

    def handle(self, *args: Any, tenant: str | None, batch: int, **options: Any) -> None:
        tenants = [tenant_get(slug=tenant)] if tenant else [
            t for t in tenant_list() if t.status != "deleted" and t.schema_name != "public"]
        actor = Actor(kind="system", id="manage.py keys_reseal")
        for each in tenants:
            report = services.tenant_values_reseal(tenant=each, actor=actor, batch=batch)
            self.stdout.write(f"Tenant {each.slug!r}: re-sealed {report.total} values {report.resealed}"
                              + (f"; unreadable {report.unreadable}" if report.unreadable else ""))
