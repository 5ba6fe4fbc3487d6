"""What the SLOs are computed from: one tenant's recorded runs, run events and effect journal. Reads only.

Each selector runs one SQL statement in the caller's tenant schema (``require_schema``) over a window
``[start, end)`` and returns counts, exact percentiles (``percentile_cont``) and, when asked, a bounded
sample of the raw latencies so that an operator can merge tenants into exact (or, past the bound, closely
approximated) platform-wide percentiles without any query that spans schemas. The definitions, and why
they are these, are in docs/slos.md:

- agent start: a run's creation → the moment its first effect (model or tool call) began on a worker. A run
  still waiting counts with the time it has waited so far; runs created paused, waiting for a human, or
  finished before starting (cancelled, refused) do not count.
- turn: from the event that set a run going (its creation, a follow-up message, a retry, …) to its
  ``run.finished`` event, minus the time it spent waiting for a human approval or paused by the tenant.
- a turn failed for the platform's reasons unless its error code is one of ``TENANT_ERROR_CODES``.
- a tool call attempt succeeded when the tool answered (its own ``is_error`` answer included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from common.schemas import require_schema

# Failures caused by the tenant's own configuration, limits, content or decisions. Any other code (and a
# failure without one) is the platform's: an unclassified failure never flatters the SLOs.
TENANT_ERROR_CODES: tuple[str, ...] = (
    "approval_rejected",  # a human of the tenant said no
    "budget_exceeded",  # the tenant's spending limit (run, agent or tenant budget)
    "cancelled",
    "context_overflow",  # the agent's context settings cannot fit the conversation
    "guardrail_blocked",  # the tenant's guardrails refused the input or the answer
    "model_rejected",  # the provider refused the tenant's request (content policy, invalid request)
    "quota_exceeded",  # the tier's quota
    "rate_limited",
    "routing_loop",  # the agent's graph routed in circles
    "step_limit",  # the agent's own limits
    "time_limit",
)
# A run that has not begun working this long after it was created makes its minutes count against availability.
STALL_SECONDS = 60.0
ACTIVE_STATUSES = ("queued", "running", "paused", "waiting_approval")


@dataclass(frozen=True)
class LatencyMeasure:
    """Latencies in milliseconds: how many, p50 and p99 (exact, ``percentile_cont``), and when asked a sample
    of the values in ascending order, every ``stride``-th one (stride 1: all of them)."""

    count: int
    p50_ms: float | None
    p99_ms: float | None
    values_ms: tuple[float, ...] = ()
    stride: int = 1


@dataclass(frozen=True)
class TurnOutcomes:
    """Turns that ended in the window, by how they ended."""

    ended: int
    completed: int
    failed: int
    cancelled: int
    platform_failures: int


@dataclass(frozen=True)
class MinuteCount:
    """One minute with traffic: requests (turns that ended in it, runs stalled through it) and bad ones
    (turns failed for the platform's reasons, stalled runs)."""

    minute: datetime
    requests: int
    bad: int


@dataclass(frozen=True)
class ToolCallOutcomes:
    attempts: int
    succeeded: int


def _q(tenant_schema: str) -> str:
    require_schema(tenant_schema)
    return f'"{tenant_schema}".'


def _turns_sql(q: str) -> str:
    """CTEs ``turn_marks``, ``turns`` and ``ended_turns`` (turns that ended in [start, end)). A turn's events are
    the run's ``run.status`` and ``run.finished`` events after its previous ``run.finished``; only runs that
    finished in the window or are still active can have one (their ``finished_at`` is the last turn's end)."""
    return f"""
turn_marks AS (
  SELECT ev.run_id, ev.seq, ev.type, ev.created_at, ev.data->>'status' AS status,
         ev.data->'error'->>'code' AS error_code,
         lead(ev.created_at) OVER (PARTITION BY ev.run_id ORDER BY ev.seq) AS next_at,
         count(*) FILTER (WHERE ev.type = 'run.finished')
           OVER (PARTITION BY ev.run_id ORDER BY ev.seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS turn
  FROM {q}data_plane_runevent_all ev
  WHERE ev.type IN ('run.status', 'run.finished')
    AND ev.run_id IN (SELECT r.id FROM {q}data_plane_run r
                      WHERE r.finished_at >= %(start)s - interval '1 minute' OR r.status = ANY(%(active)s))
), turns AS (
  SELECT run_id, turn, min(created_at) AS began_at,
         max(created_at) FILTER (WHERE type = 'run.finished') AS ended_at,
         max(status) FILTER (WHERE type = 'run.finished') AS outcome,
         max(error_code) FILTER (WHERE type = 'run.finished') AS error_code,
         coalesce(sum(extract(epoch FROM next_at - created_at))
                  FILTER (WHERE type = 'run.status' AND status IN ('waiting_approval', 'paused')), 0) AS waited_seconds
  FROM turn_marks GROUP BY run_id, turn
), ended_turns AS (
  SELECT *, (outcome = 'failed' AND coalesce(error_code, '') <> ALL(%(tenant_codes)s)) AS is_platform_failure
  FROM turns WHERE ended_at >= %(start)s AND ended_at < %(end)s
)"""


def _starts_sql(q: str) -> str:
    """CTEs ``run_starts`` and ``agent_starts``: runs created in [start, end) in the queue, and until when each
    waited to begin: its first effect, or what stopped the wait first (finished, paused, held for a human),
    or ``at`` when it is still waiting. An effect journalled after its call (a fresh step's model call) began
    ``latency_ms`` before it was written."""
    return f"""
run_starts AS (
  SELECT r.id, r.created_at,
         (SELECT min(least(e.started_at, coalesce(e.finished_at, e.started_at)
                                         - coalesce(e.latency_ms, 0) * interval '1 millisecond'))
          FROM {q}data_plane_effectrecord_all e WHERE e.run_id = r.id) AS first_effect_at,
         (SELECT min(ev.created_at) FROM {q}data_plane_runevent_all ev
          WHERE ev.run_id = r.id AND ev.type = 'run.finished') AS first_finished_at,
         (SELECT min(ev.created_at) FROM {q}data_plane_runevent_all ev
          WHERE ev.run_id = r.id AND ev.type = 'run.status'
            AND ev.data->>'status' IN ('paused', 'waiting_approval')) AS first_held_at,
         (SELECT ev.data->>'status' FROM {q}data_plane_runevent_all ev
          WHERE ev.run_id = r.id AND ev.type = 'run.status' ORDER BY ev.seq LIMIT 1) AS first_status
  FROM {q}data_plane_run r
  WHERE r.created_at >= %(start)s AND r.created_at < %(end)s
), agent_starts AS (
  SELECT id, created_at, first_effect_at,
         least(first_effect_at, first_finished_at, first_held_at, %(at)s) AS waited_until,
         (first_effect_at IS NULL AND first_finished_at IS NULL AND first_held_at IS NULL) AS is_waiting
  FROM run_starts WHERE first_status = 'queued'
)"""


def _sampled_sql(limit: int) -> str:
    """The statement's end over a CTE ``latencies(ms)``: count, p50, p99 and every stride-th value in order."""
    return f"""
, sampled AS (
  SELECT ms, row_number() OVER (ORDER BY ms) AS position, count(*) OVER () AS total FROM latencies
)
SELECT (SELECT count(*) FROM latencies),
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM latencies),
       (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FROM latencies),
       (SELECT array_agg(ms ORDER BY ms) FROM sampled
        WHERE {int(limit)} > 0 AND position %% greatest(ceil(total::numeric / {max(int(limit), 1)}), 1) = 0)"""


def _latency(sql: str, params: dict[str, object], values_limit: int) -> LatencyMeasure:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        count, p50, p99, values = cursor.fetchone()
    values = tuple(float(v) for v in values or ())
    stride = max(math.ceil(count / values_limit), 1) if values_limit and count else 1
    return LatencyMeasure(count=count, p50_ms=_ms(p50), p99_ms=_ms(p99), values_ms=values, stride=stride)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _params(start: datetime, end: datetime, at: datetime | None = None) -> dict[str, object]:
    return {"start": start, "end": end, "at": at or end, "tenant_codes": list(TENANT_ERROR_CODES),
            "active": list(ACTIVE_STATUSES), "stall": STALL_SECONDS}


def agent_start_latencies(*, tenant_schema: str, start: datetime, end: datetime, at: datetime,
                          values_limit: int = 0) -> LatencyMeasure:
    """Agent start latency of the runs created in [start, end): created → first effect began (still waiting:
    created → ``at``). With ``values_limit``, at most that many of the values come back too (see LatencyMeasure)."""
    q = _q(tenant_schema)
    sql = (f"WITH {_starts_sql(q)}, latencies AS ("
           f"  SELECT extract(epoch FROM waited_until - created_at) * 1000 AS ms FROM agent_starts"
           f"  WHERE waited_until = first_effect_at OR is_waiting)" + _sampled_sql(values_limit))
    return _latency(sql, _params(start, end, at), values_limit)


def turn_latencies(*, tenant_schema: str, start: datetime, end: datetime, values_limit: int = 0) -> LatencyMeasure:
    """Latency of the turns that completed in [start, end), without the time spent waiting for a human
    approval or paused."""
    q = _q(tenant_schema)
    sql = (f"WITH {_turns_sql(q)}, latencies AS ("
           f"  SELECT extract(epoch FROM ended_at - began_at) * 1000 - waited_seconds * 1000 AS ms FROM ended_turns"
           f"  WHERE outcome = 'completed')" + _sampled_sql(values_limit))
    return _latency(sql, _params(start, end), values_limit)


def turn_outcomes(*, tenant_schema: str, start: datetime, end: datetime) -> TurnOutcomes:
    """How the turns that ended in [start, end) ended; failures split by whose reason (TENANT_ERROR_CODES)."""
    q = _q(tenant_schema)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH {_turns_sql(q)} SELECT count(*), count(*) FILTER (WHERE outcome = 'completed'), "
            f"count(*) FILTER (WHERE outcome = 'failed'), count(*) FILTER (WHERE outcome = 'cancelled'), "
            f"count(*) FILTER (WHERE is_platform_failure) FROM ended_turns", _params(start, end))
        ended, completed, failed, cancelled, platform = cursor.fetchone()
    return TurnOutcomes(ended=ended, completed=completed, failed=failed, cancelled=cancelled,
                        platform_failures=platform)


