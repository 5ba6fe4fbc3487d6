"""The run state machine: ``start`` and ``step`` are pure (same inputs, same outputs); the shell does the IO.

A step applies one event to the state and returns the new state and the effects to perform next
(``pending_commands`` recomputes them from any state, which is how a run resumes from a checkpoint).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from data_plane.runtime.core import context, routing
from data_plane.runtime.core.context import ESTIMATE, SUMMARY_KEY, Meter, Overflow, SummaryNeeded
from data_plane.runtime.core.graph import (
    ApprovalNode,
    Condition,
    EndNode,
    JoinNode,
    LlmNode,
    Node,
    ParallelNode,
    RouterNode,
    SubAgentNode,
    ToolNode,
    ToolsNode,
)
from data_plane.runtime.core.messages import AttachmentPart, Message, ToolCall, ToolResult
from data_plane.runtime.core.ports import ModelReply, ModelRequest
from data_plane.runtime.core.spec import AgentSpec
from data_plane.runtime.core.tool_selection import select_tools
from data_plane.runtime.core.state import Decision, PendingApproval, RunState, Status


# --- Events (what happened) -----------------------------------------------------------------------

@dataclass(frozen=True)
class SubRunResult:
    run_id: str
    status: str  # completed | failed | cancelled
    output: str


@dataclass(frozen=True)
class EffectFailed:
    """An effect that failed for good (provider rejected, retries exhausted, tool unreachable)."""

    code: str
    message: str


EffectResult = ModelReply | ToolResult | SubRunResult | EffectFailed


@dataclass(frozen=True)
class EffectsCompleted:
    results: Mapping[str, EffectResult]
    now: float


@dataclass(frozen=True)
class ApprovalDecided:
    decision: Decision
    now: float


Event = EffectsCompleted | ApprovalDecided


# --- Commands (what to do) ------------------------------------------------------------------------

@dataclass(frozen=True)
class CallModel:
    key: str
    node_id: str
    request: ModelRequest


@dataclass(frozen=True)
class CallTool:
    key: str
    node_id: str
    call: ToolCall


@dataclass(frozen=True)
class StartSubRun:
    key: str
    node_id: str
    agent: str
    input: str


Command = CallModel | CallTool | StartSubRun


class InvalidEvent(Exception):
    """The event does not fit the state (a decision for an approval that is not pending, say)."""


@dataclass(frozen=True)
class _Advance:
    """A node finished: what it appends and which node comes next."""

    messages: tuple[Message, ...] = ()
    values: Mapping[str, Any] = field(default_factory=dict)
    goto: str | None = None
    usage: tuple[int, int, float] = (0, 0, 0.0)
    held_calls: tuple[str, ...] | None = None  # a reply's tool calls held for approval (None: not a reply)


# --- Entry points ---------------------------------------------------------------------------------

def start(spec: AgentSpec, *, input: str, now: float, values: Mapping[str, Any] | None = None,
          attachments: tuple[AttachmentPart, ...] = (), meter: Meter = ESTIMATE) -> tuple[RunState, list[Command]]:
    """The state of a new run with the user's input (its text and attached files), and its first effects."""
    state = RunState(status=Status.RUNNING, messages=(Message(role="user", content=input, attachments=attachments),),
                     values=dict(values or {}), frontier=(spec.workflow.entry,), started_at=now)
    state = _settle(state, spec)
    return state, pending_commands(state, spec, meter)


def step(state: RunState, event: Event, *, spec: AgentSpec, meter: Meter = ESTIMATE
         ) -> tuple[RunState, list[Command]]:
    """Apply one event; return the next state and the effects to perform. Raises InvalidEvent.

    ``meter`` measures model calls' contexts; it must be the one the effects were computed with."""
    if state.is_terminal:
        raise InvalidEvent(f"The run is {state.status}; it takes no more events.")
    match event:
        case EffectsCompleted(results=results, now=now):
            state = _apply_results(state, spec, results, meter)
            if set(results) != {SUMMARY_KEY}:  # summarising is bookkeeping, not a step of the agent
                state = state.evolve(steps=state.steps + 1)
            state = _settle(state, spec)
            state = _check_limits(state, spec, now)
        case ApprovalDecided(decision=decision):
            pending = state.pending_approval
            if pending is None or pending.id != decision.approval_id:
                raise InvalidEvent(f"Approval {decision.approval_id!r} is not pending.")
            unknown = set(decision.arguments) - {call.id for call in pending.calls}
            if unknown:
                raise InvalidEvent(f"Edited arguments name calls that are not awaiting approval: {sorted(unknown)}.")
            state = state.evolve(status=Status.RUNNING, pending_approval=None,
                                 decisions={**state.decisions, pending.node_id: decision})
            state = _settle(state, spec)
    return state, pending_commands(state, spec, meter)


