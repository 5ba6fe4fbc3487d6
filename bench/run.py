#!/usr/bin/env python
"""`make bench`: the runtime's benchmarks (BENCH.md) on the local stack, in a throw-away tenant.

Provisions a tenant with the real provisioning service, measures each figure and its baseline in the
same run (so ratios hold on a noisy machine), prints `name | value | target`, writes
bench/results/latest.json, and removes the tenant (schema and public rows) whatever happens. A figure
that could not be measured is left out, never guessed; the script then exits non-zero.

Knobs (environment): BENCH_STEPS (300) steps per write/step figure, BENCH_LONG_STEPS (500) the length of
the read/bytes conversation, BENCH_READS (50) reads of its last state, BENCH_TURNS (200) sequential turns
through the API and Celery, BENCH_TURN_BURST (2000) runs started at once for turns_per_second,
BENCH_STREAM_SAMPLES (30) runs followed by one subscriber and BENCH_STREAM_CROWD_SAMPLES (3) by 200,
BENCH_MEMORY_ROWS (100000) memories searched, BENCH_FULL=1 also the 1M memory figures. BENCH_ONLY: a
comma-separated list of sections to run (checkpoint, step, turn, stream, mcp, memory, guard); all by default.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["DJANGO_SETTINGS_MODULE"] = "control_plane.settings.base"
# run_start schedules a run's first step on Celery after commit. The benchmark steps its runs itself, so
# those messages go to a queue of this process's own, deleted at the end: no real worker ever sees them.
BENCH_QUEUE = f"bench-discard-{uuid.uuid4().hex[:12]}"
os.environ["RUN_STEP_QUEUE"] = BENCH_QUEUE
# The benchmarks measure the runtime, not admission: their standard-tier tenants burst past the tier's quotas.
os.environ["TIER_LIMITS_ENABLED"] = "false"

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django_tenants.utils import schema_context  # noqa: E402
from langgraph.checkpoint.postgres import PostgresSaver  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from bench import checkpoint_bench, guard_bench, mcp_bench, memory_bench, step_bench, stream_bench, \
    turn_bench  # noqa: E402
from common.actors import Actor  # noqa: E402
from data_plane import services  # noqa: E402
from tenants import services as tenant_services  # noqa: E402
from tenants.models import Tenant  # noqa: E402

ACTOR = Actor(kind="system", id="bench")
TENANT_NAME = "Benchmark (throw-away)"
RESULTS = REPO / "bench" / "results" / "latest.json"
STEPS = int(os.environ.get("BENCH_STEPS", "300"))
LONG_STEPS = int(os.environ.get("BENCH_LONG_STEPS", "500"))
READS = int(os.environ.get("BENCH_READS", "50"))
TURNS = int(os.environ.get("BENCH_TURNS", "200"))
TURN_BURST = int(os.environ.get("BENCH_TURN_BURST", "2000"))
STREAM_SAMPLES = int(os.environ.get("BENCH_STREAM_SAMPLES", "30"))
STREAM_CROWD_SAMPLES = int(os.environ.get("BENCH_STREAM_CROWD_SAMPLES", "3"))
MCP_CALLS = int(os.environ.get("BENCH_MCP_CALLS", "300"))
FULL = os.environ.get("BENCH_FULL") == "1"
SECTIONS = ("checkpoint", "step", "turn", "stream", "mcp", "memory", "guard")
ONLY = {name.strip() for name in os.environ.get("BENCH_ONLY", "").split(",") if name.strip()} or set(SECTIONS)
if ONLY - set(SECTIONS):
    sys.exit(f"BENCH_ONLY names unknown sections: {', '.join(sorted(ONLY - set(SECTIONS)))}; "
             f"known: {', '.join(SECTIONS)}")
SELECTED_ALL = ONLY == set(SECTIONS)
WARMUP = 20

# (figure, target as BENCH.md states it, check or None). Figures not listed are diagnostics.
TARGETS: list[tuple[str, str, Callable[[dict[str, float]], bool] | None]] = [
    ("checkpoint_write_p50_ms", "ratio below", None),
    ("checkpoint_write_p99_ms", "ratio below", None),
    ("insert_floor_p50_ms", "baseline", None),
    ("checkpoint_write_ratio", "<= 1.2", lambda f: f["checkpoint_write_ratio"] <= 1.2),
    ("checkpoint_read_p50_ms", "< 5", lambda f: f["checkpoint_read_p50_ms"] < 5),
    ("checkpoint_bytes_step10", "ratio below", None),
    ("checkpoint_bytes_step500", "ratio below", None),
    ("checkpoint_bytes_ratio", "<= 1.5", lambda f: f["checkpoint_bytes_ratio"] <= 1.5),
    ("langgraph_put_p50_ms", "baseline", None),
    ("langgraph_bytes_step500", "baseline", None),
    ("step_overhead_ms", "<= langgraph_step_ms", lambda f: f["step_overhead_ms"] <= f["langgraph_step_ms"]),
    ("langgraph_step_ms", "baseline", None),
    ("turn_overhead_celery_p50_ms", "< 20", lambda f: f["turn_overhead_celery_p50_ms"] < 20),
    ("turn_overhead_celery_p99_ms", "p50 above", None),
    ("turns_per_second", ">= 200", lambda f: f["turns_per_second"] >= 200),
    ("agent_start_p50_ms", "p99 below", None),
    ("agent_start_p99_ms", "< 50", lambda f: f["agent_start_p99_ms"] < 50),
    ("ttft_added_p50_ms", "p99 below", None),
    ("ttft_added_p99_ms", "< 20", lambda f: f["ttft_added_p99_ms"] < 20),
    ("ttft_added_p99_ms_200_subscribers", "< 50", lambda f: f["ttft_added_p99_ms_200_subscribers"] < 50),
    ("mcp_call_overhead_p50_ms", "< 5", lambda f: f["mcp_call_overhead_p50_ms"] < 5),
    ("memory_search_p50_ms_100k", "p99 below", None),
    ("memory_search_p99_ms_100k", "< 10", lambda f: f["memory_search_p99_ms_100k"] < 10),
    ("memory_recall_at_10_100k", ">= 0.95", lambda f: f["memory_recall_at_10_100k"] >= 0.95),
    ("memory_search_floor_p99_ms_100k", "baseline", None),
    ("memory_search_ratio_100k", "<= 3", lambda f: f["memory_search_ratio_100k"] <= 3),
    *([("memory_search_p99_ms_1m", "< 10", lambda f: f["memory_search_p99_ms_1m"] < 10),
       ("memory_recall_at_10_1m", ">= 0.95", lambda f: f["memory_recall_at_10_1m"] >= 0.95)] if FULL else []),
    ("embed_per_second", "measured", None),
    ("guard_detection_rate", ">= 0.95", lambda f: f["guard_detection_rate"] >= 0.95),
    ("guard_false_positive_rate", "<= 0.02", lambda f: f["guard_false_positive_rate"] <= 0.02),
    ("guard_input_p99_ms", "< 10", lambda f: f["guard_input_p99_ms"] < 10),
    ("guard_check_injection_p99_ms", "< 10", lambda f: f["guard_check_injection_p99_ms"] < 10),
    ("guard_check_pii_p99_ms", "< 10", lambda f: f["guard_check_pii_p99_ms"] < 10),
    ("guard_check_secrets_p99_ms", "< 10", lambda f: f["guard_check_secrets_p99_ms"] < 10),
]
DIAGNOSTICS = {
    "insert_floor_django_p50_ms": "the floor's INSERT through Django's connection (autocommit, as ours)",
    "insert_floor_txn_p50_ms": "the floor's INSERT as BEGIN, INSERT, COMMIT (three round trips)",
    "checkpoint_write_vs_txn_floor": "checkpoint_write_p50_ms / insert_floor_txn_p50_ms",
    "design_one_row_p50_ms": "another design: a step's commit as one row holding all it writes, and the run's "
                             "fenced update",
    "design_one_row_ratio": "design_one_row_p50_ms / insert_floor_p50_ms",
    "design_row_alone_p50_ms": "that row alone, fenced by its unique (run, step) key instead of the run's row",
    "design_row_alone_ratio": "design_row_alone_p50_ms / insert_floor_p50_ms",
    "langgraph_put_p99_ms": "",
    "langgraph_bytes_step10": "",
    "langgraph_bytes_ratio": "step500 / step10",
    "langgraph_read_p50_ms": "PostgresSaver.get_tuple of the same last state",
    "step_overhead_p50_ms": "",
    "step_overhead_p99_ms": "",
    "langgraph_step_async_ms": "LangGraph's default durability (async)",
    "checkpoint_write_vs_langgraph_put": "checkpoint_write_p50_ms / langgraph_put_p50_ms",
    "turns_burst_size": "runs released at once to the 2 workers for turns_per_second",
    **{f"turn_phase_{name}_p50_ms": note for name, note in turn_bench.PHASES.items()},
    **turn_bench.BURST_DIAGNOSTICS,
    "ttft_added_p50_ms_200_subscribers": "",
    "event_delivery_p50_ms": "a durable event's commit to its receipt over the websocket, 1 subscriber",
    "event_delivery_p99_ms": "",
    "event_delivery_p99_ms_200_subscribers": "",
    "agent_start_ws_p50_ms": "POST /v1/runs to its first event over a websocket opened with the returned id",
    "agent_start_ws_p99_ms": "",
    "mcp_call_overhead_p99_ms": "",
    "mcp_sdk_call_p50_ms": "the SDK's bare client calling the same tool on its own session (baseline)",
    **memory_bench.DIAGNOSTICS,
    **guard_bench.DIAGNOSTICS,
}


# --- the throw-away tenant ----------------------------------------------------------------------------

def provision() -> Any:
    provisioned = tenant_services.tenant_provision(name=TENANT_NAME, slug=f"bench-{uuid.uuid4().hex[:10]}",
                                                   sla_tier="standard", domains=[], actor=ACTOR)
    return provisioned.tenant, provisioned.admin_key.plaintext


def destroy_tenant(tenant: Tenant) -> None:
    """Remove the tenant completely: schema and every public row (conftest.destroy_tenant's logic)."""
    tenant_services.tenant_purge(tenant=tenant)


def remove_stale_tenants() -> None:
    """Tenants a killed earlier run left behind (only ours: bench- slug, our name, over 15 minutes old)."""
    connection.set_schema_to_public()
    stale = Tenant.objects.filter(slug__startswith="bench-", name=TENANT_NAME,
                                  created_at__lt=datetime.now(timezone.utc) - timedelta(minutes=15))
    for tenant in stale:
        print(f"removing tenant {tenant.slug} left behind by an earlier benchmark run", flush=True)
        destroy_tenant(tenant)


def delete_bench_queue() -> None:
    """Delete the run-step messages run_start queued, and the queue's bindings: every broker key that
    names our uniquely named queue (kombu's queue_delete only knows bindings its own channel declared)."""
    import redis

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        keys = list(broker.scan_iter(match=f"*{BENCH_QUEUE}*", count=1000))
        if keys:
            broker.delete(*keys)
    finally:
        broker.close()


# --- reporting ----------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    return {"cores": os.cpu_count(), "memory_gb": round(memory_kb / 1024 ** 2, 1), "postgres": postgres,
            "python": platform.python_version()}


