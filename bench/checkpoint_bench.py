"""Checkpoint figures: write latency against a plain INSERT, read-back, bytes per step, and LangGraph's
PostgresSaver on the same database as the baseline.

Every write goes through the real adapter the way RunStepper._commit commits a model step: the events the
executor makes for it (_step_events: the reply's preview, its usage, the checkpoint marker), the model call's
journal entry (_prepare, as a fresh step records its call with the commit), and the one
statement in autocommit, its own transaction (a step's commit joins a transaction only when an approval is
recorded with it). The floor is a plain INSERT of the same bytes, also its own transaction; the same INSERT
as BEGIN, INSERT, COMMIT (three round trips) is reported beside it. The floors and LangGraph run interleaved
with ours, step for step on the same conversation, in a shuffled order, so a noisy neighbour (LangGraph's own
large puts among them) hits them all alike.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import psycopg
from django.db import connection, transaction
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.postgres import PostgresSaver

from bench.measure import percentile, prose, rows_bytes
from data_plane.runtime.adapters.checkpoints import CommitResult, JournalEntry, PostgresCheckpointStore
from data_plane.executor import _prepare, _step_events
from data_plane.runtime.core.machine import CallModel
from data_plane.runtime.core.messages import Message, Usage
from data_plane.runtime.core.ports import ModelReply, ModelRequest
from data_plane.runtime.core.state import RunState
from tenants.db_roles import owner_context

MESSAGE_BYTES = 2048
SEED_MESSAGES = 25  # 25 x 2 KB: the ~50 KB conversation the write figures start from
SHUFFLE_SEED = 20261125  # the writes' order each step: shuffled, the same in every run
USAGE = Usage(model="bench/zero", input_tokens=10, output_tokens=5)


def conversation_message(index: int) -> Message:
    role = "user" if index % 2 else "assistant"
    return Message(role=role, content=prose(MESSAGE_BYTES, seed=index))


def step_events(run_id: UUID, previous: RunState, state: RunState, checkpoint_id: UUID, step: int
                ) -> tuple[list[dict[str, Any]], JournalEntry]:
    """The events the executor commits for a model step that appended the reply (its own _step_events), and the
    model call's journal entry the same commit records (its own _prepare; a fresh step's call)."""
    reply = state.messages[-1]
    context = {"tokens": 3 + len(state.messages) * 520, "budget": 126_000, "summarised_messages": 0,
               "messages": len(previous.messages), "truncated_messages": 0}  # what fit() reports
    command = CallModel(key="llm", node_id="llm",
                        request=ModelRequest(models=("bench/zero",), messages=previous.messages,
                                             metadata={"context": context}))
    result = ModelReply(message=reply, usage=USAGE)
    entry = _prepare(run_id, step - 1, command).entry(step - 1, command.key, result, USAGE, time.monotonic(),
                                                      inline=True)
    return _step_events([command], {command.key: result}, step, checkpoint_id, previous, state, "running"), entry


@dataclass(frozen=True)
class PreparedStep:
    run: Callable[[], None]
    step: int
    state: RunState
    message: Message
    events: list[dict[str, Any]]
    journal: JournalEntry

    def payload(self) -> str:
        """The bytes this step writes, as one JSON document: control, appended message, values, events and the
        model call's journal entry."""
        return json.dumps({"control": self.state.control_json(), "messages": [self.message.to_json()],
                           "values": {"counter": self.step}, "events": self.events,
                           "effects": [self.journal.to_json(now=self.journal.finished)]}, separators=(",", ":"))