def reopen(state: RunState, spec: AgentSpec, *, now: float) -> RunState:
    """A finished state made runnable again from the graph's entry (a fork that adds a message to a
    finished conversation continues it)."""
    reopened = state.evolve(status=Status.RUNNING, frontier=(spec.workflow.entry,), output=None, error=None,
                            pending_approval=None, decisions={}, join_arrivals={}, collected={}, waiting_on=(),
                            started_at=now)
    return _settle(reopened, spec)


def revive(state: RunState, spec: AgentSpec) -> RunState:
    """A failed state made runnable again where it stopped (a retry): the frontier is settled anew, so an
    approval that was rejected is asked again and a failed effect is attempted again."""
    return _settle(state.evolve(status=Status.RUNNING, error=None, pending_approval=None), spec)


def pending_commands(state: RunState, spec: AgentSpec, meter: Meter = ESTIMATE) -> list[Command]:
    """The effects the frontier waits on and has no result for yet. Deterministic: recomputing after a
    crash gives the same commands with the same keys."""
    if state.status not in (Status.RUNNING, Status.WAITING_SUBRUN):
        return []
    return [command for command in _plan(state, spec, meter)[0] if command.key not in state.collected]


class _LastPlan(threading.local):
    """Each thread's last plan, kept by the identity of the state, spec and meter it was made for. A step plans
    the same state twice (its commands before the effects, then again to apply their results) and the state
    it returns becomes the next step's: without this, a model call's context would be fitted two or three
    times a step. States, specs and meters are immutable; the entry holds them, so no identity is reused."""

    entry: tuple[RunState, AgentSpec, Meter, tuple[Command, ...], dict[str, str]] | None = None


_last_plan = _LastPlan()


def _plan(state: RunState, spec: AgentSpec, meter: Meter) -> tuple[list[Command], dict[str, str]]:
    """The frontier's commands, and the LLM nodes held back: waiting for the conversation's summary (''),
    or unable to fit their context (why)."""
    entry = _last_plan.entry
    if entry is not None and entry[0] is state and entry[1] is spec and entry[2] is meter:
        return list(entry[3]), dict(entry[4])
    commands, held = _make_plan(state, spec, meter)
    _last_plan.entry = (state, spec, meter, tuple(commands), dict(held))
    return commands, held


def _make_plan(state: RunState, spec: AgentSpec, meter: Meter) -> tuple[list[Command], dict[str, str]]:
    graph = spec.workflow
    commands: list[Command] = []
    held: dict[str, str] = {}
    for node_id in state.frontier:
        node = graph.node(node_id)
        match node:
            case LlmNode():
                fitted = _model_request(state, spec, node, meter)
                if isinstance(fitted, Overflow):
                    held[node_id] = fitted.message
                elif isinstance(fitted, SummaryNeeded):
                    held[node_id] = ""
                    if all(command.key != SUMMARY_KEY for command in commands):
                        commands.append(CallModel(key=SUMMARY_KEY, node_id=node_id, request=fitted.request))
                else:
                    commands.append(CallModel(key=node_id, node_id=node_id, request=fitted))
            case ToolNode():
                call = ToolCall(id=f"{node_id}-{state.steps}", name=node.tool,
                                arguments=_resolve_arguments(node.arguments, state.values))
                commands.append(CallTool(key=node_id, node_id=node_id, call=call))
            case ToolsNode():
                decision = state.decisions.get(node_id)
                for call in _calls_to_run(state, spec, node_id, decision):
                    key = f"{node_id}:{call.id}"
                    delegate = spec.agent_tools.get(call.name) or spec.handoffs.get(call.name)
                    if delegate is not None:
                        commands.append(StartSubRun(key=key, node_id=node_id, agent=delegate,
                                                    input=_delegation_input(state, call, spec)))
                    else:
                        commands.append(CallTool(key=key, node_id=node_id, call=call))
            case SubAgentNode():
                commands.append(StartSubRun(key=node_id, node_id=node_id, agent=node.agent,
                                            input=_template(node.input, state)))
    return commands, held


# --- Applying results -----------------------------------------------------------------------------

