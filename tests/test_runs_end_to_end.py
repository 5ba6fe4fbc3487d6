"""Runs executed by real Celery workers against our model server over HTTP (litellm as with any provider)."""

from __future__ import annotations

import httpx
import pytest
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import selectors, services
from data_plane.models import Checkpoint, EffectRecord, Note, Ping, Run
from data_plane.services import pings as ping_services
from data_plane.tools import BUILTIN_TOOLS
from tests.processes import wait_for

pytestmark = pytest.mark.worker


def tool(name: str, **overrides) -> dict:
    return {**BUILTIN_TOOLS[name].to_json(), **overrides}


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("e2e-runs")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def register(model_server: str, scenario: dict) -> None:
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", json=scenario, timeout=10).raise_for_status()


def finished(schema: str, run_id, statuses=("completed", "failed", "cancelled")) -> Run | None:
    with schema_context(schema):
        run = Run.objects.get(id=run_id)
    return run if run.status in statuses else None


def start(tenant, name: str, spec: dict, input: str = "go") -> Run:
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name=name, description="", spec=spec, actor=TEST_ACTOR)
        return services.run_start(tenant=tenant.tenant, agent_id=agent.id, input=input, actor=TEST_ACTOR)


def test_the_default_loop_plans_calls_a_tool_reflects_and_completes(worker_process, model_server, tenant):
    run = start(tenant, "calc", {"instructions": "Be exact.", "models": ["openai/plan-act-reflect"],
                                 "tools": [tool("calculator")]}, input="What is 6*7?")
    done = wait_for(lambda: finished(tenant.schema, run.id), timeout=60, what="the run to finish")
    assert done.status == "completed", done.error
    assert "42" in done.output
    with schema_context(tenant.schema):
        steps = list(Checkpoint.objects.filter(run=run).order_by("step").values_list("step", flat=True))
        effects = list(EffectRecord.objects.filter(run=run).order_by("step").values_list("kind", "name", "status"))
    assert steps == list(range(len(steps))) and len(steps) == done.step + 1
    assert effects == [("model", "openai/plan-act-reflect", "succeeded")] * 2 + [
        ("tool", "calculator", "succeeded")] + [("model", "openai/plan-act-reflect", "succeeded")] * 2
    assert done.input_tokens > 0 and done.output_tokens > 0 and float(done.cost_usd) > 0


def test_an_approval_pauses_the_run_until_a_human_decides(worker_process, model_server, tenant):
    register(model_server, {"name": "note-with-approval", "turns": [
        {"content": "1. Write the note."},
        {"tool_calls": [{"name": "note_append", "arguments": {"text": "draft"}}]},
        {"content": "Saved: {{last_tool}}"},
        {"content": "Note saved. DONE"}]})
    run = start(tenant, "noter", {"instructions": "Take notes.", "models": ["openai/note-with-approval"],
                                  "tools": [tool("note_append", requires_approval=True)]})
    waiting = wait_for(lambda: finished(tenant.schema, run.id, ("waiting_approval",)), timeout=60,
                       what="the run to wait for approval")
    with schema_context(tenant.schema):
        approval = waiting.approvals.get(status="pending")
        assert Note.objects.count() == 0  # nothing happened before the decision
        call_id = approval.calls[0]["id"]
        services.approval_decide(tenant=tenant.tenant, approval_id=approval.id, approved=True, actor=TEST_ACTOR,
                                 arguments={call_id: {"text": "final wording"}})
    done = wait_for(lambda: finished(tenant.schema, run.id), timeout=60, what="the run to finish")
    assert done.status == "completed", done.error
    with schema_context(tenant.schema):
        assert list(Note.objects.values_list("text", flat=True)) == ["final wording"]


