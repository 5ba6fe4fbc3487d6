"""(Re)create and (re)grant the database roles of the public schema and every tenant schema.

Thin: parse, call the grants, print. ``migrate_schemas`` does the same for the schemas it migrates; this is
for a deployment that turns DATABASE_TENANT_ROLES on without migrating, or after restoring a dump.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_tenants.utils import schema_exists

from tenants import db_roles
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Create and grant the Postgres roles of the public schema and of every live tenant's schema."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--schema", action="append", default=[],
                            help="Only this tenant schema (repeatable); default: every live tenant's.")

    def handle(self, *args: Any, schema: list[str], **options: Any) -> None:
        if not db_roles.roles_enabled():
            raise CommandError("DATABASE_TENANT_ROLES is false: the app takes on no roles, nothing to grant.")
        with db_roles.owner_context():  # the roles may not exist yet: the command cannot take them on
            self.stdout.write(f"public: {db_roles.public_role_grant()}")
            live = Tenant.objects.exclude(status=Tenant.Status.DELETED).values_list("schema_name", flat=True)
            for tenant_schema in schema or list(live):
                if not schema_exists(tenant_schema):
                    raise CommandError(f"Schema {tenant_schema!r} does not exist; provision the tenant first.")
                self.stdout.write(f"{tenant_schema}: {db_roles.tenant_role_grant(tenant_schema=tenant_schema)}")
