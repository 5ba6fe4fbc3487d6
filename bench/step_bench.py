"""Per-step overhead: our RunStepper against LangGraph running the same graph on the same database.

Both run llm -> (tool calls? tools -> llm : llm) with the same zero-latency script (bench/zero_model.py)
and a real calculator, persisting every step to Postgres. Time spent is therefore all runtime overhead:
claiming, loading, journalling, committing, publishing for us; channel bookkeeping, serialization and
the checkpoint writes for LangGraph.
"""

from __future__ import annotations

import operator
import time
from typing import Annotated, Any, TypedDict
from uuid import UUID

from django.conf import settings
from django_tenants.utils import schema_context, tenant_context
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.graph import END, START, StateGraph

from bench.measure import percentile
from bench.zero_model import ZeroChatModel, scripted_reply
from common.actors import Actor
from data_plane import services
from data_plane.executor import RunStepper
from data_plane.tools import BUILTIN_TOOLS, BuiltinToolRunner, calculate

AGENT_SPEC: dict[str, Any] = {
    "instructions": "bench",
    "models": ["bench/zero"],
    "tools": [BUILTIN_TOOLS["calculator"].to_json()],
    "limits": {"max_steps": 100000, "max_seconds": None},
    "graph": {
        "entry": "llm", "max_steps": 100000,
        "nodes": [
            {"id": "llm", "kind": "llm", "next": "route"},
            {"id": "route", "kind": "router", "default": "llm",
             "routes": [{"when": {"kind": "has_tool_calls"}, "goto": "tools"},
                        {"when": {"kind": "text_contains", "text": "STOP"}, "goto": "end"}]},
            {"id": "tools", "kind": "tools", "next": "llm"},
            {"id": "end", "kind": "end"},
        ],
    },
}
INPUT = "Add up the VAT figures with the calculator, one at a time."


def bench_ours(*, tenant: Any, actor: Actor, steps: int, warmup: int) -> dict[str, float]:
    """step_overhead_ms: RunStepper.run_step in a loop on one run, as the Celery task calls it (inside the
    tenant's context), with the real tool runner and checkpoints; dispatch only records the next step."""
    schema = tenant.schema_name
    with schema_context(schema):
        agent = services.agent_create(tenant=tenant, name="bench-zero", description="Zero-latency benchmark agent",
                                      spec=AGENT_SPEC, actor=actor)
    model = ZeroChatModel()
    dispatched: list[tuple[UUID, int]] = []
    stepper = RunStepper(tenant_schema=schema, chat_model=model,
                         tool_runner_factory=lambda run_id: BuiltinToolRunner(tenant_schema=schema, run_id=run_id),
                         dispatch=lambda run_id, step: dispatched.append((run_id, step)), owner="bench",
                         lease_seconds=30.0, tenant=tenant, steps_per_task=settings.RUN_STEPS_PER_TASK)

    def run_steps(count: int) -> list[float]:
        with schema_context(schema):
            run = services.run_start(tenant=tenant, agent_id=agent.id, input=INPUT, actor=actor)
        step, samples = 0, []
        with tenant_context(tenant):
            while len(samples) < count:
                started = time.perf_counter()
                outcome = stepper.run_step(run.id, step)
                elapsed = (time.perf_counter() - started) * 1000
                # one task runs up to RUN_STEPS_PER_TASK steps back to back, each committed: per-step figures
                taken = max(outcome.step - step, 1)
                samples.extend([elapsed / taken] * taken)
                if outcome.kind != "advanced" or outcome.run_status != "running":
                    raise RuntimeError(f"Step {step} of the benchmark run did not advance: {outcome}")
                if dispatched[-1] != (run.id, outcome.step):
                    raise RuntimeError(f"Step {step} did not dispatch its successor: {dispatched[-1]}")
                step = outcome.step
        return samples

    run_steps(warmup)  # caches, per-thread connections, prepared plans
    samples = run_steps(steps)
    return {"step_overhead_ms": sum(samples) / len(samples), "step_overhead_p50_ms": percentile(samples, 50),
            "step_overhead_p99_ms": percentile(samples, 99)}


class BenchState(TypedDict):
    # Plain message dicts with a list-concatenating reducer: the cheapest messages channel LangGraph has
    # (add_messages would convert each to a LangChain message object, costing it more).
    messages: Annotated[list[dict[str, Any]], operator.add]


def _langgraph(saver: PostgresSaver, executed: list[int], stop_after: int) -> Any:
    def llm(state: BenchState) -> dict[str, Any]:
        executed[0] += 1
        turn = sum(1 for message in state["messages"] if message["role"] == "assistant")
        return {"messages": [scripted_reply(turn, stop=executed[0] >= stop_after)]}

    def tools(state: BenchState) -> dict[str, Any]:
        executed[0] += 1
        calls = state["messages"][-1].get("tool_calls") or []
        return {"messages": [{"role": "tool", "content": str(calculate(call["arguments"]["expression"])),
                              "tool_call_id": call["id"], "name": call["name"]} for call in calls]}

    def route(state: BenchState) -> str:
        last = state["messages"][-1]
        if last.get("tool_calls"):
            return "tools"
        return END if "stop" in last.get("content", "").lower() else "llm"

    graph = StateGraph(BenchState)
    graph.add_node("llm", llm)
    graph.add_node("tools", tools)
    graph.add_edge(START, "llm")
    graph.add_conditional_edges("llm", route, ["tools", "llm", END])
    graph.add_edge("tools", "llm")
    return graph.compile(checkpointer=saver)


def bench_langgraph(*, saver: PostgresSaver, steps: int, warmup: int) -> dict[str, float]:
    """langgraph_step_ms: one thread run with graph.invoke until the script says STOP after about ``steps``
    node executions (each a LangGraph super-step, as each is a step of ours): total time / node executions.

    invoke and divide, rather than interrupting after each step, because interrupts would add a resume
    (reading the checkpoint back) to every step that LangGraph's own loop never does. The headline uses
    durability="sync": each step's checkpoint is written before the next step starts, which is what our
    runtime guarantees (it commits before dispatching). LangGraph's default, "async", overlaps the write
    with the next step; it is reported beside it for reference.
    """
    figures: dict[str, float] = {}
    for durability, name in (("sync", "langgraph_step_ms"), ("async", "langgraph_step_async_ms")):
        for count, measured in ((warmup, False), (steps, True)):
            executed = [0]
            app = _langgraph(saver, executed, stop_after=count)
            config = {"configurable": {"thread_id": f"bench-{durability}-{count}-{time.monotonic_ns()}"},
                      "recursion_limit": count + 10}
            started = time.perf_counter()
            result = app.invoke({"messages": [{"role": "user", "content": INPUT}]}, config, durability=durability)
            elapsed = (time.perf_counter() - started) * 1000
            # The script says STOP at the first model call from ``count`` steps on: count or count + 1 steps.
            if not count <= executed[0] <= count + 1 or result["messages"][-1]["content"] != "STOP":
                raise RuntimeError(f"LangGraph ran {executed[0]} steps, expected {count}")
            if measured:
                figures[name] = elapsed / executed[0]
    return figures

