"""A tenant's schema migrated with the shared apps' migrations only recorded is the schema a full migration
makes (tenants.db_roles._shared_apps_recorded_only): same tables, columns, constraints, indexes, triggers and
recorded migrations."""

from __future__ import annotations

import pytest
from django.db import connection

from conftest import destroy_tenant, provision_for_test
from tenants.db_roles import owner_context

CATALOG = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
       || a.attnotnull::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %(s)s AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
UNION ALL
SELECT 'constraint', c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(s)s
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = %(s)s
UNION ALL
SELECT 'trigger', pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(s)s AND NOT t.tgisinternal
"""


def _catalog(schema: str) -> list[tuple[str, str]]:
    with owner_context(), connection.cursor() as cursor:
        cursor.execute(CATALOG, {"s": schema})
        rows = [(kind, text.replace(f"{schema}.", "<schema>.").replace(f'"{schema}".', "<schema>."))
                for kind, text in cursor.fetchall()]
        cursor.execute(f'SELECT app, name FROM "{schema}".django_migrations ORDER BY app, name')
        rows += [("migration", f"{app}.{name}") for app, name in cursor.fetchall()]
    return sorted(rows)


@pytest.mark.django_db(transaction=True)
def test_recording_the_shared_apps_migrations_makes_the_schema_a_full_migration_makes(settings):
    # given: a tenant provisioned as always (the shared apps' migrations recorded, not rendered)
    fast = provision_for_test("migrated-fast")
    # and one migrated in full, every app's states rendered
    settings.TENANT_MIGRATIONS_RENDER_SHARED_APPS = True
    full = provision_for_test("migrated-full")
    try:
        # then: the two schemas are the same, object for object
        fast_catalog, full_catalog = _catalog(fast.tenant.schema_name), _catalog(full.tenant.schema_name)
        assert fast_catalog == full_catalog
        assert {kind for kind, _ in fast_catalog} == {"column", "constraint", "index", "trigger", "migration"}
        assert ("migration", "oauth2_provider.0001_initial") in fast_catalog  # recorded, as --fake records
    finally:
        destroy_tenant(fast.tenant)
        destroy_tenant(full.tenant)
