"""Agents using tenants' MCP servers, run by a real Celery worker: tools from two servers (a local one over
stdio, a remote one over streamable HTTP) in one run, one session per run and server, permissions enforced
at call time, every call audited. The servers are real processes built with the MCP SDK."""

from __future__ import annotations

import sys
import uuid

import httpx
import pytest
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from control_plane.audit.models import AuditEvent
from data_plane import services
from data_plane.models import EffectRecord, Run, RunEvent
from data_plane.runtime.core.state import RunState
from data_plane.selectors import checkpoint_state, tool_call_stats
from tests.mcp_servers import TOOLBOX
from tests.processes import wait_for

pytestmark = pytest.mark.worker



@pytest.fixture
def tenant(committed, http_toolbox):
    provisioned = provision_for_test("mcp")
    with schema_context(provisioned.tenant.schema_name):
        services.mcp_server_register(tenant=provisioned.tenant, name="calc", transport="stdio",
                                     command=sys.executable, args=[TOOLBOX], env={"TOOLBOX_IDENTITY": "calc-bot"},
                                     actor=TEST_ACTOR)
        services.mcp_server_register(tenant=provisioned.tenant, name="text", transport="http", url=http_toolbox,
                                     headers={"Authorization": "Bearer t0ken"}, actor=TEST_ACTOR)
    yield provisioned
    destroy_tenant(provisioned.tenant)


def register(model_server: str, turns: list[dict]) -> str:
    name = f"mcp-{uuid.uuid4().hex[:8]}"
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", json={"name": name, "turns": turns},
               timeout=10).raise_for_status()
    return f"openai/{name}"


def run_agent(tenant, model: str, servers: list[str]) -> Run:
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name=f"a-{uuid.uuid4().hex[:6]}", description="",
                                      spec={"instructions": "Use the tools.", "models": [model],
                                            "mcp_servers": servers}, actor=TEST_ACTOR)
        run = services.run_start(tenant=tenant.tenant, agent_id=agent.id, input="go", actor=TEST_ACTOR)
    return wait_for(lambda: _finished(tenant.schema, run.id), timeout=90, what="the run to finish")


def _finished(schema: str, run_id) -> Run | None:
    with schema_context(schema):
        run = Run.objects.get(id=run_id)
    return run if run.status in ("completed", "failed", "cancelled") else None


def tool_messages(tenant, run: Run) -> list[tuple[str, str]]:
    with schema_context(tenant.schema):
        state: RunState = checkpoint_state(tenant_schema=tenant.schema, run_id=run.id, checkpoint_id=run.head_id)
    return [(m.name or "", m.content) for m in state.messages if m.role == "tool"]


def test_a_run_uses_tools_of_a_local_and_a_remote_server(worker_process, model_server, tenant):
    # given
    model = register(model_server, [
        {"content": "1. Add. 2. Shout. 3. Ask who answers."},
        {"tool_calls": [{"name": "calc__add", "arguments": {"a": 2, "b": 3}},
                        {"name": "text__shout", "arguments": {"text": "done"}},
                        {"name": "calc__whoami", "arguments": {}}]},
        {"content": "Got {{last_tool}}."},
        {"content": "All done. DONE"}])
    # when
    run = run_agent(tenant, model, ["calc", "text"])
    # then
    assert run.status == "completed", run.error
    assert sorted(tool_messages(tenant, run)) == [("calc__add", "5"), ("calc__whoami", "calc-bot"),
                                                  ("text__shout", "DONE")]
    with schema_context(tenant.schema):
        effects = sorted(EffectRecord.objects.filter(run=run, kind="tool").values_list("name", "status"))
        audited = sorted((e.data["tool"], e.data["status"]) for e in AuditEvent.objects.filter(action="tool.call"))
        started = RunEvent.objects.filter(run=run, type="tool.started").count()
    assert effects == [("calc__add", "succeeded"), ("calc__whoami", "succeeded"), ("text__shout", "succeeded")]
    assert audited == [("calc__add", "ok"), ("calc__whoami", "ok"), ("text__shout", "ok")]
    assert started == 3
    # and each tool's success rate and latency are there to read
    with schema_context(tenant.schema):
        stats = {row["tool"]: row for row in tool_call_stats(tenant_schema=tenant.schema)}
    assert {name: (row["calls"], row["success_rate"]) for name, row in stats.items()} == {
        "calc__add": (1, 1.0), "calc__whoami": (1, 1.0), "text__shout": (1, 1.0)}
    assert all(row["latency_p50_ms"] > 0 for row in stats.values())


