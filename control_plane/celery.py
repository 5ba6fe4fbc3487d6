"""The Celery app of the data plane. Workers: ``celery -A control_plane worker``."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.base")

app = Celery("agentplane")

app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _warm_up(**_: object) -> None:
    """Each pool process (after the fork) loads the guardrails' models in the background."""
    from guardrails.services import guardrails_warm_up_in_background

    guardrails_warm_up_in_background()
