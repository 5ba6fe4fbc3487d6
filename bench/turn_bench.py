"""Turns through the API, Celery and back: two real Celery workers and the zero-latency in-process model.

Two worker processes (``celery -A control_plane worker``, the threads pool production runs, 8 threads each:
see WORKER_POOL) consume a queue of this benchmark's own, with ``LLM_API_BASE=inprocess`` (the scripted
scenarios played in the worker: data_plane/runtime/adapters/scripted.py). The agent runs one turn: one llm
node with ``openai/echo`` (answers at once), then end.

- ``turn_overhead_celery``: POST /v1/runs through Django's test client in this process (its transaction
  commits and run_step_task is dispatched), until the run's ``run.status`` completed event arrives on the
  run's channel-layer group; sequential runs.
- ``agent_start``: the same POST until its first event (``run.status`` queued) arrives on that group. The run
  id is only known once the request has published it, so this process subscribes a listener channel to the
  group just before the request's own publish (a wrapper around ``data_plane.streams._publish``, installed
  for this section only, makes a group_add and waits for it before the send): one more round trip to Redis
  before the event, which the figure includes.
- ``turns_per_second``: many runs started with ``run_start`` (the service, not HTTP: the workers are
  measured, not the API) while their step messages are held in a second queue; then all are moved into the
  workers' queue at once (one Lua script), and completed runs / wall time from the move to the last commit.

Where a turn's time goes is reported as medians of its phases (diagnostics), from this process's clocks
(request start, the run's first publish ≈ its commit, the task message published), the workers' log lines
(task received by the worker; the task's run time) and the database's timestamps (the
model effect's journal and latency, the step's commit). The run's started_at is no claim time: the run's
first checkpoint, written by the API, sets it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from celery.signals import after_task_publish
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context

from bench.measure import percentile
from common.actors import Actor
from data_plane import services, streams
from tenants import services as tenant_services

REPO = Path(__file__).resolve().parent.parent
LOG_DIR = REPO / ".data" / "bench-logs"
BIN = Path(sys.executable).parent
TOKEN = uuid.uuid4().hex[:12]
QUEUE = f"bench-turns-{TOKEN}"
HOLD_QUEUE = f"{QUEUE}-hold"
WORKERS = 2
TURN_SPEC: dict[str, Any] = {
    "instructions": "Answer.", "models": ["openai/echo"],
    "graph": {"entry": "answer",
              "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]},
}
# A turn's phases in order (diagnostics, medians): each from the previous point to the next.
PHASES = {
    "request_to_commit": "POST start to the run's transaction committed (its first event handed to publish)",
    "commit_to_task_published": "to the step's task message published (apply_async, on commit)",
    "published_to_worker_received": "to the worker's main process logging it received (ms resolution)",
    "received_to_child_started": "to the task starting in the worker's pool (its log's run time, ms resolution)",
    "child_started_to_model_call": "tenant lookup, claim, loading the state, to the model call (journal's latency)",
    "model_call": "the in-process model call, its deltas published, to its journal entry written",
    "model_call_to_commit": "to the step's commit transaction begun (the run's finished_at)",
    "commit_to_completed_event": "to run.status completed received by this process's listener",
    "completed_event_to_task_done": "to the worker logging the task succeeded (ms resolution)",
    "request_to_response": "POST start to its response (not a phase: overlaps the ones above)",
}
BURST_DIAGNOSTICS = {
    "turn_burst_task_p50_ms": "a step task's run time in a worker during the burst (its log; threads overlap)",
    "turn_burst_gap_p50_ms": "a worker's task end to it receiving the next (acks_late, prefetch 1; ms resolution)",
    "turn_burst_cpu_ms_per_turn": "machine-wide busy CPU time per turn during the burst (all processes)",
}
# Moves a held queue's messages into the workers' queue in one atomic step, oldest first (kombu LPUSHes and
# BRPOPs, so RIGHT to LEFT keeps the order); LMOVE wakes the workers blocked in BRPOP on the destination.
_MOVE = "local n = 0 while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do n = n + 1 end return n"
# A worker's log line for our task (Django's LOGGING format here, Celery's own "[time: LEVEL/Process]" too).
_LOG_LINE = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\b.*? Task data_plane\.tasks\.run_step_task"
                       r"\[([0-9a-f-]{36})\] (received|succeeded in ([0-9.e-]+)s)")


# --- the workers ----------------------------------------------------------------------------------------

# The workers run the pool production runs (README.md: threads, a step's I/O on the process's event loop), so
# a process overlaps its steps' waits on the database and the broker. With a zero-latency model a step is all
# CPU, and threads beyond a few only contend for the GIL: on this 2-core machine, quiet, 4 threads a process
# gave 215 turns/s, 8 gave 178-217, 16 gave 155-186 and 32 gave 155 (machine-wide CPU per turn 8.7, 8.7-10.7,
# 10.2-12.4, 12.5 ms). Production sizes threads for its slow model calls (a thread waits out its step).
# BENCH_WORKER_POOL=prefork BENCH_WORKER_THREADS=1 measures one step at a time per process, as before.
WORKER_POOL = os.environ.get("BENCH_WORKER_POOL", "threads")
WORKER_THREADS = int(os.environ.get("BENCH_WORKER_THREADS", "8"))


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="control_plane.settings.base", DATABASE_URL=settings.DATABASE_URL,
               REDIS_URL=settings.REDIS_URL, CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
               CHANNEL_LAYER_REDIS_URL=settings.CHANNEL_LAYER_REDIS_URL, LLM_API_BASE="inprocess",
               RUN_STEP_QUEUE=QUEUE, PYTHONUNBUFFERED="1")
    return env


@contextmanager
def celery_workers(count: int) -> Iterator[list[Path]]:
    """``count`` worker processes on QUEUE, ready; stopped (TERM, then KILL) on the way out, whatever happens."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    env, processes, logs = worker_env(), [], []
    try:
        for index in range(count):
            log = LOG_DIR / f"turn-worker-{index}.log"
            logs.append(log)
            with open(log, "wb") as out:
                processes.append(subprocess.Popen(
                    [str(BIN / "celery"), "-A", "control_plane", "worker", "--loglevel=INFO",
                     f"--hostname=bench-{TOKEN}-{index}@%h", f"--pool={WORKER_POOL}", f"--concurrency={WORKER_THREADS}",
                     "--without-gossip", "--without-mingle", "-Q", QUEUE],
                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 90
        for process, log in zip(processes, logs):
            while "ready." not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                    raise RuntimeError(f"a Celery worker did not start; {log}:\n{tail}")
                time.sleep(0.02)
        yield logs
        for process, log in zip(processes, logs):
            if process.poll() is not None:
                raise RuntimeError(f"a Celery worker died during the benchmark; see {log}")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


def delete_broker_keys() -> None:
    """Every broker key naming our queues (messages, kombu bindings), and our workers' pidbox bindings."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        keys = list(broker.scan_iter(match=f"*{QUEUE}*", count=1000))
        if keys:
            broker.delete(*keys)
        for key in broker.scan_iter(match="_kombu.binding.*", count=1000):
            if broker.type(key) == b"set":
                ours = [m for m in broker.smembers(key) if TOKEN.encode() in m]
                if ours:
                    broker.srem(key, *ours)
    finally:
        broker.close()


def delete_group_keys(schema: str) -> None:
    layer_redis = redis.Redis.from_url(settings.CHANNEL_LAYER_REDIS_URL)
    try:
        keys = list(layer_redis.scan_iter(match=f"*group:{streams.run_group(tenant_schema=schema, run_id='')}*",
                                          count=1000))
        if keys:
            layer_redis.delete(*keys)
    finally:
        layer_redis.close()


# --- listening on the channel layer ---------------------------------------------------------------------

class Listener:
    """A channel of this process on its own event loop and thread, subscribed to runs' groups just before
    the request publishes their first event. Records each ``run.status`` event's arrival (time.time())."""

    def __init__(self, schema: str) -> None:
        self.prefix = streams.run_group(tenant_schema=schema, run_id="")
        self.layer = get_channel_layer()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-listener", daemon=True)
        self.thread.start()
        self.channel: str = self._call(self.layer.new_channel())
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.subscribed: dict[str, float] = {}  # group -> when the request's publish began (≈ its commit)
        self.enabled = False
        self.changed = threading.Condition()
        self._receiving = asyncio.run_coroutine_threadsafe(self._receive(), self.loop)
        self._original_publish = streams._publish

    def _call(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _receive(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            arrived = time.time()
            for event in message.get("events") or ():
                if message.get("type") != "run.events" or event.get("type") != "run.status":
                    continue
                with self.changed:
                    self.arrivals.append((arrived, event["data"]))
                    self.changed.notify_all()

    def install(self) -> None:
        """Wrap ``streams._publish`` (called on commit): a run's first publish first subscribes our channel (a
        group_add on the listener's loop, waited for by the committing thread), so the event finds it."""
        original, listener = self._original_publish, self

        def subscribing_publish(group: str, messages: list[dict[str, Any]], **options: Any) -> None:
            if listener.enabled and group.startswith(listener.prefix) and group not in listener.subscribed:
                listener.subscribed[group] = time.time()
                listener._call(listener.layer.group_add(group, listener.channel))
            original(group, messages, **options)

        streams._publish = subscribing_publish  # type: ignore[assignment]

    def uninstall(self) -> None:
        streams._publish = self._original_publish  # type: ignore[assignment]

    def wait_for(self, since: int, predicate: Any, timeout: float) -> tuple[float, dict[str, Any]]:
        """The first status event from index ``since`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for arrived, data in self.arrivals[since:]:
                    if predicate(data):
                        return arrived, data
                left = deadline - time.monotonic()
                if left <= 0:
                    died = self._receiving.exception() if self._receiving.done() else None
                    raise TimeoutError(f"no matching run.status event within {timeout} s"
                                       + (f"; the listener's receive died: {died!r}" if died else ""))
                self.changed.wait(left)

    def unsubscribe(self, group: str) -> None:
        self._call(self.layer.group_discard(group, self.channel))

    def close(self) -> None:
        self.uninstall()
        self._receiving.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# --- the measurements -----------------------------------------------------------------------------------

def bench_turns(*, tenant: Any, actor: Actor, samples: int, burst: int, warmup: int = 20) -> dict[str, float]:
    schema = tenant.schema_name
    with schema_context(schema):
        agent = services.agent_create(tenant=tenant, name="bench-one-turn", description="One turn, echo model",
                                      spec=TURN_SPEC, actor=actor)
    key = tenant_services.api_key_create(tenant=tenant, name="bench turns", scopes=["runs:read", "runs:write"],
                                         expires_at=None, actor=actor, granting_scopes=None).plaintext
    published: dict[str, tuple[float, str]] = {}  # run id -> (when the task message was published, task id)

    def on_publish(sender: Any = None, headers: Any = None, body: Any = None, **_: Any) -> None:
        if sender == "data_plane.tasks.run_step_task" and headers and body:
            published[body[1]["run_id"]] = (time.time(), headers["id"])

    previous_queue, previous_interval = settings.RUN_STEP_QUEUE, sys.getswitchinterval()
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # so a killed benchmark still stops the workers
    listener: Listener | None = None
    after_task_publish.connect(on_publish, weak=False)
    figures: dict[str, float] = {}
    try:
        listener = Listener(schema)
        settings.RUN_STEP_QUEUE = QUEUE
        # The listener thread must not wait 5 ms for the GIL behind the request thread to stamp an arrival.
        sys.setswitchinterval(0.0002)
        listener.install()
        with celery_workers(WORKERS) as logs:
            client = Client()
            _sequential(client, key, agent.id, listener, warmup, label="warm-up")
            _burst(tenant, actor, agent.id, max(warmup * 2, 50))  # both workers warm
            rows = _sequential(client, key, agent.id, listener, samples, label="turn")
            turns = [row["completed"] - row["post"] for row in rows]
            starts = [row["queued"] - row["post"] for row in rows]
            figures.update(turn_overhead_celery_p50_ms=percentile(turns, 50) * 1000,
                           turn_overhead_celery_p99_ms=percentile(turns, 99) * 1000,
                           agent_start_p50_ms=percentile(starts, 50) * 1000,
                           agent_start_p99_ms=percentile(starts, 99) * 1000)
            figures.update(_phases(schema, rows, published, logs))
            offsets = [len(_task_lines(log)) for log in logs]
            elapsed, cpu = _burst(tenant, actor, agent.id, burst)
            figures["turns_per_second"] = burst / elapsed
            figures["turns_burst_size"] = float(burst)
            figures["turn_burst_cpu_ms_per_turn"] = cpu / burst * 1000
            figures.update(_burst_tasks(logs, offsets))
    finally:
        after_task_publish.disconnect(on_publish)
        if listener is not None:
            listener.close()
        sys.setswitchinterval(previous_interval)
        settings.RUN_STEP_QUEUE = previous_queue
        signal.signal(signal.SIGTERM, previous_term)
        delete_broker_keys()
        delete_group_keys(schema)
    return figures


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _sequential(client: Client, key: str, agent_id: Any, listener: Listener, count: int,
                *, label: str) -> list[dict[str, Any]]:
    """``count`` runs one after another through the API; each one's request start, first event and
    completed event (time.time())."""
    rows = []
    listener.enabled = True
    try:
        for index in range(count):
            text = f"{label} {index} {uuid.uuid4().hex[:8]}"
            since = len(listener.arrivals)
            posted = time.time()
            response = client.post("/v1/runs", json.dumps({"agent_id": str(agent_id), "input": text}),
                                   content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
            returned = time.time()
            if response.status_code != 202:
                raise RuntimeError(f"POST /v1/runs answered {response.status_code}: {response.content[:500]!r}")
            run_id = response.json()["id"]
            queued, _ = listener.wait_for(since, lambda data: data.get("status") == "queued", timeout=30)
            completed, data = listener.wait_for(since, lambda data: data.get("status") == "failed" or (
                data.get("status") == "completed" and (data.get("output") or "").endswith(text)), timeout=30)
            if data.get("status") != "completed":
                raise RuntimeError(f"the benchmark run {run_id} did not complete: {data}")
            group = listener.prefix + run_id
            rows.append({"run_id": run_id, "post": posted, "returned": returned, "queued": queued,
                         "completed": completed, "commit": listener.subscribed.get(group)})
            listener.unsubscribe(group)
    finally:
        listener.enabled = False
    return rows


def _burst(tenant: Any, actor: Actor, agent_id: Any, count: int) -> tuple[float, float]:
    """Start ``count`` runs with their step messages held back, release them to the workers at once, and
    wait until all are completed. Returns the wall time from the release to the last run's commit, and the
    machine's busy CPU seconds from the release until all were seen completed."""
    schema = tenant.schema_name
    settings.RUN_STEP_QUEUE = HOLD_QUEUE
    try:
        run_ids = []
        with schema_context(schema):
            for index in range(count):
                run_ids.append(services.run_start(tenant=tenant, agent_id=agent_id, input=f"burst {index}",
                                                  actor=actor).id)
    finally:
        settings.RUN_STEP_QUEUE = QUEUE
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        held = broker.llen(HOLD_QUEUE)
        if held != count:
            raise RuntimeError(f"expected {count} held step messages in {HOLD_QUEUE}, found {held}")
        cpu_at_release = _busy_cpu_seconds()
        released = time.time()
        moved = broker.eval(_MOVE, 2, HOLD_QUEUE, QUEUE)
    finally:
        broker.close()
    if moved != count:
        raise RuntimeError(f"moved {moved} of {count} step messages to the workers' queue")
    q = f'"{schema}".data_plane_run'
    deadline = time.monotonic() + max(60.0, count / 10)
    with schema_context(schema), connection.cursor() as cursor:  # the tenant's role reads its schema
        while True:
            cursor.execute(f"SELECT count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled')), "
                           f"count(*) FILTER (WHERE status = 'completed'), "
                           f"extract(epoch FROM max(finished_at)) FROM {q} WHERE id = ANY(%s)", [run_ids])
            finished, completed, last = cursor.fetchone()
            if finished == count:
                cpu = _busy_cpu_seconds() - cpu_at_release
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{finished} of {count} burst runs finished in time")
            time.sleep(0.02)
    if completed != count:
        raise RuntimeError(f"{count - completed} of {count} burst runs did not complete")
    return float(last) - released, cpu


def _task_lines(log: Path) -> list[tuple[float, str, str, float]]:
    """(time, task id, "received" or "succeeded", run time in s) of each run_step_task line in a worker's log."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            lines.append((stamp, match.group(2), match.group(3)[:9], float(match.group(4) or 0)))
    return lines


def _busy_cpu_seconds() -> float:
    """Machine-wide CPU time spent busy (not idle, not waiting on IO) since boot, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _burst_tasks(logs: list[Path], offsets: list[int]) -> dict[str, float]:
    runs, gaps = [], []
    for log, offset in zip(logs, offsets):
        lines = _task_lines(log)[offset:]
        runs += [seconds * 1000 for _, _, kind, seconds in lines if kind == "succeeded"]
        gaps += [(b[0] - a[0]) * 1000 for a, b in zip(lines, lines[1:]) if a[2] == "succeeded" and b[2] == "received"]
    figures = {}
    if runs:
        figures["turn_burst_task_p50_ms"] = statistics.median(runs)
    if gaps:
        figures["turn_burst_gap_p50_ms"] = statistics.median(gaps)
    return figures


def _phases(schema: str, rows: list[dict[str, Any]], published: dict[str, tuple[float, str]],
            logs: list[Path]) -> dict[str, float]:
    """Medians (ms) of a turn's phases, in order: they add up to the turn (request to completed event)."""
    received: dict[str, float] = {}
    child_started: dict[str, float] = {}
    task_done: dict[str, float] = {}
    for log in logs:
        for stamp, task_id, kind, seconds in _task_lines(log):
            if kind == "received":
                received[task_id] = stamp
            else:
                task_done[task_id] = stamp
                child_started[task_id] = stamp - seconds
    q = f'"{schema}".'
    with schema_context(schema), connection.cursor() as cursor:  # the tenant's role reads its schema
        cursor.execute(
            f"SELECT r.id::text, extract(epoch FROM e.finished_at) - e.latency_ms / 1000.0, "
            f"extract(epoch FROM e.finished_at), "
            f"extract(epoch FROM r.finished_at) FROM {q}data_plane_run r "
            f"JOIN {q}data_plane_effectrecord_all e ON e.run_id = r.id WHERE r.id = ANY(%s::uuid[])",
            [[row["run_id"] for row in rows]])
        database = {row[0]: [float(value) for value in row[1:]] for row in cursor.fetchall()}
    names = list(PHASES)[:-1]
    phases: dict[str, list[float]] = {}
    for row in rows:
        run_id = row["run_id"]
        if run_id not in database or run_id not in published or row["commit"] is None:
            continue
        when_published, task_id = published[run_id]
        if task_id not in received or task_id not in child_started:
            continue
        effect_start, effect_end, committed = database[run_id]
        points = [row["post"], row["commit"], when_published, received[task_id], child_started[task_id],
                  effect_start, effect_end, committed, row["completed"], task_done[task_id]]
        for name, (start, end) in zip(names, zip(points, points[1:])):
            phases.setdefault(name, []).append((end - start) * 1000)
        phases.setdefault("request_to_response", []).append((row["returned"] - row["post"]) * 1000)
    return {f"turn_phase_{name}_p50_ms": statistics.median(values) for name, values in phases.items()}
