from __future__ import annotations

import uuid

from django.db import models


class Ping(models.Model):
    """A round trip through the data plane: the API enqueues it, a worker answers it in this schema.

    Lets a tenant (and the demo, and readiness checks) prove that its work reaches a live worker and
    runs inside its own schema.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        COMPLETED = "completed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    message = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    requested_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    observed_schema = models.CharField(max_length=63, blank=True, default="")
    deliveries = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-requested_at"]