def _apply_results(state: RunState, spec: AgentSpec, results: Mapping[str, EffectResult], meter: Meter) -> RunState:
    graph = spec.workflow
    commands, held = _plan(state, spec, meter)
    expected = {command.key: command for command in commands}
    collected = {**state.collected, **{k: _result_json(v) for k, v in results.items() if k in expected}}
    summarised = collected.pop(SUMMARY_KEY, None)
    if summarised is not None:
        if summarised["type"] == "failed":
            return state.evolve(status=Status.FAILED, error={"code": summarised["code"],
                                                             "message": summarised["message"]})
        state = _with_summary(state, spec, expected[SUMMARY_KEY], summarised, meter)
        del expected[SUMMARY_KEY]
    frontier: list[str] = []
    messages = list(state.messages)
    values = dict(state.values)
    decisions = dict(state.decisions)
    joins = dict(state.join_arrivals)
    tokens_in, tokens_out, cost = state.input_tokens, state.output_tokens, state.cost_usd
    waiting: list[str] = []
    held_calls: tuple[str, ...] | None = None

    for node_id in state.frontier:
        node = graph.node(node_id)
        if node_id in held:
            if held[node_id]:
                return state.evolve(status=Status.FAILED, error={"code": "context_overflow", "message": held[node_id]},
                                    values=values)
            frontier.append(node_id)  # its call goes ahead next, with the new summary
            continue
        keys = [key for key, command in expected.items() if command.node_id == node_id]
        failed = next((collected[k] for k in keys if collected.get(k, {}).get("type") == "failed"), None)
        if failed is not None:
            return state.evolve(status=Status.FAILED, error={"code": failed["code"], "message": failed["message"]},
                                values=values)
        if any(key not in collected for key in keys):
            frontier.append(node_id)
            waiting.extend(k for k in keys if k not in collected and isinstance(expected[k], StartSubRun))
            continue
        advance = _complete_node(node, state, spec, {k: collected.pop(k) for k in keys}, decisions)
        messages.extend(advance.messages)
        values.update(advance.values)
        tokens_in, tokens_out, cost = tokens_in + advance.usage[0], tokens_out + advance.usage[1], cost + advance.usage[2]
        decisions.pop(node_id, None)
        if advance.held_calls is not None:
            held_calls = (held_calls or ()) + advance.held_calls
        frontier.extend(_arrive(graph, advance.goto, joins))

    outstanding = [key for key in expected if key not in collected and key in _keys_of(frontier, expected)]
    only_subruns = bool(outstanding) and all(isinstance(expected[key], StartSubRun) for key in outstanding)
    return state.evolve(messages=tuple(messages), values=values, frontier=tuple(dict.fromkeys(frontier)),
                        decisions=decisions, join_arrivals=joins, input_tokens=tokens_in, output_tokens=tokens_out,
                        cost_usd=cost, status=Status.WAITING_SUBRUN if only_subruns else Status.RUNNING,
                        waiting_on=tuple(waiting), collected=collected,
                        held_calls=state.held_calls if held_calls is None else held_calls)


def _with_summary(state: RunState, spec: AgentSpec, command: Command, reply: dict[str, Any], meter: Meter) -> RunState:
    """The state with the summarising call's reply as its summary, and the call's usage counted."""
    assert isinstance(command, CallModel)
    upto = command.request.metadata["summarises"][1]
    summary = context.summary_from_reply(Message.from_json(reply["message"]).content, upto=upto,
                                         settings=spec.context, model=command.request.models[0], counter=meter.counter)
    usage = reply["usage"]
    return state.evolve(summary=summary, input_tokens=state.input_tokens + usage["input_tokens"],
                        output_tokens=state.output_tokens + usage["output_tokens"],
                        cost_usd=state.cost_usd + usage["cost_usd"])


def _keys_of(frontier: list[str], expected: Mapping[str, Command]) -> set[str]:
    return {key for key, command in expected.items() if command.node_id in frontier}


