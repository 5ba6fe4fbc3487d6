"""django-tenants' Postgres backend, taking on the schema's role with the schema (tenants.db_roles).

django-tenants sets the search_path lazily, in the first cursor after a switch. Here that one statement
also sets the role: ``SELECT set_config('role', ...), set_config('search_path', ...)``, one round trip,
preparable (one statement, bound parameters). The role follows the schema everywhere the schema is set
(authentication, middleware, ASGI, Celery tasks, schema_context), so it cannot be forgotten separately.

The backend remembers what the server has (search_path and role) and sends nothing when a switch comes
back to it: entering a tenant, leaving it and entering it again costs one statement, not two. What the
server has is forgotten whenever it may have changed without us: a rollback or a rollback to a savepoint
(a session SET is transactional) and a new connection, so a role can never leak from one request or task to
the next on a reused connection (CONN_MAX_AGE, Celery's connection reuse). A failure to set the role is
raised, never ignored: a query must not run under the previous schema's role.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import utils
from django.db.utils import ProgrammingError
from django_tenants.postgresql_backend import base as tenants_base
from django_tenants.utils import get_limit_set_calls, quote_schema_name
from psycopg.pq import TransactionStatus

from tenants import db_roles

NO_DB_ALIAS = "__no_db__"  # django.db.utils: the connection to the 'postgres' database (test setup)
SET_STATE_SQL = "SELECT set_config('role', %s, false), set_config('search_path', %s, false)"


class DatabaseWrapper(tenants_base.DatabaseWrapper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.owner_depth = 0  # > 0 inside db_roles.owner_context(): the login role, for DDL
        self._server_state: tuple[tuple[str, ...], str] | None = None  # (search_path, role) the server has
        self._role_names: dict[tuple[str, str], str] = {}
        super().__init__(*args, **kwargs)

    def _takes_roles(self) -> bool:
        return db_roles.roles_enabled() and self.alias != NO_DB_ALIAS and bool(self.settings_dict.get("NAME"))

    def role_for_current_schema(self) -> str:
        """The role the connection takes on in its current schema ('none': the login role)."""
        if self.owner_depth:
            return "none"
        key = (self.settings_dict["NAME"], self.schema_name)
        role = self._role_names.get(key)
        if role is None:
            role = self._role_names[key] = db_roles.role_for_schema(*key)
        return role

    def forget_session_state(self) -> None:
        """Code that set the role or search_path itself calls this: the next cursor sets both again."""
        self.search_path_set_schemas = None
        self._server_state = None

    def close(self) -> None:
        self._server_state = None
        super().close()

    def rollback(self) -> None:
        self._server_state = None
        super().rollback()

    def savepoint_rollback(self, sid: str) -> None:
        try:
            super().savepoint_rollback(sid)
        finally:
            self._server_state = None

    def _handle_search_path(self, cursor: Any = None) -> None:
        if not self._takes_roles():
            super()._handle_search_path(cursor)
            return
        if self._setting_search_path:
            return
        if get_limit_set_calls() and self.search_path_set_schemas:
            return
        if not self.schema_name:
            raise ImproperlyConfigured("Database schema not set. Did you forget to call set_schema() or set_tenant()?")
        search_paths = self._get_cursor_search_paths()
        role = self.role_for_current_schema()
        state = (tuple(search_paths), role)
        if state == self._server_state:
            self.search_path_set_schemas = search_paths
            return
        if self.connection.info.transaction_status == TransactionStatus.INERROR:
            # the transaction is aborted: the next statement fails whatever we send (or is the rollback)
            self.search_path_set_schemas = None
            return
        self._setting_search_path = True
        target = self.connection.cursor() if cursor is None else cursor
        try:
            with self.wrap_database_errors:
                target.execute(SET_STATE_SQL, [role, ",".join(quote_schema_name(s) for s in search_paths)])
        except utils.Error as error:
            self.search_path_set_schemas = None
            self._server_state = None
            if "does not exist" in str(error):
                raise ProgrammingError(
                    f"Cannot take on the database role {role!r} of schema {self.schema_name!r}: {error}. Create the "
                    "roles with `manage.py migrate_schemas` (or `manage.py tenant_roles_grant`), or set "
                    "DATABASE_TENANT_ROLES=false.") from error
            raise
        else:
            self.search_path_set_schemas = search_paths
            self._server_state = state
        finally:
            self._setting_search_path = False
            if cursor is None:
                target.close()