def derive(figures: dict[str, float]) -> None:
    ratios = {"checkpoint_write_ratio": ("checkpoint_write_p50_ms", "insert_floor_p50_ms"),
              "checkpoint_bytes_ratio": ("checkpoint_bytes_step500", "checkpoint_bytes_step10"),
              "langgraph_bytes_ratio": ("langgraph_bytes_step500", "langgraph_bytes_step10"),
              "checkpoint_write_vs_langgraph_put": ("checkpoint_write_p50_ms", "langgraph_put_p50_ms"),
              "checkpoint_write_vs_txn_floor": ("checkpoint_write_p50_ms", "insert_floor_txn_p50_ms"),
              "design_one_row_ratio": ("design_one_row_p50_ms", "insert_floor_p50_ms"),
              "design_row_alone_ratio": ("design_row_alone_p50_ms", "insert_floor_p50_ms"),
              "memory_search_ratio_100k": ("memory_search_p99_ms_100k", "memory_search_floor_p99_ms_100k"),
              "memory_search_ratio_1m": ("memory_search_p99_ms_1m", "memory_search_floor_p99_ms_1m")}
    for name, (numerator, denominator) in ratios.items():
        if numerator in figures and figures.get(denominator):
            figures[name] = figures[numerator] / figures[denominator]