def _complete_node(node: Node, state: RunState, spec: AgentSpec, results: dict[str, dict[str, Any]],
                   decisions: dict[str, Decision]) -> _Advance:
    match node:
        case LlmNode():
            reply = results[node.id]
            message = Message.from_json(reply["message"])
            usage = reply["usage"]
            values = {node.output_key: message.content} if node.output_key else {}
            return _Advance(messages=(message,), values=values, goto=node.next,
                            usage=(usage["input_tokens"], usage["output_tokens"], usage["cost_usd"]),
                            held_calls=tuple(reply.get("held_calls", ())))
        case ToolNode():
            result = ToolResult.from_json(results[node.id]["result"])
            values = {node.output_key: result.structured if result.structured is not None else result.content} \
                if node.output_key else {}
            return _Advance(values=values, goto=node.next)
        case ToolsNode():
            decision = decisions.get(node.id)
            ran = {call.id for call in _calls_to_run(state, spec, node.id, decision)}
            out: list[Message] = []
            handed_to: tuple[str, str] | None = None
            for call in _last_tool_calls(state):
                key = f"{node.id}:{call.id}"
                if call.id in ran:
                    out.append(_tool_message(call, results[key]))
                    if call.name in spec.handoffs and results[key].get("status") == "completed":
                        handed_to = (spec.handoffs[call.name], results[key]["output"])
                else:
                    reason = f": {decision.comment}" if decision and decision.comment else "."
                    out.append(Message(role="tool", name=call.name, tool_call_id=call.id,
                                       content=f"A human reviewer rejected this call{reason} Do not retry it as is."))
            if handed_to is not None:  # the other agent answered the user: this run ends with its answer
                return _Advance(messages=(*out, Message(role="assistant", name=handed_to[0], content=handed_to[1])),
                                goto=None)
            return _Advance(messages=tuple(out), goto=node.next)
        case SubAgentNode():
            sub = results[node.id]
            values = {node.output_key: sub["output"]} if node.output_key else {}
            return _Advance(messages=(Message(role="assistant", name=node.agent, content=sub["output"]),),
                            values=values, goto=node.next)
    raise AssertionError(f"{node.kind} nodes have no effect to complete")


def _tool_message(call: ToolCall, result: dict[str, Any]) -> Message:
    if result["type"] == "subrun":
        return Message(role="tool", name=call.name, tool_call_id=call.id,
                       content=result["output"] if result["status"] == "completed"
                       else f"The delegated agent {result['status']}: {result['output']}")
    return ToolResult.from_json(result["result"]).as_message()


def _result_json(result: EffectResult) -> dict[str, Any]:
    match result:
        case ModelReply():
            return {"type": "model", "message": result.message.to_json(), "usage": result.usage.to_json(),
                    **({"held_calls": list(result.held_calls)} if result.held_calls else {})}
        case ToolResult():
            return {"type": "tool", "result": result.to_json()}
        case SubRunResult():
            return {"type": "subrun", "run_id": result.run_id, "status": result.status, "output": result.output}
        case EffectFailed():
            return {"type": "failed", "code": result.code, "message": result.message}
    raise TypeError(f"not an effect result: {result!r}")


# --- Settling the frontier: routers, fan-outs, joins, approvals, ends ------------------------------

def _arrive(graph: Any, target: str | None, joins: dict[str, int]) -> list[str]:
    """Nodes to add to the frontier when a node hands over to ``target``; a join waits for every branch."""
    if target is None:
        return []
    node = graph.node(target)
    if isinstance(node, JoinNode):
        parallel = graph.join_of(target)
        joins[target] = joins.get(target, 0) + 1
        if parallel is not None and joins[target] < len(parallel.branches):
            return []
        joins.pop(target, None)
        return _arrive(graph, node.next, joins)
    return [target]


