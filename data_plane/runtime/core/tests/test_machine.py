"""The state machine, table by table: pure, no database, no clock."""

import pytest

from data_plane.runtime.core import machine
from data_plane.runtime.core.machine import (
    ApprovalDecided,
    CallModel,
    CallTool,
    EffectFailed,
    EffectsCompleted,
    InvalidEvent,
    StartSubRun,
    SubRunResult,
)
from data_plane.runtime.core.messages import Message, ToolCall, ToolResult, Usage
from data_plane.runtime.core.ports import ModelReply
from data_plane.runtime.core.spec import spec_from_json
from data_plane.runtime.core.state import Decision, Status

CALC = {"name": "calculator", "description": "calc", "input_schema": {"type": "object"}}
PAY = {"name": "pay", "description": "pay", "requires_approval": True,
       "input_schema": {"type": "object", "properties": {"amount": {"type": "number"}}}}


def spec(**overrides):
    return spec_from_json({"instructions": "Be exact.", "models": ["m1", "m2"], "tools": [CALC, PAY], **overrides})


def reply(content="", *calls, cost=0.01):
    return ModelReply(message=Message(role="assistant", content=content,
                                      tool_calls=tuple(ToolCall(i, n, a) for i, n, a in calls)),
                      usage=Usage(model="m1", input_tokens=100, output_tokens=10, cost_usd=cost))


def tool(call_id, content, name="calculator"):
    return ToolResult(call_id=call_id, name=name, content=content)


def run(s, state, results, now=1.0):
    return machine.step(state, EffectsCompleted(results=results, now=now), spec=s)


def test_default_loop_plans_acts_observes_reflects_and_finishes():
    s = spec()
    state, commands = machine.start(s, input="What is 6*7?", now=0)
    assert [(type(c), c.key) for c in commands] == [(CallModel, "plan")]
    assert commands[0].request.tools == ()  # planning offers no tools
    assert commands[0].request.messages[0].content.startswith("Be exact.")
    state, commands = run(s, state, {"plan": reply("1. multiply")})
    assert [c.key for c in commands] == ["act"] and {t.name for t in commands[0].request.tools} == {"calculator", "pay"}
    state, commands = run(s, state, {"act": reply("", ("c1", "calculator", {"expression": "6*7"}),
                                                  ("c2", "calculator", {"expression": "1+1"}))})
    assert [(type(c), c.key) for c in commands] == [(CallTool, "observe:c1"), (CallTool, "observe:c2")]
    state, commands = run(s, state, {"observe:c1": tool("c1", "42"), "observe:c2": tool("c2", "2")})
    assert [m.role for m in state.messages[-2:]] == ["tool", "tool"]
    assert [c.key for c in commands] == ["act"]
    state, commands = run(s, state, {"act": reply("It is 42.")})
    assert [c.key for c in commands] == ["reflect"]
    state, commands = run(s, state, {"reflect": reply("The answer is 42. DONE")})
    assert commands == []
    assert state.status == Status.COMPLETED
    assert state.output == "The answer is 42"
    assert state.steps == 5
    assert state.cost_usd == pytest.approx(0.04)
    assert (state.input_tokens, state.output_tokens) == (400, 40)


def test_reflection_without_done_goes_back_to_acting():
    s = spec()
    state, _ = machine.start(s, input="x", now=0)
    state, _ = run(s, state, {"plan": reply("plan")})
    state, _ = run(s, state, {"act": reply("draft")})
    state, commands = run(s, state, {"reflect": reply("Missing the units.")})
    assert [c.key for c in commands] == ["act"] and state.status == Status.RUNNING


def test_pending_commands_are_recomputed_identically_from_a_state():
    s = spec()
    state, commands = machine.start(s, input="x", now=0)
    state, commands = run(s, state, {"plan": reply("plan")})
    state, commands = run(s, state, {"act": reply("", ("c1", "calculator", {"expression": "1"}))})
    assert machine.pending_commands(state, s) == commands


