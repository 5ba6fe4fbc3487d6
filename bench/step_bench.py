"""Per-step overhead: our RunStepper against LangGraph running the same graph on the same database.

Both run llm -> (tool calls? tools -> llm : llm) with the same zero-latency script (bench/zero_model.py)
and a real calculator, persisting every step to Postgres. Time spent is therefore all runtime overhead:
claiming, loading, journalling, committing, publishing for us; channel bookkeeping, serialization and
the checkpoint writes for LangGraph. The two run in alternating rounds (bench_steps).
"""

from __future__ import annotations

import operator
import statistics
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, connection
from django_tenants.utils import schema_context, tenant_context
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.graph import END, START, StateGraph

from bench.measure import percentile
from bench.zero_model import ZeroChatModel, scripted_reply
from common.actors import Actor
from data_plane import services
from data_plane.executor import RunStepper
from data_plane.tools import BUILTIN_TOOLS, BuiltinToolRunner, calculate
from tenants.db_roles import owner_context

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
ROUNDS = 5


def _our_steps(*, tenant: Any, actor: Actor) -> Callable[[int], list[float]]:
    """RunStepper.run_step in a loop on a fresh run, as the Celery task calls it (inside the tenant's context), with
    the real tool runner and checkpoints; dispatch only records the next step. Returns the per-step times."""
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

    return run_steps


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


def _langgraph_steps(saver: PostgresSaver, count: int, durability: str) -> float:
    """One LangGraph thread run with graph.invoke until the script says STOP after about ``count`` node
    executions (each a LangGraph super-step, as each is a step of ours): its time per node execution.

    invoke and divide, rather than interrupting after each step, because interrupts would add a resume
    (reading the checkpoint back) to every step that LangGraph's own loop never does. The headline uses
    durability="sync": each step's checkpoint is written before the next step starts, which is what our
    runtime guarantees (it commits before dispatching). LangGraph's default, "async", overlaps the write
    with the next step; it is reported beside it for reference.
    """
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
    return elapsed / executed[0]


def bench_steps(*, tenant: Any, actor: Actor, saver: PostgresSaver, steps: int, warmup: int,
                rounds: int = ROUNDS) -> dict[str, float]:
    """step_overhead_ms against langgraph_step_ms (and langgraph_step_async_ms), in ``rounds`` alternating rounds,
    the order within a round alternating too, each run starting after a CHECKPOINT: a busy spell of the machine
    hits both runtimes alike instead of whichever ran through it, and neither pays for the other's writes. Each
    round runs a whole conversation of ``steps`` steps for each (shorter ones would flatter LangGraph, whose
    checkpoint grows with the conversation). Each figure is the median of its rounds' means."""
    ours = _our_steps(tenant=tenant, actor=actor)
    ours(warmup)  # caches, per-thread connections, prepared plans
    for durability in ("sync", "async"):
        _langgraph_steps(saver, warmup, durability)
    our_samples: list[float] = []
    means: dict[str, list[float]] = {"ours": [], "sync": [], "async": []}
    settling = [True]

    def settle() -> None:
        """Write out what the last run left dirty (LangGraph's growing checkpoints, above all) before the next
        one starts. CHECKPOINT needs a superuser or pg_checkpoint: without it the rounds still alternate."""
        if not settling[0]:
            return
        try:
            with owner_context(), connection.cursor() as cursor:
                cursor.execute("CHECKPOINT")
        except DatabaseError as exc:
            settling[0] = False
            print(f"    (no CHECKPOINT between the runs: {exc})", flush=True)

    def run_ours() -> None:
        settle()
        samples = ours(steps)
        our_samples.extend(samples)
        means["ours"].append(sum(samples) / len(samples))

    def run_theirs() -> None:
        for durability in ("sync", "async"):
            settle()
            means[durability].append(_langgraph_steps(saver, steps, durability))

    for index in range(rounds):
        for run in ((run_ours, run_theirs) if index % 2 == 0 else (run_theirs, run_ours)):
            run()
    return {"step_overhead_ms": statistics.median(means["ours"]), "step_overhead_p50_ms": percentile(our_samples, 50),
            "step_overhead_p99_ms": percentile(our_samples, 99), "langgraph_step_ms": statistics.median(means["sync"]),
            "langgraph_step_async_ms": statistics.median(means["async"])}
