#!/usr/bin/env python
"""The audit chain's cost: `.venv/bin/python bench/audit_bench.py` (local stack up, migrated).

In a throw-away tenant (removed at the end whatever happens), interleaved in batches so a noisy neighbour
hits both sides alike:
- insert_autocommit: one event per transaction, as most services write them. `chained`: the same INSERT
  Django sends into the audit table (trigger: anchor lock, canonical JSON, SHA-256, anchor update);
  `plain`: into a twin table without triggers (LIKE audit_auditevent INCLUDING ALL, seq given);
  `service`: audit_event_record itself (ORM, chained).
- insert_in_transaction: 1000 inserts in one transaction: the trigger's own CPU cost, no commit in it.
- lock_hold: a step-like transaction (a row update, then two audit events, as RunStepper._commit writes
  tool.call and run.completed last), timed from the first audit insert to the end of COMMIT: how long the
  tenant's chain lock is held.
- writers: events/s of 4 threads writing to one tenant (serialised by its chain lock) vs 1 thread.
Knob: BENCH_AUDIT_EVENTS (1000).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.base")

import django  # noqa: E402

django.setup()

from django.db import connection, connections, transaction  # noqa: E402
from django_tenants.utils import schema_context  # noqa: E402

from bench.measure import percentile  # noqa: E402
from common.actors import Actor  # noqa: E402
from control_plane.audit.services import audit_event_record  # noqa: E402
from tenants import services as tenant_services  # noqa: E402

EVENTS = int(os.environ.get("BENCH_AUDIT_EVENTS", "1000"))
BATCH = 50
ACTOR = Actor(kind="system", id="bench")
DATA = {"run_id": str(uuid.uuid4()), "step": 3, "tool": "calculator", "server": None, "status": "ok",
        "arguments": {"expression": "2 + 2 * 10", "precision": 2}, "latency_ms": 1.25, "result_bytes": 2}
COLUMNS = "id, occurred_at, actor_kind, actor_id, action, target_type, target_id, data"
INSERT_CHAINED = (f"INSERT INTO audit_auditevent ({COLUMNS}, seq, prev_hash, hash) VALUES "
                  f"(%s, now(), 'system', 'bench', 'tool.call', 'run', %s, %s::jsonb, DEFAULT, DEFAULT, DEFAULT) "
                  f"RETURNING seq, prev_hash, hash")
INSERT_PLAIN = (f"INSERT INTO audit_plain ({COLUMNS}, seq, prev_hash, hash) VALUES "
                f"(%s, now(), 'system', 'bench', 'tool.call', 'run', %s, %s::jsonb, %s, '', '') "
                f"RETURNING seq, prev_hash, hash")


def micros(samples: list[float]) -> dict[str, float]:
    return {"p50_us": round(percentile(samples, 50) * 1e6, 1), "p99_us": round(percentile(samples, 99) * 1e6, 1),
            "mean_us": round(sum(samples) / len(samples) * 1e6, 1)}


def main() -> None:
    provisioned = tenant_services.tenant_provision(name="Audit bench (throw-away)",
                                                   slug=f"auditbench-{uuid.uuid4().hex[:8]}", sla_tier="standard",
                                                   domains=[], actor=ACTOR)
    tenant = provisioned.tenant
    try:
        with schema_context(tenant.schema_name):
            results = measure(tenant)
    finally:
        connections.close_all()
        tenant_services.tenant_purge(tenant=tenant)
    print(json.dumps(results, indent=2))


def measure(tenant) -> dict[str, object]:
    data = json.dumps(DATA)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE audit_plain (LIKE audit_auditevent INCLUDING ALL)")
    chained, plain, service = [], [], []
    plain_seq = 0
    with connection.cursor() as cursor:
        for _ in range(EVENTS // BATCH):
            for _ in range(BATCH):
                started = time.perf_counter()
                cursor.execute(INSERT_CHAINED, [uuid.uuid4(), "r", data])
                cursor.fetchone()
                chained.append(time.perf_counter() - started)
            for _ in range(BATCH):
                plain_seq += 1
                started = time.perf_counter()
                cursor.execute(INSERT_PLAIN, [uuid.uuid4(), "r", data, plain_seq])
                cursor.fetchone()
                plain.append(time.perf_counter() - started)
            for _ in range(BATCH):
                started = time.perf_counter()
                audit_event_record(tenant=tenant, actor=ACTOR, action="tool.call", target_type="run",
                                   target_id="r", data=DATA)
                service.append(time.perf_counter() - started)
    in_transaction = {}
    for name, statement in (("chained", INSERT_CHAINED), ("plain", INSERT_PLAIN)):
        with transaction.atomic(), connection.cursor() as cursor:
            started = time.perf_counter()
            for _ in range(EVENTS):
                plain_seq += 1
                cursor.execute(statement, [uuid.uuid4(), "r", data] + ([plain_seq] if name == "plain" else []))
                cursor.fetchone()
            in_transaction[name] = round((time.perf_counter() - started) / EVENTS * 1e6, 1)
    holds = []
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_run (id int PRIMARY KEY, version int)")
        cursor.execute("INSERT INTO bench_run VALUES (1, 0)")
    for _ in range(200):
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("UPDATE bench_run SET version = version + 1 WHERE id = 1")
            started = time.perf_counter()
            audit_event_record(tenant=tenant, actor=ACTOR, action="tool.call", target_type="run", target_id="r",
                               data=DATA)
            audit_event_record(tenant=tenant, actor=ACTOR, action="run.completed", target_type="run",
                               target_id="r", data={"step": 3})
        holds.append(time.perf_counter() - started)
    writers = {str(threads): round(events_per_second(tenant, threads), 1) for threads in (1, 4)}
    return {
        "events": EVENTS,
        "insert_autocommit": {"chained": micros(chained), "plain": micros(plain), "service": micros(service)},
        "insert_in_transaction_mean_us": in_transaction,
        "lock_hold_step_like": micros(holds),
        "events_per_second_one_tenant_by_threads": writers,
    }


def events_per_second(tenant, threads: int) -> float:
    each = EVENTS // threads
    barrier = threading.Barrier(threads + 1)

    def write() -> None:
        with schema_context(tenant.schema_name):
            barrier.wait()
            for _ in range(each):
                audit_event_record(tenant=tenant, actor=ACTOR, action="tool.call", target_type="run",
                                   target_id="r", data=DATA)
        connections.close_all()

    pool = [threading.Thread(target=write) for _ in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    return each * threads / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
