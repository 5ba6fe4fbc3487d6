"""Celery entry points of the data plane. Thin: enter the tenant (TenantTask), call one service."""

from __future__ import annotations

import socket
from uuid import UUID

from celery import shared_task

from data_plane import services
from tenants.tasking import TenantTask


@shared_task(base=TenantTask, bind=True, acks_late=True)
def ping_answer_task(self, *, tenant_schema: str, ping_id: str) -> None:  # type: ignore[no-untyped-def]
    """Answer one ping inside its tenant's schema. Safe to deliver twice."""
    worker = self.request.hostname or socket.gethostname()
    services.ping_answer(tenant_schema=tenant_schema, ping_id=UUID(ping_id), worker=worker)