def test_a_parallel_workflow_joins_before_summarising(worker_process, model_server, tenant):
    register(model_server, {"name": "parallel-summary", "repeat_last": True, "turns": [{"content": "summary"}]})
    run = start(tenant, "fanout", {"instructions": "x", "models": ["openai/parallel-summary"],
                                   "tools": [tool("calculator"), tool("get_time")], "graph": {
        "entry": "fan", "nodes": [
            {"id": "fan", "kind": "parallel", "branches": ["sum", "clock"], "join": "merge"},
            {"id": "sum", "kind": "tool", "tool": "calculator", "arguments": {"expression": "2+2"},
             "output_key": "sum", "next": "merge"},
            {"id": "clock", "kind": "tool", "tool": "get_time", "output_key": "time", "next": "merge"},
            {"id": "merge", "kind": "join", "next": "summary"},
            {"id": "summary", "kind": "llm", "next": "end"},
            {"id": "end", "kind": "end"}]}})
    done = wait_for(lambda: finished(tenant.schema, run.id), timeout=60, what="the run to finish")
    assert done.status == "completed", done.error
    with schema_context(tenant.schema):
        steps = {step: sorted(EffectRecord.objects.filter(run=run, step=step).values_list("name", flat=True))
                 for step in EffectRecord.objects.filter(run=run).values_list("step", flat=True)}
    assert steps == {0: ["calculator", "get_time"], 1: ["openai/parallel-summary"]}


def test_cancel_stops_a_run_in_the_middle_of_a_slow_tool(worker_process, model_server, tenant):
    register(model_server, {"name": "slow", "turns": [
        {"content": "plan"}, {"tool_calls": [{"name": "wait", "arguments": {"seconds": 30}}]},
        {"content": "never"}]})
    run = start(tenant, "sleeper", {"instructions": "x", "models": ["openai/slow"], "tools": [tool("wait")]})
    wait_for(lambda: _effect_started(tenant.schema, run.id, "wait"), timeout=60, what="the wait tool to start")
    with schema_context(tenant.schema):
        services.run_cancel(tenant=tenant.tenant, run_id=run.id, actor=TEST_ACTOR, reason="too slow")
    done = finished(tenant.schema, run.id)
    assert done.status == "cancelled" and done.status_reason == "too slow"
    step_at_cancel = done.step
    # the worker notices at its next lease renewal (a third of RUN_LEASE_SECONDS=3), abandons the 30 s call,
    # and its step is fenced off: nothing is committed after the cancel
    # (the worker has a single child: a ping answered within seconds proves the child is free again)
    with schema_context(tenant.schema):
        ping = ping_services.ping_create(tenant=tenant.tenant, message="free?", actor=TEST_ACTOR)
    wait_for(lambda: _ping_answered(tenant.schema, ping.id), timeout=10, what="the worker to abandon the step")
    with schema_context(tenant.schema):
        assert Run.objects.get(id=run.id).step == step_at_cancel
        assert Checkpoint.objects.filter(run=run).count() == step_at_cancel + 1
        assert EffectRecord.objects.get(run=run, name="wait").status == "started"  # never finished


def _effect_started(schema, run_id, name) -> bool:
    with schema_context(schema):
        return EffectRecord.objects.filter(run_id=run_id, name=name).exists()


def _ping_answered(schema, ping_id) -> bool:
    with schema_context(schema):
        return Ping.objects.get(id=ping_id).status == "completed"


def stats(model_server: str, scenario: str) -> int:
    body = httpx.get(model_server.removesuffix("/v1") + "/admin/stats", timeout=10).json()
    return int(body["requests_per_scenario"].get(scenario, 0))


def test_a_supervisor_delegates_to_a_worker_agent_as_a_tool(worker_process, model_server, tenant):
    register(model_server, {"name": "otter-facts", "turns": [{"content": "Sea otters hold hands while they sleep."}]})
    register(model_server, {"name": "supervisor", "turns": [
        {"content": "1. ask the researcher"},
        {"tool_calls": [{"name": "ask_researcher", "arguments": {"input": "one fact about otters"}}]},
        {"content": "Fact: {{last_tool}}"},
        {"content": "Fact checked. DONE"}]})
    with schema_context(tenant.schema):
        services.agent_create(tenant=tenant.tenant, name="researcher", description="", actor=TEST_ACTOR, spec={
            "instructions": "Answer with one fact.", "models": ["openai/otter-facts"],
            "graph": {"entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"},
                                                   {"id": "end", "kind": "end"}]}})
    run = start(tenant, "supervisor", {
        "instructions": "Delegate research.", "models": ["openai/supervisor"],
        "tools": [{"name": "ask_researcher", "description": "Ask the researcher agent",
                   "input_schema": {"type": "object", "properties": {"input": {"type": "string"}}}}],
        "agent_tools": {"ask_researcher": "researcher"}})
    done = wait_for(lambda: finished(tenant.schema, run.id), timeout=60, what="the supervisor to finish")
    assert done.status == "completed", done.error
    with schema_context(tenant.schema):
        child = Run.objects.get(parent_run=run)
        messages = selectors.checkpoint_state(tenant_schema=tenant.schema, run_id=run.id,
                                              checkpoint_id=done.head_id).messages
    assert (child.status, child.input, child.output) == ("completed", "one fact about otters",
                                                         "Sea otters hold hands while they sleep.")
    assert any(m.role == "tool" and m.content == child.output for m in messages)
    assert any("Sea otters hold hands" in m.content for m in messages if m.role == "assistant")


