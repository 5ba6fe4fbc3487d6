"""Verify tenants' audit chains: ``manage.py audit_verify [--tenant SLUG ...]``. Thin: parse, call one
selector per tenant, print. Exits 1 when any chain is broken (or a named tenant does not exist)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_tenants.utils import schema_context

from control_plane.audit.selectors import audit_chain_verify
from tenants import selectors as tenant_selectors
from tenants.errors import TenantNotFound


class Command(BaseCommand):
    help = ("Walk each tenant's audit hash chain and compare its head with the anchor kept in the public schema; "
            "print OK or the first broken sequence number and why. Exit status 1 if any chain is broken.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", action="append", dest="slugs", metavar="SLUG", default=[],
                            help="A tenant's slug (repeat for several). Default: every tenant not deleted.")

    def handle(self, *args: Any, slugs: list[str], **options: Any) -> None:
        if slugs:
            try:
                tenants = [tenant_selectors.tenant_get(slug=slug) for slug in slugs]
            except TenantNotFound as exc:
                raise CommandError(f"{exc.message} List tenants with GET /v1/platform/tenants.") from None
        else:
            tenants = [t for t in tenant_selectors.tenant_list().order_by("slug") if t.status != "deleted"]
        broken = []
        for tenant in tenants:
            if tenant.status == "deleted":
                self.stdout.write(f"{tenant.slug}: skipped, deleted (its schema was dropped)")
                continue
            with schema_context(tenant.schema_name):
                report = audit_chain_verify(tenant_schema=tenant.schema_name)
            if report.ok:
                self.stdout.write(f"{tenant.slug}: OK, {report.checked} events, head seq {report.head_seq} "
                                  f"{report.head_hash}")
            else:
                failure = report.first_failure
                assert failure is not None
                broken.append(tenant.slug)
                self.stdout.write(f"{tenant.slug}: BROKEN at seq {failure.seq} ({failure.kind}): {failure.message} "
                                  f"[{report.checked} events intact before it]")
        if broken:
            raise CommandError(f"Audit chain broken for {len(broken)} of {len(tenants)} tenants: "
                               f"{', '.join(broken)}.", returncode=1)
        self.stdout.write(f"{len(tenants)} tenants verified.")