@dataclass
class OurConversation:
    """A run of ours, advanced one commit at a time through the real store."""

    store: PostgresCheckpointStore
    run_id: UUID
    version: int
    head_id: UUID
    step: int
    state: RunState
    last: CommitResult | None = None

    def prepare(self, message: Message) -> PreparedStep:
        """Prepare the next step (appending ``message``); its ``run`` is the timed part: commit and COMMIT."""
        step = self.step + 1
        new_state = self.state.evolve(messages=self.state.messages + (message,),
                                      values={**self.state.values, "counter": step}, steps=self.state.steps + 1)
        checkpoint_id = uuid.uuid4()
        events, journal = step_events(self.run_id, self.state, new_state, checkpoint_id, step)

        def timed() -> None:  # in autocommit, as RunStepper._commit commits a step that no other row joins
            result = self.store.commit(
                run_id=self.run_id, expected_version=self.version, checkpoint_id=checkpoint_id,
                parent_id=self.head_id, step=step, previous=self.state, state=new_state, run_status="running",
                events=events, release_lease=True, effects=[journal])
            self.version, self.head_id, self.step, self.state = result.version, checkpoint_id, step, new_state
            self.last = result

        return PreparedStep(run=timed, step=step, state=new_state, message=message, events=events, journal=journal)

    def commit_many(self, messages: list[Message]) -> None:
        """One step appending several messages (the seed of the 50 KB conversation)."""
        step = self.step + 1
        new_state = self.state.evolve(messages=self.state.messages + tuple(messages), steps=self.state.steps + 1)
        checkpoint_id = uuid.uuid4()
        with transaction.atomic():
            result = self.store.commit(
                run_id=self.run_id, expected_version=self.version, checkpoint_id=checkpoint_id,
                parent_id=self.head_id, step=step, previous=self.state, state=new_state, run_status="running",
                events=[{"type": "checkpoint.committed", "data": {"checkpoint_id": str(checkpoint_id), "step": step}}],
                release_lease=True)
        self.version, self.head_id, self.step, self.state = result.version, checkpoint_id, step, new_state


@dataclass
class LangGraphThread:
    """One LangGraph thread written with PostgresSaver.put, as its Pregel loop would: the messages channel
    (a plain list of message dicts, the cheapest thing for its serializer) gets a new version each step."""

    saver: PostgresSaver
    thread_id: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex}")
    messages: list[dict[str, Any]] = field(default_factory=list)
    version: str | None = None
    checkpoint_id: str | None = None
    step: int = -1

    def put(self, appended: list[dict[str, Any]]) -> Callable[[], None]:
        """Prepare the next put; return the timed part (serialization and the SQL, autocommit)."""
        self.messages.extend(appended)
        self.step += 1
        new_version = self.saver.get_next_version(self.version, None)
        checkpoint = {
            **empty_checkpoint(), "id": str(uuid6(clock_seq=self.step)), "ts": datetime.now(timezone.utc).isoformat(),
            "channel_values": {"messages": self.messages}, "channel_versions": {"messages": new_version},
            "versions_seen": {"llm": {"messages": self.version}} if self.version else {},
            "updated_channels": ["messages"],
        }
        config = {"configurable": {"thread_id": self.thread_id, "checkpoint_ns": "",
                                   **({"checkpoint_id": self.checkpoint_id} if self.checkpoint_id else {})}}
        metadata = {"source": "loop", "step": self.step, "parents": {}}

        def timed() -> None:
            self.saver.put(config, checkpoint, metadata, {"messages": new_version})  # type: ignore[arg-type]
            self.version, self.checkpoint_id = new_version, checkpoint["id"]

        return timed

    def last_put_bytes(self, cursor: psycopg.Cursor[Any]) -> int:
        """Bytes of the rows the last put wrote: the checkpoint row and the messages blob of its version."""
        cursor.execute(
            """SELECT
  (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM checkpoints c
   WHERE c.thread_id = %(t)s AND c.checkpoint_ns = '' AND c.checkpoint_id = %(c)s)
+ (SELECT coalesce(sum(pg_column_size(b.*)), 0) FROM checkpoint_blobs b
   WHERE b.thread_id = %(t)s AND b.checkpoint_ns = '' AND b.channel = 'messages' AND b.version = %(v)s) AS bytes""",
            {"t": self.thread_id, "c": self.checkpoint_id, "v": self.version})
        row = cursor.fetchone()
        return int(row["bytes"] if isinstance(row, dict) else row[0])


def _timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def _new_conversation(start_run: Callable[[], Any], store: PostgresCheckpointStore) -> OurConversation:
    run = start_run()
    loaded = store.load(run.head_id)
    return OurConversation(store=store, run_id=run.id, version=run.version, head_id=loaded.id, step=loaded.step,
                           state=loaded.state)


