"""An agent's specification: instructions, model policy, tools, limits and its workflow graph."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from data_plane.runtime.core.graph import (
    Condition,
    EndNode,
    Graph,
    GraphInvalid,
    LlmNode,
    Route,
    RouterNode,
    ToolsNode,
    graph_from_json,
    graph_to_json,
    validate,
)
from data_plane.runtime.core.messages import ToolDefinition
from data_plane.runtime.core.routing import RoutingPolicy, RunRouting, parse_policy

PLAN_INSTRUCTIONS = ("First make a short numbered plan for the task. Do not call tools yet and do not answer yet.")
REFLECT_INSTRUCTIONS = ("Check the work so far against the task. If it is complete, give the final answer and end "
                        "with the word DONE. Otherwise say what is still missing.")


@dataclass(frozen=True)
class Limits:
    max_steps: int | None = 50
    max_seconds: float | None = 600.0
    max_cost_usd: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"max_steps": self.max_steps, "max_seconds": self.max_seconds, "max_cost_usd": self.max_cost_usd}


@dataclass(frozen=True)
class MemoryPolicy:
    """How an agent uses the tenant's long-term memory.

    ``recall``: each LLM call's context gets the memories most relevant to the latest user message (this
    agent's and every agent's, the run's end user's and nobody's in particular), and the lessons this agent
    learned. ``extract``: at the end of a completed run, durable facts are extracted and remembered.
    ``reflect``: when a run fails, or is scored under ``reflect_below`` (by a user or an evaluator step
    writing the value ``score``), the agent writes a lesson tagged with the run's task kind.
    """

    recall: bool = False
    recall_k: int = 5
    recall_min_similarity: float = 0.25
    lessons_k: int = 3
    extract: bool = False
    reflect: bool = False
    reflect_below: float = 0.5
    shared: bool = False  # memories it writes are every agent's, not only its own

    @property
    def enabled(self) -> bool:
        return self.recall or self.extract or self.reflect

    def to_json(self) -> dict[str, Any]:
        return {"recall": self.recall, "recall_k": self.recall_k, "recall_min_similarity": self.recall_min_similarity,
                "lessons_k": self.lessons_k, "extract": self.extract, "reflect": self.reflect,
                "reflect_below": self.reflect_below, "shared": self.shared}


def _memory_policy(raw: Any, error: Any) -> MemoryPolicy:
    if raw is None:
        return MemoryPolicy()
    if not isinstance(raw, dict):
        error("memory", "memory is an object: recall, recall_k, recall_min_similarity, lessons_k, extract, "
                        "reflect, reflect_below, shared.")
        return MemoryPolicy()
    known = set(MemoryPolicy.__dataclass_fields__)
    for unknown in sorted(set(raw) - known):
        error(f"memory.{unknown}", f"Unknown memory setting {unknown!r}; known: {', '.join(sorted(known))}.")
    checks = {
        "recall": lambda v: isinstance(v, bool), "extract": lambda v: isinstance(v, bool),
        "reflect": lambda v: isinstance(v, bool), "shared": lambda v: isinstance(v, bool),
        "recall_k": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 50,
        "lessons_k": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 20,
        "recall_min_similarity": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and -1 <= v <= 1,
        "reflect_below": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
    }
    hints = {"recall_k": "a whole number from 1 to 50", "lessons_k": "a whole number from 0 to 20",
             "recall_min_similarity": "a number from -1 to 1", "reflect_below": "a score from 0 to 1"}
    values = {}
    for name, check in checks.items():
        if name in raw:
            if check(raw[name]):
                values[name] = raw[name]
            else:
                error(f"memory.{name}", f"memory.{name} is {hints.get(name, 'true or false')}.")
    return MemoryPolicy(**values)


@dataclass(frozen=True)
class ContextSettings:
    """How each LLM call's context is fitted into a token budget (core/context.py): the budget is
    ``max_input_tokens`` minus ``reserve_output_tokens``; older turns are folded into a summary of at most
    ``summary_max_tokens``, never the last ``min_recent_messages``; recalled memories get at most
    ``memory_max_tokens`` (and never more than a quarter of the budget)."""

    max_input_tokens: int | None = None  # None: the model's input limit when known, else DEFAULT_MAX_INPUT_TOKENS
    reserve_output_tokens: int = 1024
    pinned_facts: tuple[str, ...] = ()
    summary_max_tokens: int = 512
    min_recent_messages: int = 4
    memory_max_tokens: int = 1024
    memory_limit: int = 5

    def to_json(self) -> dict[str, Any]:
        return {"max_input_tokens": self.max_input_tokens, "reserve_output_tokens": self.reserve_output_tokens,
                "pinned_facts": list(self.pinned_facts), "summary_max_tokens": self.summary_max_tokens,
                "min_recent_messages": self.min_recent_messages, "memory_max_tokens": self.memory_max_tokens,
                "memory_limit": self.memory_limit}


DEFAULT_MAX_INPUT_TOKENS = 8000
# Bounds of the context settings: (smallest, largest) whole numbers accepted.
_CONTEXT_BOUNDS = {"max_input_tokens": (256, 10_000_000), "reserve_output_tokens": (0, 1_000_000),
                   "summary_max_tokens": (16, 16_384), "min_recent_messages": (1, 1_000),
                   "memory_max_tokens": (0, 1_000_000), "memory_limit": (0, 100)}
MAX_PINNED_FACTS = 50
MAX_PINNED_FACT_CHARACTERS = 1_000


@dataclass(frozen=True)
class AgentSpec:
    instructions: str
    models: tuple[str, ...]
    tools: tuple[ToolDefinition, ...] = ()
    graph: Graph | None = None  # None: the default plan / act / observe / reflect loop
    limits: Limits = field(default_factory=Limits)
    agent_tools: Mapping[str, str] = field(default_factory=dict)  # tool name -> agent called as a sub-run
    handoffs: Mapping[str, str] = field(default_factory=dict)  # tool name -> agent the conversation passes to
    temperature: float | None = None
    model_timeout_seconds: float = 60.0
    mcp_servers: tuple[str, ...] = ()  # the tenant's MCP servers whose tools are among ``tools`` (as <server>__<tool>)
    max_tools_per_call: int = 24  # above this many tools, each LLM call is offered the most relevant ones
    memory: MemoryPolicy = field(default_factory=MemoryPolicy)
    context: ContextSettings = field(default_factory=ContextSettings)
    output_schema: Mapping[str, Any] | None = None  # a JSON schema the final answer must satisfy (the guardrails)
    routing: RoutingPolicy | None = None  # the agent's own routing policy (core/routing.py)
    routing_policy: str | None = None  # or the name of one of the tenant's routing policies
    # The routing a run applies, fixed when the run was created; set by the shell, never stored in a spec.
    run_routing: RunRouting | None = field(default=None, compare=False)

    @property
    def workflow(self) -> Graph:
        return self.graph if self.graph is not None else default_loop()

    def tool(self, name: str) -> ToolDefinition | None:
        return next((tool for tool in self.tools if tool.name == name), None)

    def model_policy(self) -> tuple[str, ...]:
        """Every model a run of this agent may call: the policy's (preferred, then fallbacks) and those its
        graph's llm nodes name instead, in that order, each once."""
        models = list(self.models)
        if self.routing is not None:
            models.extend(model for model in self.routing.all_models() if model not in models)
        for node in self.workflow.nodes.values():
            if isinstance(node, LlmNode) and node.models:
                models.extend(model for model in node.models if model not in models)
        return tuple(models)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "instructions": self.instructions, "models": list(self.models),
            "tools": [tool.to_json() for tool in self.tools], "limits": self.limits.to_json(),
        }
        if self.graph is not None:
            data["graph"] = graph_to_json(self.graph)
        if self.agent_tools:
            data["agent_tools"] = dict(self.agent_tools)
        if self.handoffs:
            data["handoffs"] = dict(self.handoffs)
        if self.temperature is not None:
            data["temperature"] = self.temperature
        data["model_timeout_seconds"] = self.model_timeout_seconds
        if self.mcp_servers:
            data["mcp_servers"] = list(self.mcp_servers)
        data["max_tools_per_call"] = self.max_tools_per_call
        if self.memory.enabled:
            data["memory"] = self.memory.to_json()
        if self.context != ContextSettings():  # absent means the defaults: agents stored before it read the same
            data["context"] = self.context.to_json()
        if self.output_schema is not None:
            data["output_schema"] = dict(self.output_schema)
        if self.routing is not None:
            data["routing"] = self.routing.to_json()
        if self.routing_policy is not None:
            data["routing_policy"] = self.routing_policy
        return data


