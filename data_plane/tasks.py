"""Celery entry points of the data plane. Thin: enter the tenant (TenantTask), call one service."""

from __future__ import annotations

import logging
import socket
from uuid import UUID

from celery import shared_task

from data_plane import services
from tenants.tasking import TenantTask

logger = logging.getLogger(__name__)


@shared_task(base=TenantTask, bind=True, acks_late=True)
def ping_answer_task(self, *, tenant_schema: str, ping_id: str) -> None:  # type: ignore[no-untyped-def]
    """Answer one ping inside its tenant's schema. Safe to deliver twice."""
    worker = self.request.hostname or socket.gethostname()
    services.ping_answer(tenant_schema=tenant_schema, ping_id=UUID(ping_id), worker=worker)


@shared_task(base=TenantTask, bind=True, acks_late=True, max_retries=None)
def run_step_task(self, *, tenant_schema: str, run_id: str, expected_step: int) -> str:  # type: ignore[no-untyped-def]
    """Execute one step of a run. Safe to deliver twice: a stale step is dropped, a busy run retried later."""
    from django.conf import settings
    from django.db import InterfaceError, OperationalError, close_old_connections, connection

    tenant = connection.tenant
    try:
        outcome = services.run_step(tenant=tenant, run_id=UUID(run_id), expected_step=expected_step)
    except (OperationalError, InterfaceError):
        # The database went away under the step (restart, failover): nothing was committed, so retry it.
        logger.warning("Step %s of run %s lost its database connection; retrying", expected_step, run_id,
                       exc_info=True)
        close_old_connections()
        raise self.retry(countdown=1, max_retries=None) from None
    except Exception:
        # A defect, not a transient failure: fail the run with a reason instead of leaving it running forever.
        logger.exception("Step %s of run %s failed unexpectedly", expected_step, run_id)
        services.run_step_fail(tenant=tenant, run_id=UUID(run_id), code="internal_error",
                               message=f"Step {expected_step} failed unexpectedly; the error was logged. "
                                       "Retry the run, and report it if it fails again.")
        return "failed"
    if outcome.kind == "busy":
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    if outcome.kind == "transient":
        if self.request.retries >= settings.RUN_STEP_MAX_TRANSIENT_RETRIES:
            services.run_step_fail(tenant=tenant, run_id=UUID(run_id), code="provider_unavailable",
                                   message=f"Step {expected_step} kept failing after {self.request.retries} retries; "
                                           "retry the run when the provider is back.")
            return "failed"
        raise self.retry(countdown=min(2 ** self.request.retries, 60), max_retries=None,
                         kwargs={**self.request.kwargs, "expected_step": outcome.step})
    return outcome.kind


@shared_task(base=TenantTask, bind=True, acks_late=True)
def checkpoints_prune_task(self, *, tenant_schema: str) -> int:  # type: ignore[no-untyped-def]
    """Prune one tenant's checkpoints past its tier's retention. Idempotent."""
    from django.db import connection

    return services.checkpoints_prune(tenant=connection.tenant)


@shared_task(acks_late=True)
def checkpoints_prune_all_task() -> int:
    """Fan out the retention task to every active tenant (scheduled daily by Celery beat)."""
    from tenants.selectors import tenant_list

    schemas = list(tenant_list(status="active").values_list("schema_name", flat=True))
    for schema in schemas:
        checkpoints_prune_task.delay(tenant_schema=schema)
    return len(schemas)


@shared_task(base=TenantTask, bind=True, acks_late=True)
def memories_expire_task(self, *, tenant_schema: str) -> int:  # type: ignore[no-untyped-def]
    """Delete one tenant's memories past their expiry. Idempotent."""
    from django.db import connection

    return services.memories_expire(tenant=connection.tenant)


@shared_task(acks_late=True)
def memories_expire_all_task() -> int:
    """Fan out the memory expiry task to every active tenant (scheduled hourly by Celery beat)."""
    from tenants.selectors import tenant_list

    schemas = list(tenant_list(status="active").values_list("schema_name", flat=True))
    for schema in schemas:
        memories_expire_task.delay(tenant_schema=schema)
    return len(schemas)


@shared_task(base=TenantTask, bind=True, acks_late=True, autoretry_for=(ConnectionError,), retry_backoff=True,
             max_retries=5)
def run_learn_task(self, *, tenant_schema: str, run_id: str, feedback_id: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    """Learn from a finished run (facts, a lesson). Safe to deliver twice: what was learned is written once."""
    from django.db import connection

    from data_plane.runtime.wiring import chat_model

    learned = services.run_learn(tenant=connection.tenant, run_id=UUID(run_id), chat_model=chat_model(),
                                 feedback_id=UUID(feedback_id) if feedback_id else None)
    return {"facts": len(learned.facts), "lesson": str(learned.lesson) if learned.lesson else None}
