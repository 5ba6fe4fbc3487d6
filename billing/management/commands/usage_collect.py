"""Collect usage now (what the every-minute Celery beat task does): new usage records of each tenant, then the
rollups of the hours and days they fall in. Thin: parse, call the services, print."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from billing import services
from tenants.selectors import tenant_get, tenant_list


class Command(BaseCommand):
    help = ("Record every tenant's finished LLM calls, tool calls and runs as usage records (once each, however "
            "often this runs) and recompute the hourly and daily rollups they fall in.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Only this tenant (its slug).")

    def handle(self, *args: object, **options: object) -> None:
        slug = options.get("tenant")
        tenants = [tenant_get(slug=str(slug))] if slug else list(tenant_list().exclude(status="deleted"))
        for tenant in tenants:
            collected = services.usage_collect_and_roll_up(tenant=tenant)
            self.stdout.write(f"{tenant.slug}: {collected.inserted} new usage records (read "
                              f"{collected.effects_read} calls, {collected.runs_read} runs)")