def test_pause_takes_effect_between_steps_and_resume_finishes_the_run(worker_process, model_server, tenant):
    register(model_server, {"name": "pausable", "turns": [
        {"content": "plan"}, {"tool_calls": [{"name": "wait", "arguments": {"seconds": 2}}]},
        {"content": "waited"}, {"content": "DONE"}]})
    run = start(tenant, "pausable", {"instructions": "x", "models": ["openai/pausable"], "tools": [tool("wait")]})
    wait_for(lambda: _effect_started(tenant.schema, run.id, "wait"), timeout=60, what="the wait tool to start")
    with schema_context(tenant.schema):
        services.run_pause(tenant=tenant.tenant, run_id=run.id, actor=TEST_ACTOR)
    paused = wait_for(lambda: finished(tenant.schema, run.id, ("paused",)), timeout=30, what="the run to pause")
    with schema_context(tenant.schema):  # the in-flight step was allowed to finish and commit
        assert EffectRecord.objects.get(run=run, name="wait").status == "succeeded"
    time_paused = paused.step
    with schema_context(tenant.schema):
        assert Run.objects.get(id=run.id).step == time_paused  # nothing runs while paused
        services.run_resume(tenant=tenant.tenant, run_id=run.id, actor=TEST_ACTOR)
    done = wait_for(lambda: finished(tenant.schema, run.id), timeout=60, what="the run to finish")
    assert done.status == "completed" and done.step > time_paused


def test_replay_reuses_recorded_answers_unless_told_to_reexecute(worker_process, model_server, tenant):
    register(model_server, {"name": "replayable", "turns": [
        {"content": "plan"}, {"tool_calls": [{"name": "note_append", "arguments": {"text": "once"}}]},
        {"content": "noted"}, {"content": "DONE"}]})
    run = start(tenant, "replayable", {"instructions": "x", "models": ["openai/replayable"],
                                       "tools": [tool("note_append")]})
    original = wait_for(lambda: finished(tenant.schema, run.id), timeout=60, what="the original run")
    calls_before = stats(model_server, "replayable")
    with schema_context(tenant.schema):
        start_point = Checkpoint.objects.get(run=run, step=1)
        replay = services.run_fork(tenant=tenant.tenant, run_id=run.id, checkpoint_id=start_point.id,
                                   actor=TEST_ACTOR)
    replayed = wait_for(lambda: finished(tenant.schema, replay.id), timeout=60, what="the replay")
    assert (replayed.status, replayed.output) == ("completed", original.output)
    assert stats(model_server, "replayable") == calls_before  # every model answer reused
    with schema_context(tenant.schema):
        assert Note.objects.filter(text="once").count() == 1  # and the tool's effect not repeated
        assert EffectRecord.objects.filter(run=replay).exclude(reused_from=None).count() == \
            EffectRecord.objects.filter(run=replay).count() > 0
        again = services.run_fork(tenant=tenant.tenant, run_id=run.id, checkpoint_id=start_point.id,
                                  actor=TEST_ACTOR, reexecute=True)
    wait_for(lambda: finished(tenant.schema, again.id), timeout=60, what="the re-executed replay")
    assert stats(model_server, "replayable") > calls_before
    with schema_context(tenant.schema):
        assert Note.objects.filter(text="once").count() == 2  # re-executed on purpose: a new effect