def show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) >= 100 else f"{value:.3f}"


def report(figures: dict[str, float]) -> list[str]:
    """Print the table; return the targets missed."""
    rows, missed = [], []
    for name, target, check in TARGETS:
        if name not in figures:
            if SELECTED_ALL:  # with BENCH_ONLY, the sections not run measure nothing
                rows.append((name, "not measured", target))
            continue
        verdict = ""
        if check is not None:
            try:
                met = check(figures)
            except KeyError:
                verdict = "  (baseline not measured)"
            else:
                verdict = "  met" if met else "  MISSED"
                if not met:
                    missed.append(name)
        rows.append((name, show(figures[name]), target + verdict))
    rows.extend((name, show(figures[name]), f"diagnostic{': ' + note if note else ''}")
                for name, note in DIAGNOSTICS.items() if name in figures)
    listed = {name for name, _, _ in TARGETS} | set(DIAGNOSTICS)
    rows.extend((name, show(value), "diagnostic") for name, value in figures.items() if name not in listed)
    widths = [max(len(row[i]) for row in [("name", "value", "target"), *rows]) for i in range(3)]
    for index, row in enumerate([("name", "value", "target"), *rows]):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("-|-".join("-" * width for width in widths))
    return missed


# --- the run ------------------------------------------------------------------------------------------