def bench_write(*, schema: str, start_run: Callable[[], Any], database_url: str, saver: PostgresSaver,
                steps: int, warmup: int) -> dict[str, float]:
    """checkpoint_write_p50/p99, insert_floor_p50 (and the same INSERT through Django's connection),
    langgraph_put_p50/p99, and two other designs' commits (design_one_row_p50, design_row_alone_p50): one ~50 KB
    conversation, each step appending a 2 KB message."""
    store = PostgresCheckpointStore(schema=schema, connection=connection)
    ours = _new_conversation(start_run, store)
    seed = [conversation_message(i) for i in range(1, SEED_MESSAGES + 1)]
    ours.commit_many(seed)
    theirs = LangGraphThread(saver=saver)
    theirs.put([m.to_json() for m in ours.state.messages])()

    table = f'"{schema}".bench_insert_floor'
    with owner_context(), connection.cursor() as cursor:  # DDL: the schema's owner
        cursor.execute(f"CREATE TABLE {table} (id bigserial, payload jsonb)")
    insert_sql = f"INSERT INTO {table} (payload) VALUES (%s::jsonb)"
    # plain psycopg connections, their statements prepared as ours are (the settings' prepare_threshold)
    floor = psycopg.connect(database_url, autocommit=True, prepare_threshold=2)
    floor_txn = psycopg.connect(database_url, autocommit=False, prepare_threshold=2)

    def floor_insert(payload: str) -> Callable[[], None]:
        def timed() -> None:  # INSERT, its own transaction: one round trip, committed when it returns
            floor.execute(insert_sql, [payload])
        return timed

    def floor_txn_insert(payload: str) -> Callable[[], None]:
        def timed() -> None:  # BEGIN, INSERT, COMMIT
            with floor_txn.cursor() as cursor:
                cursor.execute(insert_sql, [payload])
            floor_txn.commit()
        return timed

    def django_insert(payload: str) -> Callable[[], None]:
        def timed() -> None:
            with connection.cursor() as cursor:  # the connection and autocommit our store's commit uses
                cursor.execute(insert_sql, [payload])
        return timed

    # Two storage designs, measured beside ours as diagnostics (what a step would cost if its commit were one row
    # holding everything it writes): with the run's fenced update, as ours has (on a run of its own), and the row
    # alone, fenced by its unique (run, step) key instead of the run's row (no run row: a made-up run id).
    design_table = f'"{schema}".bench_design_step'
    with owner_context(), connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {design_table} (id uuid PRIMARY KEY, run_id uuid NOT NULL, step int NOT NULL, "
                       "parent_id uuid, payload jsonb NOT NULL, created_at timestamptz NOT NULL, "
                       "UNIQUE (run_id, step)) WITH (toast_tuple_target = 8160)")
    design_insert = (f"INSERT INTO {design_table} (id, run_id, step, parent_id, payload, created_at) "
                     "SELECT %(id)s, %(run)s, %(step)s, %(parent)s, %(payload)s::jsonb, now()")
    one_row_sql = (
        f'WITH fence AS (UPDATE "{schema}".data_plane_run SET version = version + 1, step = %(step)s, '
        "head_id = %(id)s, status = 'running', event_seq = event_seq + %(events)s, updated_at = now(), "
        "lease_owner = '', lease_expires_at = NULL, driver_step = %(step)s "
        f"WHERE id = %(run)s AND version = %(version)s RETURNING version), step AS ({design_insert} FROM fence) "
        "SELECT version FROM fence")
    design_run = start_run()
    one_row = {"run": design_run.id, "version": design_run.version, "step": 0, "parent": design_run.head_id}
    alone = {"run": uuid.uuid4(), "step": 0, "parent": None}

    # Like ours, each serializes the step (its payload()) in the timed part; the floor is given the bytes.
    def one_row_commit(prepared: PreparedStep) -> Callable[[], None]:
        def timed() -> None:
            step, checkpoint_id = one_row["step"] + 1, uuid.uuid4()
            with connection.cursor() as cursor:  # as ours: Django's connection, autocommit
                cursor.execute(one_row_sql, {"id": checkpoint_id, "run": one_row["run"], "step": step,
                                             "parent": one_row["parent"], "payload": prepared.payload(),
                                             "events": len(prepared.events), "version": one_row["version"]})
                one_row.update(version=cursor.fetchone()[0], step=step, parent=checkpoint_id)
        return timed

    def row_alone_commit(prepared: PreparedStep) -> Callable[[], None]:
        def timed() -> None:
            step, checkpoint_id = alone["step"] + 1, uuid.uuid4()
            with connection.cursor() as cursor:
                cursor.execute(design_insert, {"id": checkpoint_id, "run": alone["run"], "step": step,
                                               "parent": alone["parent"], "payload": prepared.payload()})
            alone.update(step=step, parent=checkpoint_id)
        return timed

    samples: dict[str, list[float]] = {"ours": [], "floor": [], "floor_txn": [], "django": [], "langgraph": [],
                                       "one_row": [], "row_alone": []}
    order = random.Random(SHUFFLE_SEED)
    try:
        for index in range(warmup + steps):
            message = conversation_message(1000 + index)
            prepared = ours.prepare(message)
            payload = prepared.payload()  # the floor writes the same bytes this step writes
            actions = [("ours", prepared.run), ("floor", floor_insert(payload)),
                       ("floor_txn", floor_txn_insert(payload)), ("django", django_insert(payload)),
                       ("langgraph", theirs.put([message.to_json()])),
                       ("one_row", one_row_commit(prepared)), ("row_alone", row_alone_commit(prepared))]
            # A fresh order each step: each write follows each other one equally often. Rotating a fixed order
            # does not do that (ours always followed LangGraph's put, by far the largest write, and paid for it:
            # 0.1 to 0.4 ms a commit, measured with the order shuffled against rotated).
            order.shuffle(actions)
            for name, action in actions:
                elapsed = _timed(action)
                if index >= warmup:
                    samples[name].append(elapsed)
    finally:
        floor.close()
        floor_txn.close()
    return {
        "checkpoint_write_p50_ms": percentile(samples["ours"], 50),
        "checkpoint_write_p99_ms": percentile(samples["ours"], 99),
        "insert_floor_p50_ms": percentile(samples["floor"], 50),
        "insert_floor_txn_p50_ms": percentile(samples["floor_txn"], 50),
        "insert_floor_django_p50_ms": percentile(samples["django"], 50),
        "langgraph_put_p50_ms": percentile(samples["langgraph"], 50),
        "langgraph_put_p99_ms": percentile(samples["langgraph"], 99),
        "design_one_row_p50_ms": percentile(samples["one_row"], 50),
        "design_row_alone_p50_ms": percentile(samples["row_alone"], 50),
    }