def test_conditional_routing_on_a_value():
    s = spec(graph={"entry": "classify", "nodes": [
        {"id": "classify", "kind": "llm", "output_key": "kind", "next": "route"},
        {"id": "route", "kind": "router", "routes": [
            {"when": {"kind": "value_equals", "key": "kind", "value": "refund"}, "goto": "refund"}],
         "default": "answer"},
        {"id": "refund", "kind": "tool", "tool": "calculator", "arguments": {"expression": {"$value": "amount"}},
         "output_key": "total", "next": "end"},
        {"id": "answer", "kind": "llm", "next": "end"},
        {"id": "end", "kind": "end"}]})
    state, _ = machine.start(s, input="money back", now=0, values={"amount": "10*2"})
    state, commands = run(s, state, {"classify": reply("refund")})
    assert [(type(c), c.call.arguments) for c in commands] == [(CallTool, {"expression": "10*2"})]
    state, commands = run(s, state, {"refund": ToolResult(call_id="x", name="calculator", content="20", structured=20)})
    assert state.status == Status.COMPLETED and state.values["total"] == 20 and state.values["kind"] == "refund"

    other, _ = machine.start(s, input="hello", now=0)
    other, commands = run(s, other, {"classify": reply("greeting")})
    assert [c.key for c in commands] == ["answer"]


PARALLEL = {"entry": "fan", "nodes": [
    {"id": "fan", "kind": "parallel", "branches": ["research", "price"], "join": "merge"},
    {"id": "research", "kind": "llm", "next": "merge"},
    {"id": "price", "kind": "tool", "tool": "calculator", "arguments": {"expression": "3*3"}, "output_key": "price",
     "next": "check"},
    {"id": "check", "kind": "llm", "next": "merge"},
    {"id": "merge", "kind": "join", "next": "summary"},
    {"id": "summary", "kind": "llm", "next": "end"},
    {"id": "end", "kind": "end"}]}


def test_parallel_branches_run_together_and_the_join_waits_for_every_branch():
    s = spec(graph=PARALLEL)
    state, commands = machine.start(s, input="go", now=0)
    assert sorted((type(c).__name__, c.key) for c in commands) == [("CallModel", "research"), ("CallTool", "price")]
    # one superstep: the research branch reaches the join, the price branch continues to check
    state, commands = run(s, state, {"research": reply("findings"), "price": tool("p", "9")})
    assert [c.key for c in commands] == ["check"]
    assert state.join_arrivals == {"merge": 1}
    state, commands = run(s, state, {"check": reply("price ok")})
    assert [c.key for c in commands] == ["summary"] and state.join_arrivals == {}
    state, _ = run(s, state, {"summary": reply("all done")})
    assert state.status == Status.COMPLETED and state.values["price"] == "9"


def test_a_partial_superstep_keeps_what_arrived():
    s = spec(graph=PARALLEL)
    state, _ = machine.start(s, input="go", now=0)
    state, commands = run(s, state, {"price": tool("p", "9")})
    assert sorted(c.key for c in commands) == ["check", "research"]


APPROVAL = {"entry": "draft", "nodes": [
    {"id": "draft", "kind": "llm", "next": "gate"},
    {"id": "gate", "kind": "approval", "prompt": "Send it?", "next": "send", "on_reject": "revise"},
    {"id": "send", "kind": "llm", "next": "end"},
    {"id": "revise", "kind": "llm", "next": "end"},
    {"id": "end", "kind": "end"}]}


@pytest.mark.parametrize("approved, next_key", [(True, "send"), (False, "revise")])
def test_an_approval_node_waits_for_a_human(approved, next_key):
    s = spec(graph=APPROVAL)
    state, _ = machine.start(s, input="x", now=0)
    state, commands = run(s, state, {"draft": reply("draft")})
    assert commands == [] and state.status == Status.WAITING_APPROVAL
    assert state.pending_approval.prompt == "Send it?"
    state, commands = machine.step(state, ApprovalDecided(Decision(state.pending_approval.id, approved), now=2),
                                   spec=s)
    assert state.status == Status.RUNNING and state.pending_approval is None
    assert [c.key for c in commands] == [next_key]


