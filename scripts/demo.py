#!/usr/bin/env python
"""`make demo`: the platform end to end, as a tenant's app and a platform operator see it.

Starts Daphne (HTTP + websockets) and a Celery worker in the background, then, over the public API:
provisions the demo tenant (or reuses it: nothing of a tenant is lost between runs), calls the API
with the tenant's key, sends a ping that a real worker answers from the tenant's schema while a
websocket client watches it live, shows the audit log and what another tenant's key can see, and
stops what it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOGS = REPO / ".data" / "demo-logs"
DEMO_SLUG = "demo"
OTHER_SLUG = "demo-neighbour"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


def free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]


def start(name: str, args: list[str]) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "wb")
    return subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def wait_ready(http: httpx.Client, processes: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise SystemExit(f"{name} exited early; see {LOGS / (name + '.log')}")
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"Daphne did not become ready in 60 s; see {LOGS}")


def operator_key() -> str:
    """A fresh operator key for this run; the previous run's is revoked."""
    result = subprocess.run([sys.executable, "manage.py", "operator_key_create", "--name", "make demo", "--replace"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def tenant_key(http: httpx.Client, operator: str, slug: str, name: str) -> str:
    """Provision the tenant on the first run; on later runs issue a new key and revoke the old demo keys."""
    auth = {"Authorization": f"Bearer {operator}"}
    existing = http.get(f"/v1/platform/tenants/{slug}", headers=auth)
    if existing.status_code == 404:
        created = http.post("/v1/platform/tenants", headers=auth,
                            json={"name": name, "slug": slug, "sla_tier": "professional"})
        created.raise_for_status()
        tenant = created.json()["tenant"]
        say(f"provisioned tenant {tenant['slug']!r}: schema {tenant['schema_name']}, tier {tenant['sla_tier']}")
        return created.json()["admin_key"]["secret"]
    existing.raise_for_status()
    tenant = existing.json()
    say(f"tenant {tenant['slug']!r} already exists (schema {tenant['schema_name']}): its data is kept")
    issued = http.post(f"/v1/platform/tenants/{slug}/api-keys", headers=auth,
                       json={"name": "make demo", "scopes": ["tenant:read", "keys:read", "keys:write", "audit:read",
                                                             "pings:read", "pings:write"]})
    issued.raise_for_status()
    key = issued.json()["secret"]
    keys = http.get("/v1/api-keys", params={"limit": 500}, headers={"Authorization": f"Bearer {key}"}).json()
    for old in keys["results"]:
        if old["name"] == "make demo" and old["is_active"] and old["id"] != issued.json()["id"]:
            http.post(f"/v1/api-keys/{old['id']}/revoke", headers={"Authorization": f"Bearer {key}"})
    return key


async def watch_ping(ws_url: str, key: str, http: httpx.Client) -> dict:
    """Send a ping over HTTP and watch it on the websocket until the worker has answered it."""
    headers = {"Authorization": f"Bearer {key}"}
    created = http.post("/v1/pings", json={"message": "hello from make demo"}, headers=headers)
    created.raise_for_status()
    ping = created.json()
    say(f"POST /v1/pings -> {created.status_code}, ping {ping['id']} is {ping['status']}")
    async with connect(f"{ws_url}/v1/pings/{ping['id']}/events", additional_headers=headers) as ws:
        async with asyncio.timeout(30):
            async for raw in ws:
                event = json.loads(raw)
                say(f"websocket <- {event['type']}: status={event['ping']['status']}"
                    + (f", answered by {event['ping']['worker']} in schema {event['ping']['observed_schema']}"
                       if event["ping"]["status"] == "completed" else ""))
                ping = event["ping"]
    return ping


def main() -> None:
    port = free_port(int(os.environ.get("DEMO_PORT", "8000")))
    base = f"http://127.0.0.1:{port}"
    step("starting Daphne (HTTP + websockets) and a Celery worker")
    processes = {
        "daphne": start("daphne", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port),
                                   "control_plane.asgi:application"]),
        "worker": start("worker", [str(BIN / "celery"), "-A", "control_plane", "worker", "--loglevel=INFO",
                                   "--concurrency=1", "--hostname=demo-worker@%h", "--without-gossip"]),
    }
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            wait_ready(http, processes)
            say(f"GET /readyz -> {http.get('/readyz').json()['checks']}")

            step("platform operator: provision the demo tenant")
            operator = operator_key()
            key = tenant_key(http, operator, DEMO_SLUG, "Demo Inc.")
            say(f"tenant API key (shown once): {key[:17]}...")

            step("tenant app: an authenticated call, answered from the tenant's schema")
            me = http.get("/v1/tenant", headers={"Authorization": f"Bearer {key}"})
            say(f"GET /v1/tenant -> {me.status_code} {me.json()['name']} ({me.json()['schema_name']})")

            step("data plane: a Celery task executed by a real worker, streamed over a websocket")
            ping = asyncio.run(watch_ping(base.replace("http://", "ws://"), key, http))
            if ping["status"] != "completed":
                raise SystemExit("the worker did not answer the ping; see .data/demo-logs/worker.log")
            pings = http.get("/v1/pings", headers={"Authorization": f"Bearer {key}"}).json()
            say(f"the demo tenant has {pings['count']} pings in its schema, kept across runs")

            step("audit log (latest 5)")
            events = http.get("/v1/audit-events", params={"limit": 5},
                              headers={"Authorization": f"Bearer {key}"}).json()
            for event in events["results"]:
                say(f"{event['occurred_at']}  {event['action']:<18} by {event['actor_kind']}")

            step("isolation: another tenant's key cannot see the demo tenant's data")
            other = tenant_key(http, operator, OTHER_SLUG, "Neighbour Ltd.")
            peek = http.get(f"/v1/pings/{ping['id']}", headers={"Authorization": f"Bearer {other}"})
            say(f"GET /v1/pings/{ping['id']} with the neighbour's key -> {peek.status_code} {peek.json()['code']}")
            say(f"API reference: {base}/v1/docs (while running)")
        step("demo complete")
    finally:
        for process in processes.values():
            stop(process)
        say("stopped Daphne and the worker (Postgres and Redis keep running; `make stop` stops them)")


if __name__ == "__main__":
    main()
