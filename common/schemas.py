"""Fail closed when tenant data is about to be read from a schema other than the caller's tenant."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from django.db import connection
from django_tenants.utils import schema_context


class WrongSchema(RuntimeError):
    """A programming error: code touched tenant data without entering that tenant's schema."""


def require_schema(tenant_schema: str) -> None:
    """Raise WrongSchema unless the connection is currently scoped to ``tenant_schema``."""
    current = getattr(connection, "schema_name", None)
    if current != tenant_schema:
        raise WrongSchema(f"Expected the connection in schema {tenant_schema!r}, found {current!r}.")


def in_schema(tenant_schema: str) -> AbstractContextManager[object]:
    """Enter ``tenant_schema`` for the block, unless the connection is already in it: entering and leaving a
    schema each make the next query re-send ``SET search_path`` (a round trip), even into the same one."""
    if getattr(connection, "schema_name", None) == tenant_schema:
        return nullcontext()
    return schema_context(tenant_schema)
