"""A task the database-role test loads into a real Celery worker (``--include tests.db_role_probe``).

It runs as a tenant task in tenant A and tries to read tenant B's schema by name, the way the checkpoint
store's SQL names its schema; what happened goes to a Redis key the test reads. Test code only."""

from __future__ import annotations

import json

import redis
from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from tenants.tasking import TenantTask


@shared_task(base=TenantTask, name="tests.db_role_probe.read_other_schema_task")
def read_other_schema_task(*, tenant_schema: str, other_schema: str, report_key: str) -> None:
    """Read the own schema's pings, then another schema's, and report each outcome."""
    report: dict[str, object] = {}
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT current_user, count(*) FROM "{tenant_schema}".data_plane_ping')
        report["role"], report["own_pings"] = cursor.fetchone()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f'SELECT count(*) FROM "{other_schema}".data_plane_ping')
            report["other"] = f"read {cursor.fetchone()[0]} pings"
    except DatabaseError as error:
        report["other"] = str(error).splitlines()[0]
    redis.Redis.from_url(settings.CELERY_BROKER_URL).set(report_key, json.dumps(report), ex=300)
