"""Usage records (one per LLM call, tool call and run) and their hourly and daily rollups."""

from __future__ import annotations

from django.db import models
from django.db.models import F
from django.db.models.fields.json import KeyTextTransform


class UsageRecord(models.Model):
    """One billable thing that happened: an LLM call, a tool call or a run. ``source_key`` names what it was
    recorded from (a journalled effect's idempotency key, a run's id) and is unique per tenant, so recording
    the same thing twice (a retried task, a collector run again) changes nothing."""

    class Kind(models.TextChoices):
        LLM = "llm"
        TOOL = "tool"
        RUN = "run"

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="usage_records")
    source_key = models.CharField(max_length=300)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    run_id = models.UUIDField(null=True, blank=True)
    agent_id = models.UUIDField(null=True, blank=True)
    agent_name = models.CharField(max_length=200, blank=True, default="")
    name = models.CharField(max_length=200, blank=True, default="")  # the model, the tool, or the run's status
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=16, decimal_places=8, default=0)
    latency_ms = models.FloatField(null=True, blank=True)
    is_success = models.BooleanField(default=True)
    details = models.JSONField(default=dict, blank=True)  # e.g. the routing decision of an LLM call
    occurred_at = models.DateTimeField(db_index=True)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["occurred_at", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "source_key"], name="usage_record_once")]
        indexes = [models.Index(fields=["tenant", "occurred_at"]),
                   # cost per session: a session's records, found by the top-level run the collector names
                   models.Index(F("tenant"), KeyTextTransform("session_id", "details"), name="usage_record_session")]


class UsageRollup(models.Model):
    """Usage summed per tenant, period (an hour or a day, UTC), agent, kind and model or tool. Recomputed from
    the usage records of its period (never incremented), so recomputing is idempotent."""

    class Period(models.TextChoices):
        HOUR = "hour"
        DAY = "day"

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="usage_rollups")
    period = models.CharField(max_length=4, choices=Period.choices)
    period_start = models.DateTimeField()
    kind = models.CharField(max_length=8, choices=UsageRecord.Kind.choices)
    agent_id = models.UUIDField(null=True, blank=True)
    agent_name = models.CharField(max_length=200, blank=True, default="")
    name = models.CharField(max_length=200, blank=True, default="")
    count = models.PositiveBigIntegerField(default=0)
    failures = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    latency_ms_total = models.FloatField(default=0)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["period_start", "id"]
        constraints = [models.UniqueConstraint(
            fields=["tenant", "period", "period_start", "kind", "agent_id", "name"], nulls_distinct=False,
            name="usage_rollup_one_row")]
        indexes = [models.Index(fields=["period", "period_start"])]


class UsageCollection(models.Model):
    """How far the usage collector has read one tenant's journal: effects and runs finished before these
    instants were collected. The next collection rereads a little before them (late commits), and the records'
    uniqueness makes the overlap harmless."""

    tenant = models.OneToOneField("tenants.Tenant", on_delete=models.CASCADE, primary_key=True,
                                  related_name="usage_collection")
    effects_until = models.DateTimeField(null=True, blank=True)
    runs_until = models.DateTimeField(null=True, blank=True)
    records_inserted = models.PositiveBigIntegerField(default=0)  # all time, for operators' curiosity
    collected_at = models.DateTimeField(null=True, blank=True)
