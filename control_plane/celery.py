"""The Celery app of the data plane. Workers: ``celery -A control_plane worker``."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.base")

app = Celery("agentplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