def main() -> int:
    figures: dict[str, float] = {}
    failures: list[str] = []
    started = time.monotonic()

    def section(key: str, name: str, measure: Callable[[], dict[str, float]]) -> None:
        if key not in ONLY:
            return
        print(f"... {name}", flush=True)
        section_started = time.monotonic()
        try:
            figures.update(measure())
        except Exception:  # one broken benchmark must not hide the others' figures
            failures.append(name)
            traceback.print_exc()
        print(f"    {time.monotonic() - section_started:.1f} s", flush=True)

    remove_stale_tenants()
    print("... provisioning a throw-away tenant", flush=True)
    tenant, admin_key = provision()
    schema = tenant.schema_name
    langgraph_connection = None
    try:
        # LangGraph's tables go into the bench tenant's schema (its SQL is unqualified), so they go with it.
        langgraph_connection = psycopg.connect(settings.DATABASE_URL, autocommit=True, prepare_threshold=0,
                                               row_factory=dict_row, options=f"-c search_path={schema}")
        saver = PostgresSaver(langgraph_connection)  # type: ignore[arg-type]
        if ONLY & {"checkpoint", "step"}:
            saver.setup()
        with schema_context(schema):
            agent = services.agent_create(tenant=tenant, name="bench-conversation", description="Checkpoint benchmark",
                                          spec={**step_bench.AGENT_SPEC}, actor=ACTOR)

        def start_run() -> Any:
            with schema_context(schema):
                return services.run_start(tenant=tenant, agent_id=agent.id, input="Hello", actor=ACTOR)

        # The store runs in its tenant's context, as in a worker: its SQL names the schema, and the connection has
        # the tenant's role (with DATABASE_TENANT_ROLES).
        def in_tenant(measure: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
            def measured() -> dict[str, float]:
                with schema_context(schema):
                    return measure()
            return measured

        section("checkpoint", "checkpoint writes, the INSERT floor and LangGraph puts",
                in_tenant(lambda: checkpoint_bench.bench_write(
                    schema=schema, start_run=start_run, database_url=settings.DATABASE_URL, saver=saver,
                    steps=STEPS, warmup=WARMUP)))
        section("checkpoint", f"a {LONG_STEPS}-step conversation: bytes per step and reading it back",
                in_tenant(lambda: checkpoint_bench.bench_long_conversation(
                    schema=schema, start_run=start_run, saver=saver, lg_connection=langgraph_connection,
                    steps=LONG_STEPS, reads=READS)))
        section("step", "step overhead of our runtime and of LangGraph on the same graph, in alternating rounds",
                lambda: step_bench.bench_steps(tenant=tenant, actor=ACTOR, saver=saver, steps=STEPS, warmup=WARMUP))
        section("turn", f"turns through the API and {turn_bench.WORKERS} Celery workers (zero-latency model)",
                lambda: turn_bench.bench_turns(tenant=tenant, actor=ACTOR, samples=TURNS, burst=TURN_BURST))
        section("stream", "streaming: model server, Daphne and a worker; time to first token added, with 1 and 200 "
                "subscribers", lambda: stream_bench.bench_streaming(key=admin_key, samples=STREAM_SAMPLES,
                                                                    crowd_samples=STREAM_CROWD_SAMPLES))
        section("mcp", "a tool call through MCP (streamable HTTP, a local server)",
                lambda: mcp_bench.bench_mcp(calls=MCP_CALLS))
        section("memory", f"long-term memory: embedding, ingest, search at {memory_bench.ROWS} memories"
                f"{' and 1M' if FULL else ''}",
                lambda: memory_bench.bench_memory(tenant=tenant, actor=ACTOR, full=FULL))
        section("guard", "guardrails: held-out detection and false positives, the input pipeline's latency",
                guard_bench.bench_guardrails)
        derive(figures)
        about = machine()
    finally:
        if langgraph_connection is not None:
            langgraph_connection.close()
        destroy_tenant(tenant)
        delete_bench_queue()
        print(f"... removed tenant {tenant.slug}", flush=True)

    results = {**{name: round(value, 4) for name, value in figures.items()}, "machine": about,
               "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    # A partial run (BENCH_ONLY) writes beside latest.json, never over the full run's figures.
    written = RESULTS if SELECTED_ALL else RESULTS.with_name(f"latest-{'-'.join(sorted(ONLY))}.json")
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(json.dumps(results, indent=2) + "\n")
    print()
    missed = report(figures)
    print(f"\n{about['cores']} cores, {about['memory_gb']} GB, Postgres {about['postgres']}, "
          f"Python {about['python']}; {time.monotonic() - started:.0f} s; wrote {written.relative_to(REPO)}")
    if missed:
        print("targets missed: " + ", ".join(missed))
    if failures:
        print("benchmarks that failed (their figures are left out): " + ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