def test_one_session_per_run_and_server_keeps_the_servers_state_across_steps(worker_process, model_server, tenant):
    # given: a run that calls a stateful tool in two different steps
    turns = [{"content": "1. Count twice."},
             {"tool_calls": [{"name": "calc__counter", "arguments": {}}]},
             {"content": "Counted {{last_tool}}."},
             {"content": "Once more."},
             {"tool_calls": [{"name": "calc__counter", "arguments": {}}]},
             {"content": "Counted {{last_tool}}."},
             {"content": "Twice. DONE"}]
    # when
    first = run_agent(tenant, register(model_server, turns), ["calc"])
    second = run_agent(tenant, register(model_server, turns), ["calc"])
    # then: the run's second call saw the first's state; another run has a session of its own
    assert first.status == second.status == "completed", (first.error, second.error)
    assert tool_messages(tenant, first) == [("calc__counter", "default=1"), ("calc__counter", "default=2")]
    assert tool_messages(tenant, second) == [("calc__counter", "default=1"), ("calc__counter", "default=2")]


def test_a_denied_call_is_an_observation_and_an_audit_event_never_a_crash(worker_process, model_server, tenant):
    # given
    with schema_context(tenant.schema):
        services.tool_permission_set(tenant=tenant.tenant, tool="calc__add", mode="deny", actor=TEST_ACTOR)
        services.tool_permission_set(tenant=tenant.tenant, tool="text__*", mode="allow", actor=TEST_ACTOR,
                                     argument_schema={"type": "object", "properties": {
                                         "text": {"type": "string", "maxLength": 5}}})
    model = register(model_server, [
        {"content": "1. Add and shout."},
        {"tool_calls": [{"name": "calc__add", "arguments": {"a": 1, "b": 1}},
                        {"name": "text__shout", "arguments": {"text": "far too long"}},
                        {"name": "text__shout", "arguments": {"text": "ok"}}]},
        {"content": "Noted: {{last_tool}}"},
        {"content": "Done as far as allowed. DONE"}])
    # when
    run = run_agent(tenant, model, ["calc", "text"])
    # then
    assert run.status == "completed", run.error
    results = sorted(tool_messages(tenant, run))
    assert [name for name, _ in results] == ["calc__add", "text__shout", "text__shout"]
    assert results[0][1].startswith("Denied: the tool 'calc__add' is not allowed for this tenant (policy).")
    assert sorted(content for _, content in results[1:]) == [
        "Denied: these arguments to 'text__shout' are not allowed for this tenant: 'far too long' is too long", "OK"]
    with schema_context(tenant.schema):
        denied = sorted((e.data["tool"], e.data["rule"]) for e in AuditEvent.objects.filter(action="tool.denied"))
    assert denied == [("calc__add", "deny"), ("text__shout", "allow")]


def test_a_tool_that_requires_approval_waits_for_a_human_then_runs(worker_process, model_server, tenant):
    # given: a rule that calc__add needs a human's approval, taken into the agent's version
    with schema_context(tenant.schema):
        services.tool_permission_set(tenant=tenant.tenant, tool="calc__add", mode="require_approval",
                                     actor=TEST_ACTOR)
        agent = services.agent_create(tenant=tenant.tenant, name="careful", description="", actor=TEST_ACTOR, spec={
            "instructions": "x", "models": [register(model_server, [
                {"content": "1. Add."}, {"tool_calls": [{"name": "calc__add", "arguments": {"a": 20, "b": 22}}]},
                {"content": "Sum: {{last_tool}}"}, {"content": "Added. DONE"}])], "mcp_servers": ["calc"]})
        run = services.run_start(tenant=tenant.tenant, agent_id=agent.id, input="go", actor=TEST_ACTOR)
    waiting = wait_for(lambda: _finished(tenant.schema, run.id) or (
        _status(tenant.schema, run.id) == "waiting_approval" and run), timeout=60, what="the run to wait")
    assert _status(tenant.schema, run.id) == "waiting_approval", waiting
    with schema_context(tenant.schema):
        assert not EffectRecord.objects.filter(run_id=run.id, kind="tool").exists()  # nothing ran yet
        approval = Run.objects.get(id=run.id).approvals.get(status="pending")
        assert [call["name"] for call in approval.calls] == ["calc__add"]
        # when
        services.approval_decide(tenant=tenant.tenant, approval_id=approval.id, approved=True, actor=TEST_ACTOR)
    done = wait_for(lambda: _finished(tenant.schema, run.id), timeout=60, what="the run to finish")
    # then
    assert done.status == "completed", done.error
    assert tool_messages(tenant, done) == [("calc__add", "42")]


def _status(schema: str, run_id) -> str:
    with schema_context(schema):
        return Run.objects.get(id=run_id).status
