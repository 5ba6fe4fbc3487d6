"""The Postgres checkpoint store: fenced single-writer commits, incremental bytes, lineage reads."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from data_plane import selectors
from data_plane.models import AgentVersion, Agent, Checkpoint, Run, RunEvent, RunEventRecord
from data_plane.runtime.adapters.checkpoints import CheckpointCorrupt, Fenced, PostgresCheckpointStore
from data_plane.runtime.core.messages import Message, ToolCall
from data_plane.runtime.core.state import RunState, Status


@pytest.fixture(autouse=True)
def _in_tenant_a(tenant_a):
    """The store runs in its tenant's context, as in a worker: there the connection has the tenant's database
    role, without which its schema is refused (tests/test_database_roles.py)."""
    with schema_context(tenant_a.schema):
        yield


def new_run(schema: str, **fields) -> Run:
    with schema_context(schema):
        agent = Agent.objects.create(name=f"a-{uuid.uuid4().hex[:8]}")
        version = AgentVersion.objects.create(agent=agent, version=1, spec={})
        return Run.objects.create(agent_version=version, input="hi", **fields)


def state_with(messages: int, **values) -> RunState:
    return RunState(status=Status.RUNNING, messages=tuple(Message(role="user", content=f"m{i}") for i in range(messages)),
                    values=values, frontier=("a",))


def commit(store, run, *, version, step, previous, state, parent=None, events=()):
    checkpoint_id = uuid.uuid4()
    result = store.commit(run_id=run.id, expected_version=version, checkpoint_id=checkpoint_id, parent_id=parent,
                          step=step, previous=previous, state=state, run_status="running", events=list(events))
    return checkpoint_id, result


def test_commits_are_fenced_to_one_writer(tenant_a):
    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    run = new_run(tenant_a.schema)
    first, result = commit(store, run, version=0, step=0, previous=None, state=state_with(1))
    assert result.version == 1
    # a second writer that read version 0 too is refused, and wrote nothing
    with pytest.raises(Fenced):
        commit(store, run, version=0, step=1, previous=state_with(1), state=state_with(2))
    with schema_context(tenant_a.schema):
        assert [json.loads(c.messages) for c in Checkpoint.objects.filter(run=run)] == [
            [{"role": "user", "content": "m0"}]]
        run.refresh_from_db()
    assert (run.version, run.step, run.head_id) == (1, 0, first)


def test_each_step_writes_only_what_changed(tenant_a):
    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    run = new_run(tenant_a.schema)
    previous, parent, version = None, None, 0
    for step in range(30):
        state = state_with(step + 1, counter=step // 10, fixed="same")
        parent, result = commit(store, run, version=version, step=step, previous=previous, state=state, parent=parent,
                                events=[{"type": "t", "data": {"step": step}}])
        previous, version = state, result.version
    with schema_context(tenant_a.schema):
        rows = list(Checkpoint.objects.filter(run=run).order_by("step"))
    # each step's row holds the one message it appended, never the conversation before it
    assert [[m["content"] for m in json.loads(row.messages)] for row in rows] == [[f"m{i}"] for i in range(30)]
    assert [row.first_seq for row in rows] == list(range(30))
    # and a value only when it changed
    assert [(row.step, json.loads(row.changed_values)) for row in rows if row.changed_values] == [
        (0, {"counter": 0, "fixed": "same"}), (10, {"counter": 1}), (20, {"counter": 2})]
    with schema_context(tenant_a.schema):
        assert list(RunEvent.objects.filter(run=run).values_list("seq", flat=True)) == list(range(1, 31))
    loaded = store.load(parent)
    assert loaded.state == previous


def test_a_commits_events_are_in_its_checkpoints_row_and_read_in_order_with_those_recorded_alone(tenant_a):
    """A commit's events are stored in its checkpoint's row; an event no commit makes is recorded on its own. The
    run's events read as one log, numbered in order, from any point, a commit's events included."""
    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    run = new_run(tenant_a.schema)
    first = state_with(1)
    _, result = commit(store, run, version=0, step=0, previous=None, state=first,
                       events=[{"type": "a", "data": {"n": 1}}, {"type": "b", "data": {"n": 2}},
                               {"type": "c", "data": {"n": 3}}])
    with schema_context(tenant_a.schema):  # as a pause records its event: on its own, numbered by the run
        Run.objects.filter(id=run.id).update(event_seq=4)
        RunEventRecord.objects.create(run=run, seq=4, type="alone", data={"n": 4})
    commit(store, run, version=result.version, step=1, previous=first, state=state_with(2),
           events=[{"type": "d", "data": {"n": 5}}, {"type": "e", "data": {"n": 6}}])
    with schema_context(tenant_a.schema):
        assert list(RunEventRecord.objects.filter(run=run).values_list("seq", flat=True)) == [4]
        assert [(c.first_event_seq, c.last_event_seq, [e["type"] for e in json.loads(c.events)])
                for c in Checkpoint.objects.filter(run=run).order_by("step")] == [(1, 3, ["a", "b", "c"]),
                                                                                  (5, 6, ["d", "e"])]
        for after in range(7):  # from any point, inside a commit's events too
            page = selectors.run_event_page(tenant_schema=tenant_a.schema, run_id=run.id, after_seq=after, limit=10)
            assert [(e["seq"], e["type"], e["data"]["n"]) for e in page] == [
                (n, t, n) for n, t in [(1, "a"), (2, "b"), (3, "c"), (4, "alone"), (5, "d"), (6, "e")] if n > after]
            short = selectors.run_event_page(tenant_schema=tenant_a.schema, run_id=run.id, after_seq=after,
                                             limit=2)
            assert [e["seq"] for e in short] == [n for n in range(after + 1, min(after + 2, 6) + 1)]
        assert selectors.run_event_last_seq(tenant_schema=tenant_a.schema, run_id=run.id, type="b") == 2
        assert selectors.run_event_last_seq(tenant_schema=tenant_a.schema, run_id=run.id, up_to=5) == 5


def test_the_schema_is_named_in_the_sql_whatever_the_search_path(tenant_a, tenant_b):
    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    run = new_run(tenant_a.schema)
    # a pooled connection whose search_path went elsewhere (behind PgBouncer a session's setting is not ours)
    with connection.cursor() as cursor:
        cursor.execute(f'SET search_path = "{tenant_b.schema}", public')
        checkpoint_id, _ = commit(store, run, version=0, step=0, previous=None, state=state_with(2, k="v"))
        assert store.load(checkpoint_id).state.values == {"k": "v"}
        cursor.execute("SELECT current_setting('search_path')")
        assert cursor.fetchone()[0] == f"{tenant_b.schema}, public"
    connection.forget_session_state()  # the backend sets its own again on the next cursor
    with schema_context(tenant_b.schema):
        assert not Checkpoint.objects.filter(id=checkpoint_id).exists()
    with schema_context(tenant_a.schema):
        assert Checkpoint.objects.filter(id=checkpoint_id).exists()


def test_a_fork_reads_its_source_history_and_its_own_changes(tenant_a):
    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    source = new_run(tenant_a.schema)
    s0 = state_with(2, topic="otters")
    c0, r0 = commit(store, source, version=0, step=0, previous=None, state=s0)
    s1 = state_with(3, topic="otters", extra=1)
    c1, _ = commit(store, source, version=r0.version, step=1, previous=s0, state=s1, parent=c0)
    # fork from step 0 with a patched value and one more message
    with schema_context(tenant_a.schema):
        fork = new_run(tenant_a.schema, base_run=source, base_message_count=2, base_step=0, step=0)
    patched = s0.evolve(values={"topic": "beavers"}, messages=s0.messages + (Message(role="user", content="edit"),))
    f0, _ = commit(store, fork, version=0, step=0, previous=s0, state=patched, parent=c0)
    forked = store.load(f0).state
    assert [m.content for m in forked.messages] == ["m0", "m1", "edit"]
    assert forked.values == {"topic": "beavers"}  # the source's later value 'extra' is not in the fork's past
    # the original branch is untouched
    assert store.load(c1).state == s1
    assert store.load(c0).state == s0


def test_a_long_conversation_reads_back_exactly_in_order(tenant_a):
    """The messages come back as rows, read by orjson: what orjson would read differently from the json module
    (an integer over 64 bits, a lone surrogate) still reads back exactly, in order, over many steps."""
    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    run = new_run(tenant_a.schema)
    big = Message(role="assistant", tool_calls=(ToolCall(id="c1", name="t", arguments={"n": 2 ** 70, "f": 1.5}),))
    previous, parent, version = None, None, 0
    for step in range(120):
        appended = big if step == 60 else Message(role="user", content=f"message {step} " + "x" * 300)
        state = RunState(status=Status.RUNNING, messages=(previous.messages if previous else ()) + (appended,),
                         values={"step": step}, frontier=("a",))
        parent, result = commit(store, run, version=version, step=step, previous=previous, state=state, parent=parent)
        previous, version = state, result.version
    loaded = store.load(parent).state
    assert loaded == previous
    assert type(loaded.messages[60].tool_calls[0].arguments["n"]) is int  # not orjson's float
    surrogate = previous.evolve(messages=previous.messages + (Message(role="user", content="lone \ud800 surrogate"),))
    head, _ = commit(store, run, version=version, step=120, previous=previous, state=surrogate, parent=parent)
    assert store.load(head).state == surrogate


def test_a_state_whose_messages_are_missing_is_refused_not_read_short(tenant_a):
    """A state is made of its run's checkpoints up to it: a row whose messages went missing leaves a state that
    counts more messages than it can find, and reading it says so instead of handing back a shorter
    conversation."""
    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    run = new_run(tenant_a.schema)
    previous, parent, version = None, None, 0
    for step in range(3):
        state = state_with(step + 1)
        parent, result = commit(store, run, version=version, step=step, previous=previous, state=state, parent=parent)
        previous, version = state, result.version
    with connection.cursor() as cursor:
        cursor.execute(f'UPDATE "{tenant_a.schema}".data_plane_checkpoint SET messages = NULL '
                       "WHERE run_id = %s AND step = 1", [run.id])
    with pytest.raises(CheckpointCorrupt, match="counts 3 messages; its lineage holds 2"):
        store.load(parent)


def test_a_steps_rows_of_up_to_a_page_are_stored_uncompressed(tenant_a):
    """Compressing each row over 2 KB was most of a step's commit: rows up to a page are stored as they are (a
    compressible 4 KB message takes its 4 KB), larger ones are still compressed."""
    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    run = new_run(tenant_a.schema)
    small, large = "otters " * 600, "otters " * 3000  # about 4 KB and 21 KB, both very compressible
    first = RunState(status=Status.RUNNING, messages=(Message(role="user", content=small),), values={},
                     frontier=("a",))
    second = first.evolve(messages=first.messages + (Message(role="user", content=large),))
    commit(store, run, version=0, step=0, previous=None, state=first)
    commit(store, run, version=1, step=1, previous=first, state=second)
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT step, pg_column_size(messages), octet_length(messages) FROM "{tenant_a.schema}".'
                       'data_plane_checkpoint WHERE run_id = %s ORDER BY step', [run.id])
        (_, small_stored, small_length), (_, large_stored, large_length) = cursor.fetchall()
    assert small_stored >= small_length > 4000
    assert large_stored < large_length / 4


def test_the_tables_a_step_writes_check_no_foreign_keys(tenant_a):
    """A foreign key's check runs at every row a step inserts; the journal's locked the run's row at each COMMIT.
    The fenced commit only writes rows for the run whose row it matched, so none of these tables has one."""
    step_tables = ["data_plane_checkpoint", "data_plane_runevent", "data_plane_effectrecord"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT c.relname, count(k.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'f' "
                       "WHERE n.nspname = %s AND c.relname = ANY(%s) GROUP BY c.relname ORDER BY c.relname",
                       [tenant_a.schema, step_tables])
        assert cursor.fetchall() == [(table, 0) for table in sorted(step_tables)]


def test_audit_events_are_written_by_the_commit_statement_and_chained(tenant_a):
    """A step's audit events go into the tenant's audit log with its checkpoint, in the one statement: numbered,
    linked and hashed by the log's trigger like any other event; a fenced writer logs nothing."""
    from control_plane.audit.models import AuditEvent
    from control_plane.audit.selectors import audit_chain_verify
    from control_plane.audit.sql import AuditEntry

    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    run = new_run(tenant_a.schema)
    before = AuditEvent.objects.count()
    audit = [AuditEntry(actor_kind="system", actor_id="runtime", action="tool.call", target_type="run",
                        target_id=str(run.id), data={"tool": "calculator", "arguments": {"expression": "1+1"}}),
             AuditEntry(actor_kind="system", actor_id="runtime", action="run.completed", target_type="run",
                        target_id=str(run.id), data={"step": 0})]
    checkpoint_id = uuid.uuid4()
    store.commit(run_id=run.id, expected_version=0, checkpoint_id=checkpoint_id, parent_id=None, step=0,
                 previous=None, state=state_with(1), run_status="running", audit=audit)
    logged = list(AuditEvent.objects.order_by("seq")[before:])
    assert [(e.action, e.actor_kind, e.actor_id, e.target_type, e.target_id, e.data) for e in logged] == [
        (a.action, a.actor_kind, a.actor_id, a.target_type, a.target_id, a.data) for a in audit]
    assert logged[1].seq == logged[0].seq + 1 and logged[1].prev_hash == logged[0].hash and logged[0].hash
    report = audit_chain_verify(tenant_schema=tenant_a.schema)
    assert report.ok and report.head_seq == logged[-1].seq

    with pytest.raises(Fenced):  # a writer that lost the run: neither checkpoint nor audit events
        store.commit(run_id=run.id, expected_version=0, checkpoint_id=uuid.uuid4(), parent_id=checkpoint_id, step=1,
                     previous=state_with(1), state=state_with(2), run_status="running", audit=audit)
    assert AuditEvent.objects.count() == before + 2