def default_loop() -> Graph:
    """Plan, then act (tool calls run in parallel) and observe until the model stops calling tools, then
    reflect: DONE ends the run, anything else goes back to acting. The agent's step limit bounds it."""
    nodes = [
        LlmNode(id="plan", next="act", instructions=PLAN_INSTRUCTIONS, tools=()),
        LlmNode(id="act", next="after_act"),
        RouterNode(id="after_act", routes=(Route(Condition(kind="has_tool_calls"), "observe"),), default="reflect"),
        ToolsNode(id="observe", next="act"),
        LlmNode(id="reflect", next="after_reflect", instructions=REFLECT_INSTRUCTIONS, tools=()),
        RouterNode(id="after_reflect", routes=(Route(Condition(kind="text_contains", text="DONE"), "end"),),
                   default="act"),
        EndNode(id="end"),
    ]
    return Graph(entry="plan", nodes={node.id: node for node in nodes})


def spec_from_json(data: Any, *, known_agents: set[str] | None = None,
                   known_routing_policies: set[str] | None = None) -> AgentSpec:
    """Parse and validate an agent spec. Raises GraphInvalid with every problem (paths are spec paths).
    ``known_routing_policies``, when given, are the tenant's policy names ``routing_policy`` may name."""
    errors: list[dict[str, str]] = []

    def error(path: str, message: str, code: str = "invalid") -> None:
        errors.append({"path": path, "code": code, "message": message})

    if not isinstance(data, dict):
        raise GraphInvalid([{"path": "", "code": "invalid", "message": "An agent spec is a JSON object."}])
    instructions = data.get("instructions", "")
    if not isinstance(instructions, str):
        error("instructions", "instructions must be text.")
    models = data.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        error("models", "models must be a non-empty list of model names, the first preferred, then fallbacks.")
        models = []
    tools: list[ToolDefinition] = []
    for index, raw in enumerate(data.get("tools") or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            error(f"tools.{index}", "Each tool needs a name (and a description and input_schema).")
            continue
        if not isinstance(raw.get("input_schema", {}), dict):
            error(f"tools.{index}.input_schema", "input_schema must be a JSON schema object.")
            continue
        tools.append(ToolDefinition.from_json(raw))
    names = [tool.name for tool in tools]
    for duplicate in {n for n in names if names.count(n) > 1}:
        error("tools", f"Tool {duplicate!r} is defined twice.", "duplicate_tool")
    raw_limits = data.get("limits") or {}
    limits = Limits()
    if not isinstance(raw_limits, dict):
        error("limits", "limits must be an object with max_steps, max_seconds, max_cost_usd.")
    else:
        try:
            limits = Limits(**{k: raw_limits[k] for k in ("max_steps", "max_seconds", "max_cost_usd") if k in raw_limits})
        except TypeError as exc:
            error("limits", str(exc))
        for name in ("max_steps", "max_seconds", "max_cost_usd"):
            value = getattr(limits, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
                error(f"limits.{name}", f"{name} must be a positive number or null.")
    delegations: dict[str, dict[str, str]] = {}
    for field_name in ("agent_tools", "handoffs"):
        mapping = data.get(field_name) or {}
        if not isinstance(mapping, dict):
            error(field_name, f"{field_name} maps a tool name to an agent's name.")
            mapping = {}
        for tool_name, agent in mapping.items():
            if tool_name not in names:
                error(f"{field_name}.{tool_name}", f"{field_name} names {tool_name!r}, which is not among the tools.")
            if known_agents is not None and agent not in known_agents:
                error(f"{field_name}.{tool_name}", f"Agent {agent!r} does not exist.", "unknown_agent")
        delegations[field_name] = dict(mapping)
    agent_tools = delegations["agent_tools"]
    for both in set(agent_tools) & set(delegations["handoffs"]):
        error(f"handoffs.{both}", f"Tool {both!r} cannot be both an agent tool and a handoff.")
    graph = None
    if data.get("graph") is not None:
        try:
            graph = graph_from_json(data["graph"])
        except GraphInvalid as invalid:
            errors.extend({**e, "path": f"graph.{e['path']}".rstrip(".")} for e in invalid.errors)
    max_tools = data.get("max_tools_per_call", 24)
    if not isinstance(max_tools, int) or isinstance(max_tools, bool) or not 1 <= max_tools <= 128:
        error("max_tools_per_call", "max_tools_per_call is a whole number from 1 to 128.")
        max_tools = 24
    mcp_servers = data.get("mcp_servers") or []
    if not isinstance(mcp_servers, list) or not all(isinstance(name, str) for name in mcp_servers):
        error("mcp_servers", "mcp_servers is a list of the tenant's MCP server names.")
        mcp_servers = []
    memory = _memory_policy(data.get("memory"), error)
    context = _context_from_json(data.get("context"), error)
    output_schema = data.get("output_schema")
    if output_schema is not None and not isinstance(output_schema, dict):
        error("output_schema", "output_schema is a JSON schema object the agent's final answer must satisfy.")
        output_schema = None
    routing, routing_policy = _routing_from_json(data, error, known_routing_policies)
    spec = AgentSpec(instructions=instructions if isinstance(instructions, str) else "", models=tuple(models),
                     tools=tuple(tools), graph=graph, limits=limits, agent_tools=dict(agent_tools),
                     handoffs=delegations["handoffs"],
                     temperature=data.get("temperature"),
                     model_timeout_seconds=float(data.get("model_timeout_seconds", 60.0)),
                     mcp_servers=tuple(dict.fromkeys(mcp_servers)), max_tools_per_call=max_tools,
                     memory=memory, context=context, output_schema=output_schema, routing=routing,
                     routing_policy=routing_policy)
    if graph is not None or data.get("graph") is None:
        try:  # validated even when other fields are wrong, so every problem is reported at once
            validate(spec.workflow, tools=spec.tools, agents=known_agents,
                     has_step_limit=spec.limits.max_steps is not None)
        except GraphInvalid as invalid:
            errors.extend({**e, "path": f"graph.{e['path']}"} for e in invalid.errors)
    if errors:
        raise GraphInvalid(errors)
    return spec


def _routing_from_json(data: dict[str, Any], error: Callable[[str, str], None],
                       known: set[str] | None) -> tuple[RoutingPolicy | None, str | None]:
    """The agent's ``routing`` (its own policy) or ``routing_policy`` (a tenant policy's name), not both."""
    raw, name = data.get("routing"), data.get("routing_policy")
    if raw is not None and name is not None:
        error("routing_policy", "Give either routing (the agent's own policy) or routing_policy (the name of a "
                                "tenant policy), not both.")
        return None, None
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            error("routing_policy", "routing_policy is the name of one of the tenant's routing policies.")
            return None, None
        if known is not None and name not in known:
            listed = ", ".join(sorted(known)) or "none yet; create one with POST /v1/routing-policies"
            error("routing_policy", f"No routing policy named {name!r}; the tenant's policies: {listed}.")
        return None, name
    if raw is None:
        return None, None
    return parse_policy(raw, error, prefix="routing"), None


def _context_from_json(raw: Any, error: Callable[[str, str], None]) -> ContextSettings:
    """The ``context`` section; each problem goes to ``error`` (path, message) and its default is kept."""
    if raw is None:
        return ContextSettings()
    if not isinstance(raw, dict):
        error("context", "context must be an object with max_input_tokens, reserve_output_tokens, pinned_facts, "
                         "summary_max_tokens, min_recent_messages, memory_max_tokens and memory_limit.")
        return ContextSettings()
    defaults = ContextSettings()
    for unknown in sorted(set(raw) - set(defaults.to_json())):
        error(f"context.{unknown}", f"Unknown context setting {unknown!r}; the settings are "
                                    f"{', '.join(defaults.to_json())}.")
    numbers: dict[str, int | None] = {}
    for name, (low, high) in _CONTEXT_BOUNDS.items():
        value = raw.get(name, getattr(defaults, name))
        if value is None and name == "max_input_tokens":
            numbers[name] = None
        elif isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            numbers[name] = value
        else:
            hint = " or null (the model's input limit)" if name == "max_input_tokens" else ""
            error(f"context.{name}", f"{name} is a whole number from {low} to {high}{hint}; got {value!r}.")
            numbers[name] = getattr(defaults, name)
    facts = raw.get("pinned_facts") or []
    if not isinstance(facts, list) or not all(isinstance(f, str) and f.strip() for f in facts):
        error("context.pinned_facts", "pinned_facts is a list of short non-empty texts, included in every call.")
        facts = []
    elif len(facts) > MAX_PINNED_FACTS:
        error("context.pinned_facts", f"pinned_facts holds at most {MAX_PINNED_FACTS} facts; got {len(facts)}.")
    for index, fact in enumerate(facts):
        if len(fact) > MAX_PINNED_FACT_CHARACTERS:
            error(f"context.pinned_facts.{index}", f"A pinned fact has at most {MAX_PINNED_FACT_CHARACTERS} "
                                                   f"characters; this one has {len(fact)}. Keep pinned facts short.")
    settings = ContextSettings(pinned_facts=tuple(f.strip() for f in facts), **numbers)  # type: ignore[arg-type]
    limit = settings.max_input_tokens
    if limit is not None:
        budget = limit - settings.reserve_output_tokens
        if budget < 128:
            error("context.reserve_output_tokens", f"max_input_tokens ({limit}) minus reserve_output_tokens "
                                                   f"({settings.reserve_output_tokens}) leaves {budget} tokens for "
                                                   "the input; leave at least 128.")
        elif settings.summary_max_tokens > budget // 2:
            error("context.summary_max_tokens", f"summary_max_tokens ({settings.summary_max_tokens}) is at most half "
                                                f"the input budget ({budget} tokens); lower it or raise "
                                                "max_input_tokens.")
    return settings