def bench_long_conversation(*, schema: str, start_run: Callable[[], Any], saver: PostgresSaver,
                            lg_connection: psycopg.Connection[Any], steps: int, reads: int) -> dict[str, float]:
    """A conversation of ``steps`` steps from one user message, 2 KB appended per step, ours and
    LangGraph's side by side: bytes written at step 10 and at the last step, and reading the last state."""
    store = PostgresCheckpointStore(schema=schema, connection=connection)
    ours = _new_conversation(start_run, store)
    theirs = LangGraphThread(saver=saver)
    theirs.put([m.to_json() for m in ours.state.messages])()
    figures: dict[str, float] = {}
    for index in range(1, steps + 1):
        message = conversation_message(5000 + index)
        ours.prepare(message).run()
        theirs.put([message.to_json()])()
        if ours.step in (10, steps):
            assert ours.last is not None
            with connection.cursor() as cursor:
                figures[f"checkpoint_bytes_step{ours.step}"] = rows_bytes(cursor, schema, ours.run_id, ours.step)
            with lg_connection.cursor() as lg_cursor:
                figures[f"langgraph_bytes_step{theirs.step}"] = theirs.last_put_bytes(lg_cursor)
    assert ours.step == steps == theirs.step

    head_id, expected = ours.head_id, len(ours.state.messages)
    read_samples = []
    for index in range(reads + 5):
        started = time.perf_counter()
        loaded = store.load(head_id)
        elapsed = (time.perf_counter() - started) * 1000
        assert len(loaded.state.messages) == expected
        if index >= 5:
            read_samples.append(elapsed)
    figures["checkpoint_read_p50_ms"] = percentile(read_samples, 50)

    config = {"configurable": {"thread_id": theirs.thread_id, "checkpoint_ns": "",
                               "checkpoint_id": theirs.checkpoint_id}}
    lg_samples = []
    for index in range(reads + 5):
        started = time.perf_counter()
        found = saver.get_tuple(config)  # type: ignore[arg-type]
        elapsed = (time.perf_counter() - started) * 1000
        assert found is not None and len(found.checkpoint["channel_values"]["messages"]) == expected
        if index >= 5:
            lg_samples.append(elapsed)
    figures["langgraph_read_p50_ms"] = percentile(lg_samples, 50)
    return figures