def availability_minutes(*, tenant_schema: str, start: datetime, end: datetime,
                         at: datetime) -> tuple[MinuteCount, ...]:
    """Every minute of [start, end) with traffic: turns that ended in it, and runs created in the window that
    had not begun STALL_SECONDS after their creation (each such run is a bad request in every minute it
    keeps waiting, up to ``at``). In time order."""
    q = _q(tenant_schema)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""WITH {_turns_sql(q)}, {_starts_sql(q)}, requests AS (
                  SELECT date_trunc('minute', ended_at) AS minute, is_platform_failure::int AS bad FROM ended_turns
                  UNION ALL
                  SELECT generate_series(date_trunc('minute', created_at + %(stall)s * interval '1 second'),
                                         date_trunc('minute', waited_until - interval '1 microsecond'),
                                         interval '1 minute'), 1
                  FROM agent_starts WHERE waited_until > created_at + %(stall)s * interval '1 second'
                )
                SELECT minute, count(*), sum(bad) FROM requests
                WHERE minute >= date_trunc('minute', %(start)s::timestamptz) AND minute < %(end)s
                GROUP BY minute ORDER BY minute""", _params(start, end, at))
        rows = cursor.fetchall()
    return tuple(MinuteCount(minute=minute, requests=requests, bad=int(bad)) for minute, requests, bad in rows)


def tool_call_outcomes(*, tenant_schema: str, start: datetime, end: datetime) -> ToolCallOutcomes:
    """Tool call attempts begun in [start, end) and how many got the tool's answer (its own ``is_error`` answer,
    and a call refused by the tenant's permissions or guardrails, included). Each redelivery of a call that
    lost its transport is an attempt; the last attempt of a call still in flight, or stopped by the run's
    pause or cancellation, is not counted; replayed results (``reused_from``) were no call. Tool calls are all
    in the journal's table (each is marked started there before it is made), so the checkpoints' are not read."""
    q = _q(tenant_schema)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT coalesce(sum(CASE WHEN e.status = 'started' AND r.status <> 'failed' THEN e.attempts - 1
                                         ELSE e.attempts END), 0),
                       count(*) FILTER (WHERE e.status = 'succeeded')
                FROM {q}data_plane_effectrecord e JOIN {q}data_plane_run r ON r.id = e.run_id
                WHERE e.kind = 'tool' AND e.reused_from IS NULL AND e.started_at >= %(start)s
                  AND e.started_at < %(end)s""", _params(start, end))
        attempts, succeeded = cursor.fetchone()
    return ToolCallOutcomes(attempts=int(attempts), succeeded=succeeded)
