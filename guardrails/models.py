from __future__ import annotations

import uuid

from django.db import models


class GuardrailPolicy(models.Model):
    """A layer of guardrail policy: the tenant's (``agent`` empty) or one agent's, over the platform defaults.

    ``config`` holds only what the layer sets (guardrails/policy.py says how layers merge). An agent's layer
    is kept by the agent's name, so it applies to every version and survives the agent being re-created."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.CharField(max_length=100, blank=True, default="", unique=True)
    config = models.JSONField(default=dict)
    revision = models.PositiveIntegerField(default=1)
    updated_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent"]


class GuardrailFlag(models.Model):
    """A text a check flagged for review (the policy's action was ``flag``): what was found, never the text."""

    class Status(models.TextChoices):
        OPEN = "open"
        CONFIRMED = "confirmed"  # a reviewer agrees it was a violation
        DISMISSED = "dismissed"  # a false positive

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run_id = models.UUIDField(null=True, blank=True, db_index=True)
    agent = models.CharField(max_length=100, blank=True, default="")
    point = models.CharField(max_length=20)
    check_name = models.CharField(max_length=20)
    score = models.FloatField()
    reasons = models.JSONField(default=list)
    message = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    review_comment = models.CharField(max_length=1000, blank=True, default="")
    reviewed_by = models.CharField(max_length=200, blank=True, default="")
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"])]
