"""Celery entry points of billing. Thin: call one service."""

from __future__ import annotations

from celery import shared_task

from billing import services


@shared_task(acks_late=True)
def spend_reservations_expire_task() -> int:
    """Release the LLM-call holds of workers that died mid-call (scheduled every minute by Celery beat).
    Idempotent."""
    return services.spend_reservations_expire()
