"""Workflow graphs: nodes, edges, conditions; defined in Python or as JSON, validated with clear errors.

Execution is in supersteps (the Pregel model LangGraph also uses): every node in the frontier runs,
concurrently when there are several, their results are applied in frontier order, and the next
frontier follows the edges. Routers, parallel fan-outs, joins and ends take no time: they are resolved
inside the same step. Effect nodes (llm, tools, tool, approval, subagent) are what a step waits on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from data_plane.runtime.core.messages import ToolDefinition


class GraphInvalid(Exception):
    """The graph is not runnable; ``errors`` lists every problem as {"path", "code", "message"}."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(e["message"] for e in errors))
        self.errors = errors


# --- Conditions (for routers) ---------------------------------------------------------------------

CONDITION_KINDS = ("always", "has_tool_calls", "no_tool_calls", "text_contains", "value_equals", "value_truthy",
                   "steps_at_least")


@dataclass(frozen=True)
class Condition:
    kind: str
    text: str | None = None  # text_contains: case-insensitive, on the last assistant message
    key: str | None = None  # value_equals, value_truthy: a key of the state's values
    value: Any = None  # value_equals
    count: int | None = None  # steps_at_least

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for name in ("text", "key", "count"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.kind == "value_equals":
            data["value"] = self.value
        return data


@dataclass(frozen=True)
class Route:
    when: Condition
    goto: str


# --- Nodes -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LlmNode:
    """Call the model with the conversation; append its reply. ``tools``: names offered (None: all)."""

    id: str
    next: str | None = None
    instructions: str = ""
    tools: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None  # overrides the agent's model policy for this node
    output_key: str | None = None  # also store the reply's text in values[output_key]
    kind: str = field(default="llm", init=False)


@dataclass(frozen=True)
class ToolsNode:
    """Run the tool calls of the last assistant message (independent calls in parallel); append results."""

    id: str
    next: str | None = None
    kind: str = field(default="tools", init=False)


@dataclass(frozen=True)
class ToolNode:
    """Call one named tool; arguments may reference state values as {"$value": "key"}."""

    id: str
    tool: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    next: str | None = None
    output_key: str | None = None
    kind: str = field(default="tool", init=False)


@dataclass(frozen=True)
class RouterNode:
    """Follow the first route whose condition holds, else ``default``."""

    id: str
    routes: tuple[Route, ...] = ()
    default: str | None = None
    kind: str = field(default="router", init=False)


@dataclass(frozen=True)
class ParallelNode:
    """Start every branch at once; each branch's last node leads to ``join``."""

    id: str
    branches: tuple[str, ...] = ()
    join: str = ""
    kind: str = field(default="parallel", init=False)


@dataclass(frozen=True)
class JoinNode:
    """Wait for every branch of the parallel node that names it, then continue to ``next``."""

    id: str
    next: str | None = None
    kind: str = field(default="join", init=False)


@dataclass(frozen=True)
class ApprovalNode:
    """Stop until a human approves (continue to ``next``) or rejects (``on_reject``, else the run fails)."""

    id: str
    prompt: str = ""
    next: str | None = None
    on_reject: str | None = None
    kind: str = field(default="approval", init=False)


@dataclass(frozen=True)
class SubAgentNode:
    """Run another agent as a child run with ``input`` (text; {{key}} takes a state value); store its output."""

    id: str
    agent: str
    input: str = "{{last_assistant}}"
    next: str | None = None
    output_key: str | None = None
    kind: str = field(default="subagent", init=False)


@dataclass(frozen=True)
class EndNode:
    id: str
    kind: str = field(default="end", init=False)


Node = LlmNode | ToolsNode | ToolNode | RouterNode | ParallelNode | JoinNode | ApprovalNode | SubAgentNode | EndNode
EFFECT_KINDS = frozenset({"llm", "tools", "tool", "approval", "subagent"})


@dataclass(frozen=True)
class Graph:
    entry: str
    nodes: Mapping[str, Node]
    max_steps: int | None = None

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def successors(self, node: Node) -> list[str]:
        match node:
            case RouterNode():
                return [route.goto for route in node.routes] + ([node.default] if node.default else [])
            case ParallelNode():
                return list(node.branches)
            case ApprovalNode():
                return [n for n in (node.next, node.on_reject) if n]
            case EndNode():
                return []
            case _:
                return [node.next] if node.next else []

    def join_of(self, join_id: str) -> ParallelNode | None:
        for node in self.nodes.values():
            if isinstance(node, ParallelNode) and node.join == join_id:
                return node
        return None


# --- Validation ------------------------------------------------------------------------------------

def validate(graph: Graph, *, tools: Iterable[ToolDefinition] = (), agents: Iterable[str] | None = None,
             has_step_limit: bool = False) -> None:
    """Raise GraphInvalid listing every problem: unknown node, unreachable node, cycle without a step
    limit, missing join, dead end, unknown tool or agent, router without a way out."""
    errors: list[dict[str, str]] = []

    def error(path: str, code: str, message: str) -> None:
        errors.append({"path": path, "code": code, "message": message})

    tool_names = {tool.name for tool in tools}
    if graph.entry not in graph.nodes:
        error("entry", "unknown_node", f"The entry node {graph.entry!r} is not defined.")
    for node_id, node in graph.nodes.items():
        path = f"nodes.{node_id}"
        for target in graph.successors(node):
            if target not in graph.nodes:
                error(path, "unknown_node", f"Node {node_id!r} leads to {target!r}, which is not defined.")
        match node:
            case EndNode():
                pass
            case RouterNode() if not node.routes and not node.default:
                error(path, "dead_end", f"Router {node_id!r} has no routes and no default.")
            case RouterNode():
                for index, route in enumerate(node.routes):
                    if route.when.kind not in CONDITION_KINDS:
                        error(f"{path}.routes.{index}", "unknown_condition",
                              f"Router {node_id!r} has an unknown condition {route.when.kind!r}; "
                              f"use one of {', '.join(CONDITION_KINDS)}.")
            case ParallelNode():
                if len(node.branches) < 2:
                    error(path, "too_few_branches", f"Parallel node {node_id!r} needs at least two branches.")
                join = graph.nodes.get(node.join)
                if not node.join or join is None or not isinstance(join, JoinNode):
                    error(path, "missing_join", f"Parallel node {node_id!r} needs a join node "
                                                f"(got {node.join or 'none'!r}).")
                else:
                    for branch in node.branches:
                        if branch in graph.nodes and not _reaches(graph, branch, node.join, stop=node.id):
                            error(path, "missing_join", f"Branch {branch!r} of {node_id!r} never reaches its join "
                                                        f"{node.join!r}.")
            case ApprovalNode() if not node.next:
                error(path, "dead_end", f"Approval node {node_id!r} has no next node.")
            case _:
                if not getattr(node, "next", None):
                    error(path, "dead_end", f"Node {node_id!r} has no next node; end the graph with an end node.")
        if isinstance(node, LlmNode) and node.tools is not None:
            for name in node.tools:
                if name not in tool_names:
                    error(path, "unknown_tool", f"Node {node_id!r} offers the tool {name!r}, which the agent lacks.")
        if isinstance(node, ToolNode) and node.tool not in tool_names:
            error(path, "unknown_tool", f"Node {node_id!r} calls the tool {node.tool!r}, which the agent lacks.")
        if isinstance(node, SubAgentNode) and agents is not None and node.agent not in agents:
            error(path, "unknown_agent", f"Node {node_id!r} delegates to agent {node.agent!r}, which does not exist.")
    if graph.entry in graph.nodes:
        reachable = _reachable(graph, graph.entry)
        for node_id in graph.nodes:
            if node_id not in reachable:
                error(f"nodes.{node_id}", "unreachable_node", f"Node {node_id!r} cannot be reached from "
                                                              f"{graph.entry!r}.")
        if _has_cycle(graph) and not (has_step_limit or graph.max_steps):
            error("max_steps", "cycle_without_step_limit",
                  "The graph has a cycle but no step limit; set max_steps on the graph or the agent's limits.")
        if not any(isinstance(graph.nodes[n], EndNode) for n in reachable):
            error("nodes", "no_end", "No end node is reachable; add a node of kind 'end'.")
    if errors:
        raise GraphInvalid(errors)


def _reachable(graph: Graph, start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in graph.nodes:
            continue
        seen.add(node_id)
        stack.extend(graph.successors(graph.nodes[node_id]))
    return seen


def _reaches(graph: Graph, start: str, target: str, *, stop: str) -> bool:
    seen: set[str] = set()
    stack = [start]
    while stack:
        node_id = stack.pop()
        if node_id == target:
            return True
        if node_id in seen or node_id == stop or node_id not in graph.nodes:
            continue
        seen.add(node_id)
        stack.extend(graph.successors(graph.nodes[node_id]))
    return False


def _has_cycle(graph: Graph) -> bool:
    white, grey, black = 0, 1, 2
    colour = {node_id: white for node_id in graph.nodes}

    def visit(node_id: str) -> bool:
        colour[node_id] = grey
        for target in graph.successors(graph.nodes[node_id]):
            if target not in colour:
                continue
            if colour[target] == grey or (colour[target] == white and visit(target)):
                return True
        colour[node_id] = black
        return False

    return any(colour[n] == white and visit(n) for n in list(graph.nodes))


# --- JSON --------------------------------------------------------------------------------------------

_NODE_CLASSES: dict[str, type] = {"llm": LlmNode, "tools": ToolsNode, "tool": ToolNode, "router": RouterNode,
                                  "parallel": ParallelNode, "join": JoinNode, "approval": ApprovalNode,
                                  "subagent": SubAgentNode, "end": EndNode}


def graph_from_json(data: Any) -> Graph:
    """Parse the JSON form: {"entry", "max_steps"?, "nodes": [{"id", "kind", ...}]}. Raises GraphInvalid."""
    errors: list[dict[str, str]] = []
    if not isinstance(data, dict):
        raise GraphInvalid([{"path": "", "code": "invalid", "message": "A graph is a JSON object."}])
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise GraphInvalid([{"path": "nodes", "code": "invalid", "message": "'nodes' must be a non-empty list."}])
    nodes: dict[str, Node] = {}
    for index, raw in enumerate(raw_nodes):
        path = f"nodes.{index}"
        try:
            node = _node_from_json(raw)
        except (KeyError, TypeError, ValueError) as exc:
            errors.append({"path": path, "code": "invalid", "message": f"Node #{index}: {exc}"})
            continue
        if node.id in nodes:
            errors.append({"path": path, "code": "duplicate_node", "message": f"Node id {node.id!r} is used twice."})
        nodes[node.id] = node
    max_steps = data.get("max_steps")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        errors.append({"path": "max_steps", "code": "invalid", "message": "max_steps must be a positive integer."})
    entry = data.get("entry") or (raw_nodes[0].get("id") if isinstance(raw_nodes[0], dict) else None)
    if not isinstance(entry, str):
        errors.append({"path": "entry", "code": "invalid", "message": "'entry' must name a node."})
    if errors:
        raise GraphInvalid(errors)
    return Graph(entry=entry, nodes=nodes, max_steps=max_steps)


def _node_from_json(raw: Any) -> Node:
    if not isinstance(raw, dict):
        raise TypeError("a node is a JSON object")
    kind = raw.get("kind")
    if kind not in _NODE_CLASSES:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(_NODE_CLASSES)}")
    node_id = raw.get("id")
    if not isinstance(node_id, str) or not node_id:
        raise ValueError("'id' must be a non-empty string")
    fields = {k: v for k, v in raw.items() if k != "kind"}
    if kind == "router":
        fields["routes"] = tuple(Route(when=_condition_from_json(r["when"]), goto=r["goto"])
                                 for r in fields.get("routes", []))
    for name in ("tools", "models", "branches"):
        if fields.get(name) is not None:
            fields[name] = tuple(fields[name])
    try:
        return _NODE_CLASSES[kind](**fields)
    except TypeError as exc:
        raise ValueError(f"{kind} node {node_id!r}: {exc}") from None


def _condition_from_json(raw: Any) -> Condition:
    if not isinstance(raw, dict) or "kind" not in raw:
        raise ValueError("a route's 'when' is an object with a 'kind'")
    return Condition(**raw)


def graph_to_json(graph: Graph) -> dict[str, Any]:
    nodes = []
    for node in graph.nodes.values():
        data: dict[str, Any] = {"id": node.id, "kind": node.kind}
        for name, value in vars(node).items():
            if name in ("id", "kind") or value in (None, "", (), {}):
                continue
            if name == "routes":
                value = [{"when": route.when.to_json(), "goto": route.goto} for route in value]
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            data[name] = value
        nodes.append(data)
    result: dict[str, Any] = {"entry": graph.entry, "nodes": nodes}
    if graph.max_steps:
        result["max_steps"] = graph.max_steps
    return result