def test_a_rejection_without_a_way_out_fails_the_run():
    s = spec(graph={"entry": "gate", "nodes": [{"id": "gate", "kind": "approval", "next": "end"},
                                               {"id": "end", "kind": "end"}]})
    state, _ = machine.start(s, input="x", now=0)
    state, _ = machine.step(state, ApprovalDecided(Decision(state.pending_approval.id, False, comment="no"), now=1),
                            spec=s)
    assert state.status == Status.FAILED and state.error["code"] == "approval_rejected"
    assert "no" in state.error["message"]


def test_a_decision_for_another_approval_is_refused():
    s = spec(graph=APPROVAL)
    state, _ = machine.start(s, input="x", now=0)
    state, _ = run(s, state, {"draft": reply("d")})
    with pytest.raises(InvalidEvent):
        machine.step(state, ApprovalDecided(Decision("0:other", True), now=1), spec=s)


def _waiting_for_payment():
    s = spec()
    state, _ = machine.start(s, input="pay the invoice", now=0)
    state, _ = run(s, state, {"plan": reply("plan")})
    state, commands = run(s, state, {"act": reply("", ("c1", "pay", {"amount": 100}),
                                                  ("c2", "calculator", {"expression": "100*1.2"}))})
    return s, state, commands


def test_a_gated_tool_call_waits_and_runs_with_edited_arguments():
    s, state, commands = _waiting_for_payment()
    assert commands == [] and state.status == Status.WAITING_APPROVAL
    assert [c.name for c in state.pending_approval.calls] == ["pay"]
    decision = Decision(state.pending_approval.id, True, arguments={"c1": {"amount": 90}})
    state, commands = machine.step(state, ApprovalDecided(decision, now=1), spec=s)
    assert [(c.call.name, c.call.arguments) for c in commands] == [("pay", {"amount": 90}),
                                                                   ("calculator", {"expression": "100*1.2"})]
    state, commands = run(s, state, {"observe:c1": tool("c1", "paid", "pay"), "observe:c2": tool("c2", "120")})
    assert [m.content for m in state.messages[-2:]] == ["paid", "120"] and state.decisions == {}


def test_a_rejected_tool_call_becomes_an_observation_and_the_rest_runs():
    s, state, _ = _waiting_for_payment()
    decision = Decision(state.pending_approval.id, False, comment="too much")
    state, commands = machine.step(state, ApprovalDecided(decision, now=1), spec=s)
    assert [c.call.name for c in commands] == ["calculator"]
    state, _ = run(s, state, {"observe:c2": tool("c2", "120")})
    rejected = next(m for m in state.messages if m.tool_call_id == "c1")
    assert "rejected" in rejected.content and "too much" in rejected.content


def test_edited_arguments_for_a_call_not_awaiting_approval_are_refused():
    s, state, _ = _waiting_for_payment()
    with pytest.raises(InvalidEvent):
        machine.step(state, ApprovalDecided(Decision(state.pending_approval.id, True, arguments={"c2": {}}), now=1),
                     spec=s)


@pytest.mark.parametrize("limits, now, code", [
    ({"max_steps": 2}, 1.0, "step_limit"),
    ({"max_cost_usd": 0.015}, 1.0, "budget_exceeded"),
    ({"max_seconds": 10}, 11.0, "time_limit"),
])
def test_limits_stop_the_run_with_a_reason(limits, now, code):
    s = spec(limits=limits)
    state, _ = machine.start(s, input="x", now=0)
    state, _ = run(s, state, {"plan": reply("p")}, now=now)
    if state.status == Status.RUNNING:
        state, _ = run(s, state, {"act": reply("a")}, now=now)
    assert state.status == Status.FAILED and state.error["code"] == code


def test_a_failed_effect_fails_the_run_with_its_reason():
    s = spec()
    state, _ = machine.start(s, input="x", now=0)
    state, commands = run(s, state, {"plan": EffectFailed(code="model_rejected", message="context too long")})
    assert commands == [] and state.status == Status.FAILED
    assert state.error == {"code": "model_rejected", "message": "context too long"}


