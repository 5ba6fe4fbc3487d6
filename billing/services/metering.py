"""Metering: usage records collected from each tenant's effect journal and runs, and their rollups.

Exactly once: a record's ``source_key`` is what it was recorded from (a journalled effect's idempotency key,
a run's finish) and unique per tenant; every insert is ``ON CONFLICT (tenant, source_key) DO NOTHING``. So a
collector run twice, a redelivered task, an overlapping read window, or a retried step (one journal row whose
``attempts`` went up) never makes a second record. Rollups are recomputed from the records of their period
and replace what was there (never incremented), so recomputing is idempotent too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import UsageCollection, UsageRecord, UsageRollup
from billing.periods import day_start, hour_start
from data_plane import selectors as data_plane_selectors

# Rows are reread this far before the watermark: an effect or run whose finish committed a moment after a
# later one's (each finish is stamped when its statement starts) is still found. Overlap is harmless (unique).
COLLECT_OVERLAP = timedelta(minutes=2)
COLLECT_PAGE = 2000

_COLUMNS = ("tenant_id", "source_key", "kind", "run_id", "agent_id", "agent_name", "name", "input_tokens",
            "output_tokens", "cached_input_tokens", "cost_usd", "latency_ms", "is_success", "details", "occurred_at",
            "recorded_at")


@dataclass(frozen=True)
class UsageCollected:
    """What one collection did: rows read, records inserted, and the hours and days those fell in."""

    effects_read: int
    runs_read: int
    inserted: int
    hours: frozenset[datetime] = field(default_factory=frozenset)
    days: frozenset[datetime] = field(default_factory=frozenset)


def _effect_row(tenant_id: Any, effect: data_plane_selectors.FinishedEffect, now: datetime) -> tuple[Any, ...]:
    details: dict[str, Any] = {"session_id": str(effect.session_id), "step": effect.step, "attempts": effect.attempts}
    if effect.end_user:
        details["end_user"] = effect.end_user
    if effect.purpose:
        details["purpose"] = effect.purpose
    if effect.route is not None:
        details["route"] = effect.route  # the routing decision, as the request recorded it
    replayed = effect.reused_from is not None
    if replayed:
        # a result copied from an earlier call (a replay or fork): nothing was paid, so nothing is billed again
        details.update(replayed=True, reused_from=effect.reused_from)
    return (tenant_id, effect.idempotency_key, UsageRecord.Kind.LLM if effect.kind == "model" else UsageRecord.Kind.TOOL,
            effect.run_id, effect.agent_id, effect.agent_name[:200], effect.name[:200],
            0 if replayed else effect.input_tokens, 0 if replayed else effect.output_tokens,
            0 if replayed else effect.cached_input_tokens, Decimal(0) if replayed else effect.cost_usd,
            effect.latency_ms, effect.status == "succeeded" and not effect.is_error, json.dumps(details),
            effect.finished_at, now)


def run_source_key(run_id: Any, finished_at: datetime) -> str:
    """A run's record key: one per finish (a retried or continued run that finishes again gets another)."""
    return f"run:{run_id}:{finished_at.astimezone(dt_timezone.utc).isoformat()}"


def _run_row(tenant_id: Any, run: data_plane_selectors.FinishedRun, now: datetime) -> tuple[Any, ...]:
    # A run's tokens and cost are its LLM records': the run record's own columns stay zero so that summing any
    # column over every kind never counts a token twice. The run's totals are kept in details.
    details: dict[str, Any] = {
        "session_id": str(run.session_id), "top_level": run.parent_run_id is None,
        "parent_run_id": str(run.parent_run_id) if run.parent_run_id else None, "steps": run.steps,
        "input_tokens": run.input_tokens, "output_tokens": run.output_tokens, "cost_usd": str(run.cost_usd)}
    if run.end_user:
        details["end_user"] = run.end_user
    if run.task_kind:
        details["task_kind"] = run.task_kind
    started = run.started_at
    latency = (run.finished_at - started).total_seconds() * 1000 if started is not None else None
    return (tenant_id, run_source_key(run.run_id, run.finished_at), UsageRecord.Kind.RUN, run.run_id, run.agent_id,
            run.agent_name[:200], run.status, 0, 0, 0, Decimal(0), latency, run.status == "completed",
            json.dumps(details), run.finished_at, now)


def _insert(rows: list[tuple[Any, ...]]) -> list[datetime]:
    """Insert the records that are not there yet; the occurred_at of those inserted."""
    if not rows:
        return []
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    placeholders = "(" + ", ".join(["%s"] * (len(_COLUMNS) - 3)) + ", %s::jsonb, %s, %s)"
    values = ", ".join([placeholders] * len(rows))
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES {values} "
                       "ON CONFLICT (tenant_id, source_key) DO NOTHING RETURNING occurred_at",
                       [value for row in rows for value in row])
        return [row[0] for row in cursor.fetchall()]


