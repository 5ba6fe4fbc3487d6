"""Defence in depth for tenant isolation: a Postgres role per tenant schema, taken on with the schema.

Every schema the app enters has a NOLOGIN role of its own. Whenever the connection's search_path is set
(tenants.postgresql_backend), the same statement sets the role: in tenant A's schema the session is A's
role, which can use A's schema and the public tables and nothing else; in the public schema it is the
public role, which can use no tenant schema at all. So SQL that names another tenant's schema (the
checkpoint store given a wrong name) or a tenant query run without entering the tenant (a forgotten
switch) fails with "permission denied" instead of reading another tenant's rows.

- ``<prefix>_public``: DML on the tables and sequences of the public schema (now and, through default
  privileges, those later migrations create).
- ``<prefix>_<schema>`` for each tenant schema: member of the public role, USAGE on its schema, DML on its
  tables and sequences (now and, through default privileges, later).
- DDL (migrations, provisioning, deletion) runs as the login role, the owner, inside ``owner_context()``;
  migrate_schemas does so by itself (``migration_executor``, GET_EXECUTOR_FUNCTION), then (re)grants.

Roles are cluster-wide while grants live in one database, and a cluster may hold the dev database, the
test database and other checkouts' databases: the prefix is derived from the database's name. Names stay
within Postgres' 63 bytes. Nothing here imports models: the database backend uses it.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from django.conf import settings
from django.db import connections, transaction

PUBLIC_SCHEMA = "public"
MAX_IDENTIFIER_BYTES = 63
_SAFE_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]*$")
TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE, TRUNCATE"
SEQUENCE_PRIVILEGES = "USAGE, SELECT, UPDATE"


def roles_enabled() -> bool:
    """DATABASE_TENANT_ROLES: the connection takes on each schema's role (off: a login without CREATEROLE)."""
    return bool(getattr(settings, "DATABASE_TENANT_ROLES", False))


def role_prefix(database_name: str) -> str:
    """``ap_`` and 8 hex digits of the database's name: unique to the database within its cluster."""
    return "ap_" + hashlib.sha256(database_name.encode()).hexdigest()[:8]


def role_for_schema(database_name: str, schema_name: str) -> str:
    """The role of ``schema_name`` in ``database_name`` (the public schema's is the public role)."""
    prefix = role_prefix(database_name)
    name = f"{prefix}_{schema_name}"
    if _SAFE_SCHEMA.match(schema_name) and len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    return f"{prefix}_h{hashlib.sha256(schema_name.encode()).hexdigest()[:24]}"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@contextmanager
def owner_context(using: str = "default") -> Iterator[None]:
    """Run the block as the login role (the owner of every schema): for DDL, provisioning and deletion.

    Reentrant. The next query inside sends ``RESET ROLE`` (with the search_path, one statement); the first
    one after it takes the schema's role again."""
    connection = connections[using]
    connection.owner_depth += 1
    connection.search_path_set_schemas = None
    try:
        yield
    finally:
        connection.owner_depth -= 1
        connection.search_path_set_schemas = None


def _database_name(connection: Any) -> str:
    return connection.settings_dict["NAME"]


def _create_role_sql(role: str) -> str:
    # CREATE ROLE has no IF NOT EXISTS. A role left by an earlier database of the same name (a test database
    # dropped and created again) holds no privilege in this one; it is reused.
    literal = role.replace("'", "''")
    return (f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{literal}') THEN "
            f"CREATE ROLE {_quote(role)} NOLOGIN; END IF; "
            # a login that is not a superuser may SET ROLE only to roles it is a member of
            # (Postgres 16+: with the SET option, which a CREATEROLE login's automatic grant lacks)
            f"IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN "
            f"IF current_setting('server_version_num')::int >= 160000 THEN "
            f"IF NOT pg_has_role(session_user, '{literal}', 'SET') THEN "
            f"EXECUTE format('GRANT %I TO %I WITH SET TRUE', '{literal}', session_user); END IF; "
            f"ELSIF NOT pg_has_role(session_user, '{literal}', 'MEMBER') THEN "
            f"EXECUTE format('GRANT %I TO %I', '{literal}', session_user); END IF; END IF; END $$")


def _schema_grants_sql(role: str, schema: str) -> list[str]:
    quoted_role, quoted_schema = _quote(role), _quote(schema)
    return [
        f"GRANT USAGE ON SCHEMA {quoted_schema} TO {quoted_role}",
        f"GRANT {TABLE_PRIVILEGES} ON ALL TABLES IN SCHEMA {quoted_schema} TO {quoted_role}",
        f"GRANT {SEQUENCE_PRIVILEGES} ON ALL SEQUENCES IN SCHEMA {quoted_schema} TO {quoted_role}",
        # tables and sequences that later migrations create (as this login role, the owner) are granted too
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {quoted_schema} GRANT {TABLE_PRIVILEGES} ON TABLES TO {quoted_role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {quoted_schema} GRANT {SEQUENCE_PRIVILEGES} ON SEQUENCES "
        f"TO {quoted_role}",
    ]


def _execute(statements: Iterable[str], using: str) -> None:
    connection = connections[using]
    with transaction.atomic(using=using), owner_context(using), connection.cursor() as cursor:
        # one transaction-scoped lock: two processes granting at once would fail with "tuple concurrently
        # updated" on the catalog rows
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('agentplane.db_roles'))")
        for statement in statements:
            cursor.execute(statement)