def test_a_subagent_node_waits_for_its_child_run_then_continues():
    s = spec(graph={"entry": "ask", "nodes": [
        {"id": "ask", "kind": "subagent", "agent": "researcher", "input": "Find {{topic}}", "output_key": "found",
         "next": "end"},
        {"id": "end", "kind": "end"}]})
    state, commands = machine.start(s, input="x", now=0, values={"topic": "otters"})
    assert commands == [StartSubRun(key="ask", node_id="ask", agent="researcher", input="Find otters")]
    state, commands = run(s, state, {})
    assert state.status == Status.WAITING_SUBRUN and state.waiting_on == ("ask",)
    state, commands = run(s, state, {"ask": SubRunResult(run_id="r2", status="completed", output="Otters hold hands.")})
    assert state.status == Status.COMPLETED and state.values["found"] == "Otters hold hands."
    assert state.messages[-1].name == "researcher"


def test_an_agent_called_as_a_tool_answers_as_the_tool():
    s = spec(tools=[CALC, {"name": "ask_researcher", "description": "delegate"}],
             agent_tools={"ask_researcher": "researcher"})
    state, _ = machine.start(s, input="x", now=0)
    state, _ = run(s, state, {"plan": reply("p")})
    state, commands = run(s, state, {"act": reply("", ("c9", "ask_researcher", {"input": "otters?"}))})
    assert commands == [StartSubRun(key="observe:c9", node_id="observe", agent="researcher", input="otters?")]
    state, commands = run(s, state, {"observe:c9": SubRunResult(run_id="r2", status="completed", output="yes")})
    assert state.messages[-1] == Message(role="tool", content="yes", tool_call_id="c9", name="ask_researcher")
    assert [c.key for c in commands] == ["act"]


def test_a_finished_state_takes_no_more_events_but_can_be_reopened():
    s = spec(graph={"entry": "a", "nodes": [{"id": "a", "kind": "llm", "next": "e"}, {"id": "e", "kind": "end"}]})
    state, _ = machine.start(s, input="x", now=0)
    state, _ = run(s, state, {"a": reply("done")})
    with pytest.raises(InvalidEvent):
        run(s, state, {})
    reopened = machine.reopen(state.evolve(messages=state.messages + (Message(role="user", content="more"),)), s,
                              now=5)
    assert reopened.status == Status.RUNNING and machine.pending_commands(reopened, s)[0].key == "a"


def test_state_control_round_trips():
    from data_plane.runtime.core.state import RunState

    s, state, _ = _waiting_for_payment()
    rebuilt = RunState.from_parts(control=state.control_json(), messages=state.messages, values=state.values)
    assert rebuilt == state


def test_a_handoff_ends_the_run_with_the_other_agents_answer():
    s = spec(tools=[CALC, {"name": "transfer_to_billing", "description": "hand the customer to billing"}],
             handoffs={"transfer_to_billing": "billing"})
    state, _ = machine.start(s, input="I was charged twice", now=0)
    state, _ = run(s, state, {"plan": reply("p")})
    state, commands = run(s, state, {"act": reply("", ("h1", "transfer_to_billing", {"input": "double charge"}))})
    assert commands == [StartSubRun(key="observe:h1", node_id="observe", agent="billing",
                                    input="I was charged twice\n\n(Handed over: double charge)")]
    state, commands = run(s, state, {"observe:h1": SubRunResult(run_id="r3", status="completed",
                                                                 output="Refunded the second charge.")})
    assert commands == [] and state.status == Status.COMPLETED
    assert state.output == "Refunded the second charge." and state.messages[-1].name == "billing"


def test_a_tool_cannot_be_both_an_agent_tool_and_a_handoff():
    from data_plane.runtime.core.graph import GraphInvalid

    with pytest.raises(GraphInvalid) as exc:
        spec(tools=[CALC, {"name": "x", "description": "x"}], agent_tools={"x": "a"}, handoffs={"x": "a"})
    assert "handoffs.x" in {e["path"] for e in exc.value.errors}
