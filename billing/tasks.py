"""Celery entry points of billing (metering, budgets). Thin: find the tenant, call one service.

The collector runs for every tenant that is not deleted, suspended ones included: a suspended tenant's runs that
were already working still finish and are still billed. A tenant task is not a ``TenantTask`` for that reason
(it drops suspended tenants); the services enter the tenant's schema themselves for what they read there.
"""

from __future__ import annotations

import logging

from celery import shared_task

from billing import services

logger = logging.getLogger(__name__)


def _tenant(tenant_schema: str):  # type: ignore[no-untyped-def]
    from tenants.errors import TenantNotFound
    from tenants.selectors import tenant_get_by_schema

    try:
        tenant = tenant_get_by_schema(tenant_schema=tenant_schema)
    except TenantNotFound:
        return None
    return None if tenant.status == "deleted" else tenant


def _metered_schemas() -> list[str]:
    from tenants.selectors import tenant_list

    return list(tenant_list().exclude(status="deleted").values_list("schema_name", flat=True))


@shared_task(acks_late=True)
def usage_collect_task(*, tenant_schema: str) -> dict:  # type: ignore[type-arg]
    """Collect one tenant's new usage records, then recompute the rollups of the hours and days they fell in.
    Safe to deliver twice: records are unique per source, rollups are replaced."""
    from django.db import connection

    connection.set_schema_to_public()
    tenant = _tenant(tenant_schema)
    if tenant is None:
        logger.warning("Dropping usage collection for %s: no such tenant, or deleted", tenant_schema)
        return {"inserted": 0}
    collected = services.usage_collect_and_roll_up(tenant=tenant)
    return {"effects_read": collected.effects_read, "runs_read": collected.runs_read, "inserted": collected.inserted}


@shared_task(acks_late=True)
def usage_collect_all_task() -> int:
    """Fan the collector out to every tenant not deleted (scheduled every minute by Celery beat)."""
    schemas = _metered_schemas()
    for schema in schemas:
        usage_collect_task.delay(tenant_schema=schema)
    return len(schemas)


@shared_task(acks_late=True)
def usage_rollup_task(*, tenant_schema: str) -> int:
    """Recompute one tenant's rollups of the current and previous hour and day. Idempotent."""
    from django.db import connection

    connection.set_schema_to_public()
    tenant = _tenant(tenant_schema)
    if tenant is None:
        return 0
    return services.usage_rollup_recent(tenant=tenant)


@shared_task(acks_late=True)
def usage_rollup_all_task() -> int:
    """Fan the rollups out to every tenant not deleted (scheduled every five minutes by Celery beat)."""
    schemas = _metered_schemas()
    for schema in schemas:
        usage_rollup_task.delay(tenant_schema=schema)
    return len(schemas)


@shared_task(acks_late=True)
def spend_reservations_expire_task() -> int:
    """Release the LLM-call holds of workers that died mid-call (scheduled every minute by Celery beat).
    Idempotent."""
    return services.spend_reservations_expire()