def public_role_grant(*, using: str = "default") -> str:
    """Create (if missing) the public role and grant it the public schema's tables. Idempotent."""
    role = role_for_schema(_database_name(connections[using]), PUBLIC_SCHEMA)
    _execute([_create_role_sql(role), *_schema_grants_sql(role, PUBLIC_SCHEMA)], using)
    return role


def tenant_role_grant(*, tenant_schema: str, using: str = "default") -> str:
    """Create (if missing) the tenant schema's role and grant it its schema and the public role. Idempotent."""
    if tenant_schema == PUBLIC_SCHEMA:
        raise ValueError("The public schema's role is granted by public_role_grant.")
    connection = connections[using]
    database = _database_name(connection)
    role, public_role = role_for_schema(database, tenant_schema), role_for_schema(database, PUBLIC_SCHEMA)
    _execute([_create_role_sql(public_role), _create_role_sql(role), f"GRANT {_quote(public_role)} TO {_quote(role)}",
              *_schema_grants_sql(role, tenant_schema)], using)
    return role


def tenant_role_drop(*, tenant_schema: str, using: str = "default") -> None:
    """Drop the tenant schema's role, and what it was granted in this database (after the schema is gone)."""
    connection = connections[using]
    role = role_for_schema(_database_name(connection), tenant_schema)
    literal = role.replace("'", "''")
    _execute([f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{literal}') THEN "
              f"EXECUTE 'DROP OWNED BY {_quote(role)}'; EXECUTE 'DROP ROLE {_quote(role)}'; END IF; END $$"], using)


def migration_executor(codename: str | None = None) -> type:
    """django-tenants' migration executor (GET_EXECUTOR_FUNCTION), running as the owner, then granting the
    migrated schemas' roles: ``migrate_schemas`` sets up the roles of every existing tenant by itself. In a tenant
    schema the shared apps' migrations are only recorded (``_shared_apps_recorded_only``)."""
    from django_tenants.migration_executors import get_executor

    base = get_executor(codename)
    with_roles = roles_enabled()
    recorded_only = nullcontext if settings.TENANT_MIGRATIONS_RENDER_SHARED_APPS else _shared_apps_recorded_only

    class OwnerMigrationExecutor(base):  # type: ignore[misc, valid-type]
        def run_migrations(self, tenants: list[str] | None = None) -> None:
            schemas = list(tenants or [])  # the executor empties the list it is given
            with owner_context(self.TENANT_DB_ALIAS) if with_roles else nullcontext(), recorded_only():
                super().run_migrations(tenants=tenants)
            if with_roles:
                _grant_schemas(schemas, self.TENANT_DB_ALIAS)

        def run_multi_type_migrations(self, tenants: list[tuple[str, str]]) -> None:
            schemas = [schema for schema, _ in tenants or []]
            with owner_context(self.TENANT_DB_ALIAS) if with_roles else nullcontext(), recorded_only():
                super().run_multi_type_migrations(tenants=tenants)
            if with_roles:
                _grant_schemas(schemas, self.TENANT_DB_ALIAS)

    OwnerMigrationExecutor.__name__ = f"Owner{base.__name__}"
    return OwnerMigrationExecutor


_recording = threading.local()  # set while this thread migrates schemas through our executor
_HOOK_LOCK = threading.Lock()


@contextmanager
def _shared_apps_recorded_only() -> Iterator[None]:
    """In a tenant schema, apply the shared apps' migrations as ``--fake`` does: recorded, not run.

    There they change nothing: django-tenants' router keeps the shared apps' tables (and their RunPython and
    RunSQL) in public. Yet Django renders each one's model states, which was 60 % of provisioning a tenant
    (oauth2_provider's migrations alone, 1.7 s of 2.8). The tenant apps' migrations do not depend on the shared
    apps' states (no dependency or relation crosses), so leaving those states out changes nothing they do.
    The hook is installed once per process and acts only in the thread inside this context (two provisionings
    at once in a web process cannot undo each other's).
    """
    _install_recording_hook()
    previous = getattr(_recording, "active", False)
    _recording.active = True
    try:
        yield
    finally:
        _recording.active = previous


def _install_recording_hook() -> None:
    from django.apps import apps
    from django.db.migrations.executor import MigrationExecutor

    with _HOOK_LOCK:
        if getattr(MigrationExecutor.apply_migration, "records_shared_apps", False):
            return
        tenant_apps = {config.label for config in apps.get_app_configs() if config.name in settings.TENANT_APPS}
        apply = MigrationExecutor.apply_migration

        def apply_migration(executor: Any, state: Any, migration: Any, fake: bool = False,
                            fake_initial: bool = False) -> Any:
            in_tenant = getattr(executor.connection, "schema_name", PUBLIC_SCHEMA) != PUBLIC_SCHEMA
            if getattr(_recording, "active", False) and in_tenant and migration.app_label not in tenant_apps:
                fake = True
            return apply(executor, state, migration, fake=fake, fake_initial=fake_initial)

        apply_migration.records_shared_apps = True  # type: ignore[attr-defined]
        MigrationExecutor.apply_migration = apply_migration  # type: ignore[method-assign]


def _grant_schemas(schemas: list[str], using: str) -> None:
    for schema in schemas:
        if schema == PUBLIC_SCHEMA:
            public_role_grant(using=using)
        else:
            tenant_role_grant(tenant_schema=schema, using=using)
