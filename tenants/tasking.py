"""Celery tasks that run inside one tenant's schema. The tenant travels with the task, explicitly.

A tenant task takes ``tenant_schema`` as a keyword argument. Before the body runs, the worker's
connection is put on the public schema, the tenant is looked up (cached for 2 s) and must be active, and the body runs
inside ``tenant_context``; afterwards the connection goes back to public. A task for a suspended or
deleted tenant is dropped with a log line (retrying would not help), never run in another schema.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any

from celery import Task
from celery.signals import task_postrun, task_prerun
from django.db import connection
from django_tenants.utils import tenant_context

from tenants.errors import TenantNotActive
from tenants.selectors import tenant_get_active_by_schema

logger = logging.getLogger(__name__)


# An active tenant found by a worker is trusted for this long before it is looked up again: a run's
# steps do not each pay a query, and a suspension reaches every worker within this time.
ACTIVE_TENANT_CACHE_SECONDS = 2.0
_active: dict[str, tuple[float, Any]] = {}


def _active_tenant(tenant_schema: str) -> Any:
    """The active tenant owning the schema (briefly cached). Raises TenantNotActive."""
    cached = _active.get(tenant_schema)
    now = monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    connection.set_schema_to_public()
    tenant = tenant_get_active_by_schema(tenant_schema=tenant_schema)
    _active[tenant_schema] = (now + ACTIVE_TENANT_CACHE_SECONDS, tenant)
    return tenant


class TenantTask(Task):
    """Base class for tasks over one tenant's data: ``@shared_task(base=TenantTask)``."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tenant_schema = kwargs.get("tenant_schema")
        if not isinstance(tenant_schema, str) or not tenant_schema:
            raise TypeError(f"{self.name} is a tenant task: pass tenant_schema=<schema name> as a keyword.")
        connection.set_schema_to_public()
        try:
            tenant = _active_tenant(tenant_schema)
        except TenantNotActive as exc:
            logger.warning("Dropping %s[%s]: %s", self.name, self.request.id, exc.message)
            return None
        with tenant_context(tenant):
            return super().__call__(*args, **kwargs)


@task_prerun.connect
def _start_on_public_schema(**_: Any) -> None:
    connection.set_schema_to_public()


@task_postrun.connect
def _end_on_public_schema(**_: Any) -> None:
    connection.set_schema_to_public()