def _settle(state: RunState, spec: AgentSpec) -> RunState:
    """Resolve instant nodes until the frontier holds only effect nodes; detect approvals and the end."""
    graph = spec.workflow
    frontier = list(state.frontier)
    joins = dict(state.join_arrivals)
    decisions = dict(state.decisions)
    settled: list[str] = []
    pending: PendingApproval | None = None
    status = state.status
    guard = 0
    while frontier:
        guard += 1
        if guard > 10 * max(len(graph.nodes), 1):
            return state.evolve(status=Status.FAILED, error={"code": "routing_loop",
                                                             "message": "Routers loop without doing any work."})
        node_id = frontier.pop(0)
        node = graph.node(node_id)
        match node:
            case RouterNode():
                frontier.extend(_arrive(graph, _route(node, state), joins))
            case ParallelNode():
                frontier.extend(node.branches)
            case JoinNode():
                frontier.extend(_arrive(graph, node.next, joins))
            case EndNode():
                pass
            case ApprovalNode():
                decision = decisions.pop(node_id, None)
                if decision is None:
                    pending = pending or _still_pending(state, node_id) or PendingApproval(
                        id=f"{state.approvals_asked + 1}:{node_id}", node_id=node_id, kind="node", prompt=node.prompt)
                    settled.append(node_id)
                elif decision.approved:
                    frontier.extend(_arrive(graph, node.next, joins))
                elif node.on_reject:
                    frontier.extend(_arrive(graph, node.on_reject, joins))
                else:
                    return state.evolve(status=Status.FAILED, decisions=decisions, error={
                        "code": "approval_rejected",
                        "message": f"Approval at {node_id!r} was rejected{': ' + decision.comment if decision.comment else '.'}"})
            case ToolsNode() if node_id not in decisions and _gated_calls(state, spec):
                pending = pending or _still_pending(state, node_id) or PendingApproval(
                    id=f"{state.approvals_asked + 1}:{node_id}", node_id=node_id, kind="tool_calls",
                    prompt=_approval_prompt(state, spec), calls=tuple(_gated_calls(state, spec)))
                settled.append(node_id)
            case _:
                settled.append(node_id)
    settled = list(dict.fromkeys(settled))
    asked = state.approvals_asked
    if pending is not None:
        status = Status.WAITING_APPROVAL
        if state.pending_approval is None or state.pending_approval.id != pending.id:
            asked += 1
    elif not settled:
        last = next((m for m in reversed(state.messages) if m.role == "assistant"), None)
        return state.evolve(status=Status.COMPLETED, frontier=(), join_arrivals=joins, decisions=decisions,
                            output=_final_text(last.content if last else ""))
    elif status == Status.WAITING_APPROVAL:
        status = Status.RUNNING
    return state.evolve(frontier=tuple(settled), join_arrivals=joins, decisions=decisions,
                        pending_approval=pending, status=status, approvals_asked=asked)


def _still_pending(state: RunState, node_id: str) -> PendingApproval | None:
    pending = state.pending_approval
    return pending if pending is not None and pending.node_id == node_id else None


def _check_limits(state: RunState, spec: AgentSpec, now: float) -> RunState:
    if state.is_terminal:
        return state
    limits = spec.limits
    max_steps = min(filter(None, (limits.max_steps, spec.workflow.max_steps)), default=None)
    if max_steps is not None and state.steps >= max_steps:
        return state.evolve(status=Status.FAILED, error={"code": "step_limit",
                                                         "message": f"The run reached its limit of {max_steps} steps."})
    if limits.max_cost_usd is not None and state.cost_usd > limits.max_cost_usd:
        return state.evolve(status=Status.FAILED, error={
            # a backstop: the executor holds each call's worst case against this limit before the call
            "code": "budget_exceeded", "message": f"The run's limit of ${limits.max_cost_usd} (the agent's "
                                                  f"limits.max_cost_usd) was exceeded: ${state.cost_usd:.6f} spent. "
                                                  "Raise the limit in the agent's spec and start the run again."})
    if limits.max_seconds is not None and now - state.started_at > limits.max_seconds:
        return state.evolve(status=Status.FAILED, error={
            "code": "time_limit", "message": f"The run exceeded its limit of {limits.max_seconds} seconds."})
    return state


def _route(node: RouterNode, state: RunState) -> str | None:
    for route in node.routes:
        if _holds(route.when, state):
            return route.goto
    return node.default


def _holds(condition: Condition, state: RunState) -> bool:
    last = next((m for m in reversed(state.messages) if m.role == "assistant"), None)
    match condition.kind:
        case "always":
            return True
        case "has_tool_calls":
            return bool(state.messages and state.messages[-1].role == "assistant" and state.messages[-1].tool_calls)
        case "no_tool_calls":
            return not (state.messages and state.messages[-1].role == "assistant" and state.messages[-1].tool_calls)
        case "text_contains":
            return last is not None and (condition.text or "").lower() in last.content.lower()
        case "value_equals":
            return state.values.get(condition.key or "") == condition.value
        case "value_truthy":
            return bool(state.values.get(condition.key or ""))
        case "steps_at_least":
            return state.steps >= (condition.count or 0)
    return False


# --- Helpers -----------------------------------------------------------------------------------------