def usage_collect(*, tenant: Any, now: datetime | None = None, overlap: timedelta = COLLECT_OVERLAP,
                  page: int = COLLECT_PAGE) -> UsageCollected:
    """Record the tenant's LLM calls, tool calls and runs that finished since its watermark (less ``overlap``)
    and before ``now``, and move the watermark. Idempotent: every record is inserted at most once per tenant
    and source key, so running it twice, or concurrently, records nothing twice. Replayed results are recorded
    with zero tokens and cost and marked ``replayed``."""
    until = now or timezone.now()
    stamp = timezone.now()
    with schema_context("public"):
        collection, _ = UsageCollection.objects.get_or_create(tenant=tenant)
    inserted: list[datetime] = []
    effects_read = runs_read = 0
    # effects, page by page; the watermark moves after each page, so a long backlog is never reread whole
    since = collection.effects_until - overlap if collection.effects_until else None
    cursor: tuple[datetime, int] | None = None
    while True:
        with schema_context(tenant.schema_name):
            effects = data_plane_selectors.effect_list_finished(tenant_schema=tenant.schema_name, since=since,
                                                                until=until, after=cursor, limit=page)
        effects_read += len(effects)
        done = len(effects) < page
        reached = until if done else effects[-1].finished_at
        with schema_context("public"), transaction.atomic():
            inserted += _insert([_effect_row(tenant.id, effect, stamp) for effect in effects])
            _advance(tenant, effects_until=reached)
        if done:
            break
        cursor = (effects[-1].finished_at, effects[-1].journal_id)
    since = collection.runs_until - overlap if collection.runs_until else None
    run_cursor: tuple[datetime, Any] | None = None
    while True:
        with schema_context(tenant.schema_name):
            runs = data_plane_selectors.run_list_finished(tenant_schema=tenant.schema_name, since=since, until=until,
                                                          after=run_cursor, limit=page)
        runs_read += len(runs)
        done = len(runs) < page
        reached = until if done else runs[-1].finished_at
        with schema_context("public"), transaction.atomic():
            inserted += _insert([_run_row(tenant.id, run, stamp) for run in runs])
            _advance(tenant, runs_until=reached)
        if done:
            break
        run_cursor = (runs[-1].finished_at, runs[-1].run_id)
    with schema_context("public"):
        UsageCollection.objects.filter(tenant=tenant).update(collected_at=stamp)
    return UsageCollected(effects_read=effects_read, runs_read=runs_read, inserted=len(inserted),
                          hours=frozenset(hour_start(moment) for moment in inserted),
                          days=frozenset(day_start(moment) for moment in inserted))


def _advance(tenant: Any, *, effects_until: datetime | None = None, runs_until: datetime | None = None) -> None:
    """Move a watermark forward, never back (two collectors at once may finish in either order)."""
    table = connection.ops.quote_name(UsageCollection._meta.db_table)
    column = "effects_until" if effects_until is not None else "runs_until"
    value = effects_until if effects_until is not None else runs_until
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {column} = GREATEST(coalesce({column}, %s), %s) WHERE tenant_id = %s",
                       [value, value, tenant.id])


def _lock_key(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


PERIOD_LENGTH = {UsageRollup.Period.HOUR: timedelta(hours=1), UsageRollup.Period.DAY: timedelta(days=1)}


def usage_collect_and_roll_up(*, tenant: Any, now: datetime | None = None) -> UsageCollected:
    """Collect the tenant's new usage records (usage_collect), then recompute the rollups of the hours and days
    they fell in. Idempotent: records are unique per source, rollups are replaced."""
    collected = usage_collect(tenant=tenant, now=now)
    for hour in sorted(collected.hours):
        usage_rollup(tenant=tenant, period="hour", period_start=hour)
    for day in sorted(collected.days):
        usage_rollup(tenant=tenant, period="day", period_start=day)
    return collected


def usage_rollup(*, tenant: Any, period: str, period_start: datetime) -> int:
    """Recompute the tenant's rollups of one hour or day (UTC) from the records in it, replacing the old ones
    (never incrementing them). Returns how many rollup rows there now are. Idempotent; concurrent recomputes
    of the same period queue on an advisory lock."""
    if period not in PERIOD_LENGTH:
        raise ValueError(f"period must be one of {sorted(PERIOD_LENGTH)}, got {period!r}")
    start = hour_start(period_start) if period == UsageRollup.Period.HOUR else day_start(period_start)
    end = start + PERIOD_LENGTH[period]
    rollups = connection.ops.quote_name(UsageRollup._meta.db_table)
    records = connection.ops.quote_name(UsageRecord._meta.db_table)
    with schema_context("public"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key("usage_rollup", tenant.id, period, start)])
        cursor.execute(f"DELETE FROM {rollups} WHERE tenant_id = %s AND period = %s AND period_start = %s",
                       [tenant.id, period, start])
        cursor.execute(
            f"INSERT INTO {rollups} (tenant_id, period, period_start, kind, agent_id, agent_name, name, count, "
            "failures, input_tokens, output_tokens, cached_input_tokens, cost_usd, latency_ms_total, computed_at) "
            "SELECT tenant_id, %s, %s, kind, agent_id, max(agent_name), name, count(*), "
            "count(*) FILTER (WHERE NOT is_success), sum(input_tokens), sum(output_tokens), "
            "sum(cached_input_tokens), sum(cost_usd), coalesce(sum(latency_ms), 0), now() "
            f"FROM {records} WHERE tenant_id = %s AND occurred_at >= %s AND occurred_at < %s "
            "GROUP BY tenant_id, kind, agent_id, name",
            [period, start, tenant.id, start, end])
        return cursor.rowcount


def usage_rollup_recent(*, tenant: Any, now: datetime | None = None,
                        extra_hours: frozenset[datetime] = frozenset(),
                        extra_days: frozenset[datetime] = frozenset()) -> int:
    """Recompute the tenant's current and previous hour and day, and any other hours and days named (those a
    collection inserted records in). Idempotent. Returns how many periods were recomputed."""
    moment = now or timezone.now()
    hours = {hour_start(moment), hour_start(moment) - timedelta(hours=1), *extra_hours}
    days = {day_start(moment), day_start(moment) - timedelta(days=1), *extra_days}
    for hour in sorted(hours):
        usage_rollup(tenant=tenant, period=UsageRollup.Period.HOUR, period_start=hour)
    for day in sorted(days):
        usage_rollup(tenant=tenant, period=UsageRollup.Period.DAY, period_start=day)
    return len(hours) + len(days)
