"""The SLIs from recorded runs, events and effects with known times: exact percentiles, rates and minutes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django_tenants.utils import schema_context

from common.schemas import WrongSchema
from data_plane import slo_selectors
from data_plane.models import EffectRecord
from data_plane.slo_selectors import LatencyMeasure, MinuteCount, ToolCallOutcomes, TurnOutcomes
from data_plane.tests.factories import AgentVersionFactory, EffectRecordFactory, RunEventFactory, RunFactory

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)


def ms(milliseconds: float) -> timedelta:
    return timedelta(milliseconds=milliseconds)


def recorded_run(version, created_at: datetime, events: list[tuple[float, str, dict]], *, status: str,
                 finished_at: datetime | None = None):
    """A run created at ``created_at`` whose events (milliseconds after creation, type, data) are as given."""
    run = RunFactory(agent_version=version, created_at=created_at, status=status, finished_at=finished_at,
                     event_seq=len(events))
    for seq, (offset, type_, data) in enumerate(events, start=1):
        RunEventFactory(run=run, seq=seq, type=type_, data=data, created_at=created_at + ms(offset))
    return run


def queued() -> tuple[float, str, dict]:
    return (0, "run.status", {"status": "queued"})


def finished(offset: float, status: str, code: str | None = None) -> list[tuple[float, str, dict]]:
    error = {"code": code, "message": "..."} if code else None
    return [(offset, "run.status", {"status": status, "error": error}),
            (offset, "run.finished", {"status": status, "error": error})]


def test_agent_start_latency_is_creation_to_first_effect_of_runs_created_in_the_window(tenant_a):
    with schema_context(tenant_a.schema):
        # given runs that began their first call 100, 200, 300, 400 ms and 1 s after creation
        version = AgentVersionFactory()
        for i, delay in enumerate((100, 200, 300, 1000)):
            run = recorded_run(version, T0 + timedelta(seconds=i), [queued()], status="running")
            EffectRecordFactory(run=run, kind=EffectRecord.Kind.MODEL, started_at=run.created_at + ms(delay),
                                finished_at=run.created_at + ms(delay + 700), latency_ms=700)
            EffectRecordFactory(run=run, started_at=run.created_at + ms(delay + 800))  # a later call: not the start
        # a fresh step's model call is journalled once answered: written 900 ms after creation, it took 500 ms
        run = recorded_run(version, T0 + timedelta(seconds=5), [queued()], status="running")
        EffectRecordFactory(run=run, kind=EffectRecord.Kind.MODEL, started_at=run.created_at + ms(900),
                            finished_at=run.created_at + ms(900), latency_ms=500)
        # not agent starts: created waiting for a human; cancelled before it began; created outside the window
        held = recorded_run(version, T0, [(0, "run.status", {"status": "waiting_approval"})], status="running")
        EffectRecordFactory(run=held, started_at=T0 + timedelta(minutes=3))
        recorded_run(version, T0, [queued(), *finished(30_000, "cancelled")], status="cancelled",
                     finished_at=T0 + timedelta(seconds=30))
        early = recorded_run(version, T0 - timedelta(minutes=10), [queued()], status="running")
        EffectRecordFactory(run=early, started_at=early.created_at + ms(5))
        # when
        measure = slo_selectors.agent_start_latencies(tenant_schema=tenant_a.schema, start=T0 - timedelta(minutes=1),
                                                      end=T0 + timedelta(minutes=4), at=T0 + timedelta(minutes=5),
                                                      values_limit=10)
    # then: 100, 200, 300, 400, 1000 ms; p99 = 400 + 0.96 * 600
    assert measure == LatencyMeasure(count=5, p50_ms=300.0, p99_ms=976.0, values_ms=(100.0, 200.0, 300.0, 400.0,
                                                                                     1000.0), stride=1)


def test_a_run_still_waiting_to_start_counts_with_the_time_it_has_waited(tenant_a):
    with schema_context(tenant_a.schema):
        # given a run that started after 100 ms and one still queued 2 minutes after its creation
        version = AgentVersionFactory()
        started = recorded_run(version, T0, [queued()], status="running")
        EffectRecordFactory(run=started, started_at=T0 + ms(100))
        recorded_run(version, T0 + timedelta(seconds=10), [queued()], status="queued")
        # when
        measure = slo_selectors.agent_start_latencies(tenant_schema=tenant_a.schema, start=T0,
                                                      end=T0 + timedelta(minutes=5), at=T0 + timedelta(seconds=130))
    # then
    assert (measure.count, measure.p50_ms, measure.p99_ms) == (2, 60_050.0, 118_801.0)


def _turns_history(version) -> None:
    """Seven turns ending in the hour after T0: three completed, three failed, one cancelled."""
    # 62.5 s from creation to completion, 60 s of which waiting for an approval: a 2.5 s turn
    recorded_run(version, T0, [queued(), (1_000, "run.status", {"status": "waiting_approval"}),
                               (61_000, "run.status", {"status": "queued"}), *finished(62_500, "completed")],
                 status="completed", finished_at=T0 + ms(62_500))
    # a 1.2 s turn, then a follow-up message's 0.8 s turn
    recorded_run(version, T0, [queued(), *finished(1_200, "completed"), (100_000, "message.user", {}),
                               (100_000, "run.status", {"status": "queued"}), *finished(100_800, "completed")],
                 status="completed", finished_at=T0 + ms(100_800))
    recorded_run(version, T0, [queued(), *finished(3_000, "failed", "internal_error")], status="failed",
                 finished_at=T0 + ms(3_000))
    recorded_run(version, T0, [queued(), *finished(4_000, "failed", "guardrail_blocked")], status="failed",
                 finished_at=T0 + ms(4_000))
    recorded_run(version, T0, [queued(), *finished(5_000, "failed", "something_new")], status="failed",
                 finished_at=T0 + ms(5_000))
    recorded_run(version, T0, [queued(), (0, "run.status", {"status": "paused"}), *finished(9_000, "cancelled")],
                 status="cancelled", finished_at=T0 + ms(9_000))
    # ended before the window; and a turn still running
    recorded_run(version, T0 - timedelta(hours=2), [queued(), *finished(500, "completed")], status="completed",
                 finished_at=T0 - timedelta(hours=2) + ms(500))
    recorded_run(version, T0, [queued()], status="running")


def test_turn_latency_excludes_time_waiting_for_a_human_and_counts_each_follow_up_turn(tenant_a):
    with schema_context(tenant_a.schema):
        _turns_history(AgentVersionFactory())
        # when
        measure = slo_selectors.turn_latencies(tenant_schema=tenant_a.schema, start=T0, end=T0 + timedelta(hours=1),
                                               values_limit=2)
    # then: completed turns of 800, 1200 and 2500 ms; p99 = 1200 + 0.98 * 1300; every 2nd value sampled
    assert measure == LatencyMeasure(count=3, p50_ms=1200.0, p99_ms=2474.0, values_ms=(1200.0,), stride=2)


def test_turn_outcomes_count_failures_by_whose_reason(tenant_a):
    with schema_context(tenant_a.schema):
        _turns_history(AgentVersionFactory())
        # when
        outcomes = slo_selectors.turn_outcomes(tenant_schema=tenant_a.schema, start=T0, end=T0 + timedelta(hours=1))
    # then: internal_error and an unclassified code are the platform's; guardrail_blocked is the tenant's
    assert outcomes == TurnOutcomes(ended=7, completed=3, failed=3, cancelled=1, platform_failures=2)


def test_availability_minutes_count_platform_failures_and_stalled_runs(tenant_a):
    with schema_context(tenant_a.schema):
        version = AgentVersionFactory()
        # given minute 12:01: one platform failure among ten turns; minute 12:02: one among twenty
        for minute, total in ((1, 10), (2, 20)):
            at = T0 + timedelta(minutes=minute, seconds=30)
            recorded_run(version, at - ms(500), [queued(), *finished(500, "failed", "provider_unavailable")],
                         status="failed", finished_at=at)
            for _ in range(total - 1):
                recorded_run(version, at - ms(500), [queued(), *finished(500, "completed")], status="completed",
                             finished_at=at)
        # and a run created at 12:05 that never began: stalled from 12:06 until 12:08:30
        recorded_run(version, T0 + timedelta(minutes=5), [queued()], status="queued")
        # when
        minutes = slo_selectors.availability_minutes(tenant_schema=tenant_a.schema, start=T0,
                                                     end=T0 + timedelta(hours=1), at=T0 + timedelta(minutes=8.5))
    # then
    assert minutes == (MinuteCount(minute=T0 + timedelta(minutes=1), requests=10, bad=1),
                       MinuteCount(minute=T0 + timedelta(minutes=2), requests=20, bad=1),
                       MinuteCount(minute=T0 + timedelta(minutes=6), requests=1, bad=1),
                       MinuteCount(minute=T0 + timedelta(minutes=7), requests=1, bad=1),
                       MinuteCount(minute=T0 + timedelta(minutes=8), requests=1, bad=1))


def test_tool_call_success_counts_attempts_and_the_tools_own_error_answer_as_success(tenant_a):
    with schema_context(tenant_a.schema):
        version = AgentVersionFactory()
        running = recorded_run(version, T0, [queued()], status="running")
        gave_up = recorded_run(version, T0, [queued(), *finished(60_000, "failed", "provider_unavailable")],
                               status="failed", finished_at=T0 + timedelta(minutes=1))
        at = T0 + timedelta(minutes=10)
        EffectRecordFactory(run=running, started_at=at)  # answered
        EffectRecordFactory(run=running, started_at=at, result={"is_error": True, "content": "division by zero"})
        EffectRecordFactory(run=running, started_at=at, attempts=2)  # answered on its second delivery
        EffectRecordFactory(run=running, started_at=at, status=EffectRecord.Status.FAILED, result={"failed": {}})
        EffectRecordFactory(run=gave_up, started_at=at, status=EffectRecord.Status.STARTED, attempts=3, result=None)
        EffectRecordFactory(run=running, started_at=at, status=EffectRecord.Status.STARTED, attempts=2, result=None)
        # not counted: a replayed result, a model call, a call the day before
        EffectRecordFactory(run=running, started_at=at, reused_from=1)
        EffectRecordFactory(run=running, started_at=at, kind=EffectRecord.Kind.MODEL)
        EffectRecordFactory(run=running, started_at=at - timedelta(days=1), status=EffectRecord.Status.FAILED)
        # when
        outcomes = slo_selectors.tool_call_outcomes(tenant_schema=tenant_a.schema, start=T0,
                                                    end=T0 + timedelta(days=1))
    # then: 1 + 1 + 2 + 1 + 3 + (2 - 1) attempts, three answered
    assert outcomes == ToolCallOutcomes(attempts=9, succeeded=3)


def test_tenant_b_measures_none_of_tenant_as_runs(tenant_a, tenant_b):
    # given tenant A's history
    with schema_context(tenant_a.schema):
        version = AgentVersionFactory()
        _turns_history(version)
        run = recorded_run(version, T0, [queued()], status="running")
        EffectRecordFactory(run=run, started_at=T0 + ms(100))
    window = {"start": T0 - timedelta(hours=1), "end": T0 + timedelta(hours=1)}
    # when B's SLIs are measured in B's schema
    with schema_context(tenant_b.schema):
        starts = slo_selectors.agent_start_latencies(tenant_schema=tenant_b.schema, at=T0 + timedelta(hours=1),
                                                     values_limit=10, **window)
        turns = slo_selectors.turn_latencies(tenant_schema=tenant_b.schema, values_limit=10, **window)
        outcomes = slo_selectors.turn_outcomes(tenant_schema=tenant_b.schema, **window)
        tools = slo_selectors.tool_call_outcomes(tenant_schema=tenant_b.schema, **window)
        minutes = slo_selectors.availability_minutes(tenant_schema=tenant_b.schema, at=T0 + timedelta(hours=1),
                                                     **window)
    # then
    assert starts == turns == LatencyMeasure(count=0, p50_ms=None, p99_ms=None)
    assert outcomes == TurnOutcomes(ended=0, completed=0, failed=0, cancelled=0, platform_failures=0)
    assert tools == ToolCallOutcomes(attempts=0, succeeded=0)
    assert minutes == ()
    # and naming A's schema from B's is refused before any SQL runs
    with schema_context(tenant_b.schema), pytest.raises(WrongSchema):
        slo_selectors.turn_outcomes(tenant_schema=tenant_a.schema, **window)