def _model_request(state: RunState, spec: AgentSpec, node: LlmNode, meter: Meter = ESTIMATE
                   ) -> ModelRequest | SummaryNeeded | Overflow:
    """The node's model call, its context fitted to the budget (core/context.py); or the summary it waits
    for; or why it cannot fit."""
    instructions = "\n\n".join(part for part in (spec.instructions, node.instructions) if part)
    available = spec.tools if node.tools is None else tuple(t for t in spec.tools if t.name in node.tools)
    offered = select_tools(available, state.messages, limit=spec.max_tools_per_call)
    metadata: dict[str, Any] = {"node": node.id, "step": state.steps}
    if len(offered) < len(available):  # say which, so a run's record shows what the model could choose from
        metadata["tools_selected"] = [tool.name for tool in offered]
        metadata["tools_available"] = len(available)
    models = node.models or spec.models
    if not node.models and spec.run_routing is not None:  # a node that names its models keeps them
        decision = routing_decision(state, spec.run_routing, tools=len(offered), meter=meter)
        models = decision.models
        metadata["route"] = {**decision.to_json(), "policy": spec.run_routing.source}
    draft = ModelRequest(models=models, messages=(), tools=offered,
                         temperature=spec.temperature, timeout_seconds=spec.model_timeout_seconds, metadata=metadata)
    if meter.recalls_memories and not spec.memory.recall:  # room for memories only for agents that recall
        meter = replace(meter, recalls_memories=False)
    return context.fit(draft, state=state, instructions=instructions, settings=spec.context, meter=meter)


def routing_decision(state: RunState, run_routing: routing.RunRouting, *, tools: int, meter: Meter = ESTIMATE
                     ) -> routing.RouteDecision:
    """The routing decision for a model call of this run, offering ``tools`` tools: features from the
    conversation as the call sends it (its size counted for the cheap tier's first model) and the latest user
    message's complexity. Deterministic: a recomputed step routes the same way."""
    policy = run_routing.policy
    position = next((i for i in range(len(state.messages) - 1, -1, -1) if state.messages[i].role == "user"), None)
    request = state.messages[position].content if position is not None else ""
    complexity = routing.estimate_complexity(request, tools=tools, depth=position or 0)
    features = routing.RouteFeatures(task_kind=run_routing.task_kind, tools=tools, complexity=complexity,
                                     input_tokens=context.conversation_tokens(state, model=policy.cheap[0],
                                                                              meter=meter))
    return routing.route(policy, features)


def _last_tool_calls(state: RunState) -> tuple[ToolCall, ...]:
    for message in reversed(state.messages):
        if message.role == "assistant":
            return message.tool_calls
    return ()


def _approval_prompt(state: RunState, spec: AgentSpec) -> str:
    calls = _gated_calls(state, spec)
    prompt = "These tool calls need approval: " + ", ".join(call.name for call in calls)
    held = [call.name for call in calls if call.id in state.held_calls]
    return prompt + (f" (held by the guardrails: {', '.join(held)})" if held else "")


def _gated_calls(state: RunState, spec: AgentSpec) -> list[ToolCall]:
    """The last reply's calls a human must approve first: their tool requires it, or the guardrails held them."""
    return [call for call in _last_tool_calls(state)
            if call.id in state.held_calls or ((tool := spec.tool(call.name)) and tool.requires_approval)]


def _calls_to_run(state: RunState, spec: AgentSpec, node_id: str, decision: Decision | None) -> list[ToolCall]:
    """The last assistant message's calls minus those a human rejected, with any edited arguments."""
    gated = {call.id for call in _gated_calls(state, spec)}
    calls = []
    for call in _last_tool_calls(state):
        if call.id in gated:
            if decision is None or not decision.approved:
                continue
            if call.id in decision.arguments:
                call = ToolCall(id=call.id, name=call.name, arguments=dict(decision.arguments[call.id]))
        calls.append(call)
    return calls


def _delegation_input(state: RunState, call: ToolCall, spec: AgentSpec) -> str:
    """What a delegated agent is told: the call's input; a handoff also passes the user's request."""
    given = str(call.arguments.get("input", "")) or json.dumps(call.arguments)
    if call.name in spec.handoffs:
        request = next((m.content for m in reversed(state.messages) if m.role == "user"), "")
        return f"{request}\n\n(Handed over: {given})" if given and given != "{}" else request
    return given


def _resolve_arguments(arguments: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"$value"}:
            return values.get(value["$value"])
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value
    return {k: resolve(v) for k, v in arguments.items()}


def _template(text: str, state: RunState) -> str:
    last_assistant = next((m.content for m in reversed(state.messages) if m.role == "assistant"), "")
    last_user = next((m.content for m in reversed(state.messages) if m.role == "user"), "")
    out = text.replace("{{last_assistant}}", last_assistant).replace("{{last_user}}", last_user)
    for key, value in state.values.items():
        out = out.replace("{{" + key + "}}", value if isinstance(value, str) else json.dumps(value))
    return out


def _final_text(text: str) -> str:
    stripped = text.rstrip()
    return stripped[: -len("DONE")].rstrip(" .\n") if stripped.upper().endswith("DONE") else stripped

