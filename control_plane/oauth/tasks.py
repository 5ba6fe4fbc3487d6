"""Periodic housekeeping of the authorization server. Thin: call one service."""

from __future__ import annotations

from celery import shared_task

from control_plane.oauth import services


@shared_task(acks_late=True)
def oauth_tokens_clear_expired_task() -> None:
    """Delete expired grants and access tokens, and refresh tokens past their lifetime (scheduled hourly by
    Celery beat). Idempotent; revocation does not depend on it (an expired token is refused by its exp)."""
    services.oauth_tokens_clear_expired()
