"""Streaming figures: the time to first token the platform adds, and event delivery, with 1 and 200 subscribers.

Real processes: our model server, Daphne (the websocket) and one Celery worker whose LLM gateway (litellm)
calls the model server over HTTP, as with any provider. Each sample starts a run through the API, opens N
websocket subscriptions to it (their first message, stream.opened, confirms each), and the scenario's first
token waits until they are all there (``first_token_delay_ms``).

- ``ttft_added``: the model server writing the reply's first text chunk (its clock, recorded per reply) to
  each subscriber receiving its first ``message.delta`` (this process's clock; one machine, one clock):
  the gateway, the worker's publish, Redis, Daphne and the socket.
- ``event_delivery``: a durable event's ``ts`` (its commit's transaction time) to its receipt, for events
  committed after the subscriber's stream opened (not the replay of what came before).
- ``agent_start_ws``: POST /v1/runs to its first event received over a websocket opened with the run id
  the POST returned (what a client sees; BENCH.md's agent_start is measured in turn_bench by a listener
  subscribed before the run exists).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from websockets.asyncio.client import connect

from bench.measure import percentile
from tests.processes import free_port, log_tail, running, wait_for

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOG_DIR = REPO / ".data" / "bench-logs"
TOKEN = uuid.uuid4().hex[:8]
QUEUE = f"bench-stream-{TOKEN}"
SCENARIO = f"bench-ttft-{TOKEN}"
WORDS = " ".join(f"token{i}" for i in range(24))


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="control_plane.settings.base", DATABASE_URL=settings.DATABASE_URL,
               REDIS_URL=settings.REDIS_URL, CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
               CHANNEL_LAYER_REDIS_URL=settings.CHANNEL_LAYER_REDIS_URL, RUN_STEP_QUEUE=QUEUE, PYTHONUNBUFFERED="1",
               **extra)
    return env


@contextmanager
def _process(name: str, args: list[str], env: dict[str, str], ready: Any) -> Iterator[None]:
    log = LOG_DIR / f"stream-{name}.log"
    with running(args, log_path=log, env=env) as process:
        def started() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited; {log}:\n{log_tail(log)}")
            return bool(ready(log))
        wait_for(started, timeout=90, what=f"{name} to start; see {log}")
        yield


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def stack() -> Iterator[tuple[str, str]]:
    """The model server, Daphne and one Celery worker; yields (API base URL, model server URL)."""
    model_port, api_port = free_port(), free_port()
    model_url, api_url = f"http://127.0.0.1:{model_port}", f"http://127.0.0.1:{api_port}"
    model_name = f"openai/{SCENARIO}"
    env = _env(LLM_API_BASE=f"{model_url}/v1", LLM_LOCAL_PRICES=model_name)
    with _process("model-server", [sys.executable, "-m", "data_plane.model_server", "--host", "127.0.0.1",
                                   "--port", str(model_port)], env, lambda log: _answers(f"{model_url}/healthz")), \
         _process("daphne", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(api_port),
                             "control_plane.asgi:application"], env, lambda log: _answers(f"{api_url}/healthz")), \
         _process("worker", [str(BIN / "celery"), "-A", "control_plane", "worker", "--loglevel=INFO",
                             f"--hostname=bench-stream-{TOKEN}@%h", "--pool=threads", "--concurrency=16",
                             "--without-gossip", "--without-mingle", "-Q", QUEUE], env,
                  lambda log: "ready." in log.read_text(errors="replace")):
        yield api_url, model_url


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


async def _subscriber(url: str, key: str, opened: asyncio.Event, count: list[int], total: int,
                      deltas: list[float], deliveries: list[float]) -> None:
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=30,
                       max_queue=None) as ws:
        first_delta, opened_at = True, float("inf")
        async for raw in ws:
            received = time.time()
            message = json.loads(raw)
            kind = message["type"]
            if kind == "stream.opened":
                opened_at = received
                count[0] += 1
                if count[0] == total:
                    opened.set()
            elif kind == "message.delta" and first_delta:
                first_delta = False
                deltas.append(received)
            elif kind not in ("message.delta", "stream.idle") and "ts" in message:
                committed = _epoch(message["ts"])
                if committed > opened_at:  # live, not replayed from before this subscriber connected
                    deliveries.append(received - committed)
            if kind == "run.finished":
                return


async def _sample(api_url: str, model_url: str, key: str, agent_id: str, subscribers: int,
                  http: httpx.AsyncClient) -> tuple[list[float], list[float]]:
    """One run with ``subscribers`` subscribers: (ttft added per subscriber, event deliveries), milliseconds."""
    posted = time.time()
    response = await http.post("/v1/runs", json={"agent_id": agent_id, "input": f"go {uuid.uuid4().hex}"})
    response.raise_for_status()
    run_id = response.json()["id"]
    url = api_url.replace("http://", "ws://") + f"/v1/runs/{run_id}/stream"
    opened, count, firsts, deliveries = asyncio.Event(), [0], [], []
    tasks = [asyncio.create_task(_subscriber(url, key, opened, count, subscribers, firsts, deliveries))
             for _ in range(subscribers)]
    await asyncio.wait_for(opened.wait(), 60)
    all_opened = time.time()
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    timings = (await http.get(f"{model_url}/admin/first-text", params={"scenario": SCENARIO})).json()
    sent = [t["at"] for t in timings if t["at"] > posted]
    if not sent:
        raise RuntimeError("the model server recorded no first text for this run")
    if sent[0] < all_opened:  # a subscriber that was not there yet would count its replay as delivery
        raise RuntimeError(f"the first token came {all_opened - sent[0]:.2f} s before all {subscribers} "
                           "subscribers were connected; raise the scenario's first_token_delay_ms")
    return [(first - sent[0]) * 1000 for first in firsts], [d * 1000 for d in deliveries]


async def _agent_start(api_url: str, key: str, agent_id: str, http: httpx.AsyncClient) -> float:
    """POST a run, open its websocket with the returned id, until its first event: milliseconds."""
    started = time.perf_counter()
    response = await http.post("/v1/runs", json={"agent_id": agent_id, "input": f"go {uuid.uuid4().hex}"})
    response.raise_for_status()
    url = api_url.replace("http://", "ws://") + f"/v1/runs/{response.json()['id']}/stream"
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=30) as ws:
        async for raw in ws:
            if json.loads(raw).get("seq"):
                return (time.perf_counter() - started) * 1000
    raise RuntimeError("the stream closed before the run's first event")


async def _measure(api_url: str, model_url: str, key: str, samples: int, crowd_samples: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        await http.post(f"{model_url}/admin/scenarios", json={"name": SCENARIO, "turns": [
            {"content": WORDS, "first_token_delay_ms": 300}]})
        spec = {"instructions": "x", "models": [f"openai/{SCENARIO}"], "graph": {
            "entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"},
                                         {"id": "end", "kind": "end"}]}}
        agent = (await http.post("/v1/agents", json={"name": f"bench-stream-{TOKEN}", "spec": spec})).json()
        figures: dict[str, float] = {}
        await _sample(api_url, model_url, key, agent["id"], 1, http)  # warm-up: connections, caches, imports
        single_ttft, single_delivery = [], []
        for _ in range(samples):
            ttft, delivery = await _sample(api_url, model_url, key, agent["id"], 1, http)
            single_ttft += ttft
            single_delivery += delivery
        figures.update(ttft_added_p50_ms=percentile(single_ttft, 50), ttft_added_p99_ms=percentile(single_ttft, 99),
                       event_delivery_p50_ms=percentile(single_delivery, 50),
                       event_delivery_p99_ms=percentile(single_delivery, 99))
        crowd_ttft, crowd_delivery = [], []
        await http.post(f"{model_url}/admin/scenarios", json={"name": SCENARIO, "turns": [
            {"content": WORDS, "first_token_delay_ms": 5000}]})
        for _ in range(crowd_samples):
            ttft, delivery = await _sample(api_url, model_url, key, agent["id"], 200, http)
            crowd_ttft += ttft
            crowd_delivery += delivery
        figures.update(ttft_added_p50_ms_200_subscribers=percentile(crowd_ttft, 50),
                       ttft_added_p99_ms_200_subscribers=percentile(crowd_ttft, 99),
                       event_delivery_p99_ms_200_subscribers=percentile(crowd_delivery, 99))
        await http.post(f"{model_url}/admin/scenarios", json={"name": SCENARIO, "turns": [{"content": "ok"}]})
        starts = [await _agent_start(api_url, key, agent["id"], http) for _ in range(samples)]
        figures.update(agent_start_ws_p50_ms=percentile(starts, 50), agent_start_ws_p99_ms=percentile(starts, 99))
        return figures


def bench_streaming(*, key: str, samples: int, crowd_samples: int) -> dict[str, float]:
    with stack() as (api_url, model_url):
        return asyncio.run(_measure(api_url, model_url, key, samples, crowd_samples))
