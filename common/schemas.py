"""Fail closed when tenant data is about to be read from a schema other than the caller's tenant."""

from __future__ import annotations

from django.db import connection


class WrongSchema(RuntimeError):
    """A programming error: code touched tenant data without entering that tenant's schema."""


def require_schema(tenant_schema: str) -> None:
    """Raise WrongSchema unless the connection is currently scoped to ``tenant_schema``."""
    current = getattr(connection, "schema_name", None)
    if current != tenant_schema:
        raise WrongSchema(f"Expected the connection in schema {tenant_schema!r}, found {current!r}.")