def test_every_checkpoint_reads_back_the_values_as_they_were_at_its_step(tenant_a):
    """Values that change at different rates, one first set late and one set to null: each checkpoint, not only
    the last, reads back exactly the values committed with it (the latest version of each key up to its step)."""
    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    run = new_run(tenant_a.schema)
    previous, parent, version, committed = None, None, 0, []
    for step in range(25):
        values = {"a_every_step": step, "m_every_third": step // 3, "z_constant": {"kind": "same"}}
        if step >= 10:
            values["b_from_ten"] = [step % 4]
        if step >= 20:
            values["m_every_third"] = None
        state = state_with(step + 1, **values)
        parent, result = commit(store, run, version=version, step=step, previous=previous, state=state, parent=parent)
        previous, version = state, result.version
        committed.append((parent, state))
    for checkpoint_id, state in committed:
        assert store.load(checkpoint_id).state == state


def test_a_steps_finished_calls_are_journalled_by_its_commit_and_not_by_a_fenced_one(tenant_a):
    """The commit completes a tool call's "started" row, inserts a retried model call's row whole and stores a
    fresh model call (inline) in the checkpoint's row, in the same statement; the journal reads all three alike.
    A fenced commit records nothing (record_effects does, on its own, in the table), and never overwrites a row
    another writer already finished."""
    from data_plane.models import EffectRecord, EffectRecordRow
    from data_plane.runtime.adapters.checkpoints import JournalEntry

    store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
    run = new_run(tenant_a.schema)
    marked = EffectRecordRow.objects.create(run=run, step=1, key="tools:c1", kind="tool",
                                            idempotency_key=f"{run.id}:1:tools:c1", digest="d-tool", name="calculator",
                                            request={"name": "calculator"})

    def entry(key, kind, name, result, *, step=1, inline=False, **usage):
        return JournalEntry(step=step, key=key, kind=kind, idempotency_key=f"{run.id}:{step}:{key}",
                            digest=f"d-{key}", name=name, request={"name": name}, result=result, status="succeeded",
                            latency_ms=12.5, finished=time.monotonic() - 2.0, inline=inline, **usage)

    tool = entry("tools:c1", "tool", "calculator", {"content": "42"})
    model = entry("llm", "model", "openai/x", {"message": {"role": "assistant", "content": "hi"}}, input_tokens=7,
                  output_tokens=3, cost_usd=0.25, inline=True)
    retried = entry("llm2", "model", "openai/y", {"message": {"role": "assistant", "content": "yo"}}, input_tokens=1)
    first = uuid.uuid4()
    store.commit(run_id=run.id, expected_version=0, checkpoint_id=first, parent_id=None, step=0, previous=None,
                 state=state_with(1), run_status="running", effects=[tool, model, retried])
    rows = {row.key: row for row in EffectRecord.objects.filter(run=run)}
    assert {key: (row.status, row.result, row.latency_ms, row.attempts, row.digest) for key, row in rows.items()} == {
        "tools:c1": ("succeeded", {"content": "42"}, 12.5, 1, "d-tool"),
        "llm": ("succeeded", {"message": {"role": "assistant", "content": "hi"}}, 12.5, 1, "d-llm"),
        "llm2": ("succeeded", {"message": {"role": "assistant", "content": "yo"}}, 12.5, 1, "d-llm2")}
    assert (rows["llm"].input_tokens, rows["llm"].output_tokens, float(rows["llm"].cost_usd)) == (7, 3, 0.25)
    assert (rows["llm"].idempotency_key, rows["llm"].name, rows["llm"].step) == (f"{run.id}:1:llm", "openai/x", 1)
    # the fresh model call is in the checkpoint's row, the others in the table; ids are the table's sequence's
    checkpoint = Checkpoint.objects.get(id=first)
    assert checkpoint.effect_ids == [rows["llm"].id] and rows["llm"].id > marked.id
    assert set(EffectRecordRow.objects.filter(run=run).values_list("key", flat=True)) == {"tools:c1", "llm2"}
    assert len({row.id for row in rows.values()}) == 3
    # finished when the call did (two seconds before the commit), not when the commit ran
    for key in ("tools:c1", "llm"):
        assert 1.5 < (checkpoint.created_at - rows[key].finished_at).total_seconds() < 10
    assert rows["llm"].started_at == rows["llm"].finished_at and rows["llm"].batch_created_at == checkpoint.created_at

    # a step of parallel model calls: each has an id of its own
    fan = [entry(f"fan:{i}", "model", "openai/z", {"message": {"content": str(i)}}, step=3, inline=True)
           for i in range(3)]
    store.commit(run_id=run.id, expected_version=1, checkpoint_id=uuid.uuid4(), parent_id=first, step=1,
                 previous=state_with(1), state=state_with(1), run_status="running", effects=fan)
    fanned = list(EffectRecord.objects.filter(run=run, step=3).order_by("id").values_list("key", "id"))
    assert [key for key, _ in fanned] == ["fan:0", "fan:1", "fan:2"] and len({i for _, i in fanned}) == 3
    assert Checkpoint.objects.get(run=run, step=1).effect_ids == [i for _, i in fanned]

    # a fenced writer's commit journals nothing ...
    late = entry("tools:c2", "tool", "calculator", {"content": "7"}, step=2)
    fresh = entry("llm", "model", "openai/x", {"message": {"role": "assistant", "content": "late"}}, step=2,
                  inline=True)
    with pytest.raises(Fenced):
        store.commit(run_id=run.id, expected_version=1, checkpoint_id=uuid.uuid4(), parent_id=first, step=2,
                     previous=state_with(1), state=state_with(2), run_status="running", effects=[late, fresh])
    assert not EffectRecord.objects.filter(step=2).exists()
    # ... until it records its calls on their own (all in the table); a row another writer finished stays as it is
    overwrite = entry("tools:c1", "tool", "calculator", {"content": "a different answer"})
    store.record_effects(run_id=run.id, effects=[late, overwrite, fresh])
    assert EffectRecordRow.objects.get(key="tools:c2").result == {"content": "7"}
    assert EffectRecordRow.objects.get(step=2, key="llm").result["message"]["content"] == "late"
    assert EffectRecord.objects.get(key="tools:c1").result == {"content": "42"}


@pytest.mark.parametrize("value", [
    {"content": "héllo ✓ \ud800", "n": float("nan"), "inf": float("-inf"), "big": 2 ** 70, "f": 0.1 + 0.2},
    {1: "int key", "when": __import__("datetime").datetime(2026, 11, 25, 16, 0), "id": uuid.UUID(int=7)},
    [None, True, [], {}, "", {"nested": [{"a": [1, 2.5e-300]}]}], "a plain string", 42,
])
def test_a_payloads_text_is_json_dumps_own(value):
    """The store's JSON texts come from one encoder built once: they are exactly what json.dumps writes with the
    same arguments (sealing binds the texts, so a re-sealed payload must read back the same)."""
    from data_plane.runtime.adapters.checkpoints import payload_json

    assert payload_json(value) == json.dumps(value, separators=(",", ":"), default=str)
