"""The Postgres checkpoint store. Its SQL names the tenant's schema explicitly, so it stays correct
behind a transaction-pooling PgBouncer where a session's search_path cannot be trusted.

A commit is one statement: the fenced update of the run (refused unless the caller holds the version it
read), the checkpoint row, which holds what the step changed (its appended messages, its changed values), its
events and its fresh model calls' journal entries, the other finished calls' journal entries and its audit
events. Bytes written per step are what the step changed, whatever the length of the conversation. A state is
read back from the checkpoints up to it.

Given a cipher that ``encrypts_payloads`` (the tenant's policy), the store seals each appended message, each
changed value and the checkpoint's control (all but ``message_count``, which stays plain), every one
bound to its tenant and its place (run, sequence number, step, key, checkpoint): a sealed message is stored as
a JSON string in the ``messages`` array (plain ones are JSON objects), sealed values in ``sealed_values``
(plain ones in ``changed_values``), a sealed control as ``{"message_count": n, "sealed": "v2:…"}``. Reads open
whatever is sealed, so a tenant's history reads back whole across a change of its policy.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import orjson

from control_plane.audit.sql import AuditEntry, audit_insert_part
from data_plane.runtime.core.messages import Message
from data_plane.runtime.core.state import RunState

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PayloadCipher(Protocol):
    """Seals and opens a tenant's payloads (control_plane.encryption.services.TenantCipher implements it)."""

    encrypts_payloads: bool

    def seal_text(self, text: str, *, bound_to: str) -> str: ...

    def open_text(self, sealed: str, *, bound_to: str) -> str: ...


class PayloadSealed(Exception):
    """A sealed payload, and this store was given no cipher to open it."""


def message_bound_to(schema: str, run_id: Any, seq: int) -> str:
    return f"run-message:{schema}:{run_id}:{seq}"


def value_bound_to(schema: str, run_id: Any, step: int, key: str) -> str:
    return f"run-value:{schema}:{run_id}:{step}:{key}"


def control_bound_to(schema: str, checkpoint_id: Any) -> str:
    return f"checkpoint:{schema}:{checkpoint_id}"


class Fenced(Exception):
    """Another writer owns the run now (or it was cancelled): this writer must stop."""


class CheckpointNotFound(Exception):
    pass


class CheckpointCorrupt(Exception):
    """A checkpoint's lineage does not hold the messages its control counts."""


@dataclass(frozen=True)
class CommitResult:
    version: int
    pause_requested: bool
    first_event_seq: int
    committed_at: datetime  # the transaction's time: every event of the commit carries it


@dataclass(frozen=True)
class LoadedCheckpoint:
    id: UUID
    run_id: UUID
    step: int
    state: RunState


@dataclass(frozen=True)
class JournalEntry:
    """A finished model or tool call for the run's effect journal: written by the step's commit statement
    (durable exactly when the checkpoint that used it is), or alone by ``record_effects`` when the step does
    not commit. It completes the call's "started" row, or is inserted whole. With status "started" (no result),
    it marks a call of the next step started (its commit's writer makes it next). ``inline``: no row marks it
    started (a fresh step's model call), so the commit stores it in the checkpoint's row (``effects``, its id
    from the journal's sequence in ``effect_ids``); ``record_effects`` writes it in the table as any other."""

    step: int
    key: str
    kind: str
    idempotency_key: str
    digest: str
    name: str
    request: Mapping[str, Any]
    result: Mapping[str, Any] | None
    status: str
    latency_ms: float | None
    finished: float  # time.monotonic() when the call finished: the row's finished_at is that long before now()
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    inline: bool = False

    def to_json(self, *, now: float) -> dict[str, Any]:
        return {"step": self.step, "key": self.key, "kind": self.kind, "idempotency_key": self.idempotency_key,
                "digest": self.digest, "name": self.name, "request": self.request, "result": self.result,
                "status": self.status, "latency_ms": self.latency_ms, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost_usd": self.cost_usd,
                "ago": max(0.0, round(now - self.finished, 6))}


def _journal_part(q: str, *, after: str) -> str:
    """``effects AS (...)``: the journal entries of ``%(effects)s`` (a JSON array of ``JournalEntry.to_json``) for
    run ``%(run_id)s``, once for each row of ``after`` (a fenced writer's part returns none). A row that is no
    longer "started" (another writer recorded it) is left as it is."""
    return (
        f"effects AS (\n  INSERT INTO {q}data_plane_effectrecord (run_id, step, key, kind, idempotency_key, digest, "
        "name, request, result, status, attempts, latency_ms, input_tokens, output_tokens, cost_usd, started_at, "
        "finished_at)\n"
        "  SELECT %(run_id)s, e.step, e.key, e.kind, e.idempotency_key, e.digest, e.name, e.request, e.result, "
        "e.status, 1, e.latency_ms, e.input_tokens, e.output_tokens, e.cost_usd, "
        "CASE WHEN e.status = 'started' THEN now() ELSE now() - make_interval(secs => e.ago) END, "
        "CASE WHEN e.status = 'started' THEN NULL ELSE now() - make_interval(secs => e.ago) END\n"
        f"  FROM {after}jsonb_to_recordset(%(effects)s::jsonb) AS e(step int, key text, kind text, "
        "idempotency_key text, digest text, name text, request jsonb, result jsonb, status text, latency_ms float8, "
        "input_tokens int, output_tokens int, cost_usd numeric, ago float8)\n"
        "  ON CONFLICT (idempotency_key) DO UPDATE SET result = excluded.result, status = excluded.status, "
        "finished_at = excluded.finished_at, latency_ms = excluded.latency_ms, input_tokens = excluded.input_tokens, "
        "output_tokens = excluded.output_tokens, cost_usd = excluded.cost_usd, name = excluded.name "
        f"WHERE {q}data_plane_effectrecord.status = 'started'\n)")


def _parse_messages(joined: str) -> list[Any]:
    """The messages of ``joined`` (their JSON texts joined by commas), exactly as ``json.loads`` reads them, but
    with orjson, which parses a long conversation several times faster. Where orjson would read something else,
    the json module reads it: a text orjson refuses (a lone surrogate, which ``json.dumps`` writes as an escape
    and Postgres' json keeps), and an integer too large for 64 bits, which orjson reads as a float (only a tool
    call's arguments hold numbers)."""
    text = f"[{joined}]"
    try:
        items = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    for item in items:
        if isinstance(item, dict) and item.get("tool_calls"):
            if any(_holds_huge_float(call.get("arguments")) for call in item["tool_calls"]):
                return json.loads(text)
    return items


def _holds_huge_float(value: Any) -> bool:
    if isinstance(value, float):
        return abs(value) >= 2.0 ** 63
    if isinstance(value, dict):
        return any(_holds_huge_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_huge_float(v) for v in value)
    return False


# json.dumps with these arguments builds this encoder at every call; a commit writes five texts or more.
_PAYLOAD_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def payload_json(value: Any) -> str:
    """A payload's JSON text, as the store writes it (and re-sealing rewrites it): json.dumps(value,
    separators=(",", ":"), default=str)."""
    return _PAYLOAD_ENCODER.encode(value)


class PostgresCheckpointStore:
    def __init__(self, *, schema: str, connection: Any, cipher: PayloadCipher | None = None) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"Not a schema name: {schema!r}")
        self.schema = schema
        self.connection = connection
        self.cipher = cipher
        q = f'"{schema}".'
        self._commit_sql = f"""
WITH fence AS (
  UPDATE {q}data_plane_run SET version = version + 1, step = %(step)s, head_id = %(checkpoint_id)s,
    status = %(status)s, status_reason = %(reason)s, output = %(output)s, error = %(error)s::jsonb,
    cost_usd = %(cost_usd)s, input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s,
    event_seq = event_seq + %(event_count)s, updated_at = now(),
    started_at = coalesce(started_at, now()),
    finished_at = CASE WHEN %(terminal)s THEN now() ELSE finished_at END,
    lease_owner = CASE WHEN %(release)s THEN '' ELSE lease_owner END,
    lease_expires_at = CASE WHEN %(release)s THEN NULL
                            ELSE now() + make_interval(secs => %(lease_seconds)s::float8) END,
    driver_step = CASE WHEN %(release)s THEN %(step)s ELSE driver_step END,
    attempted_step = CASE WHEN %(release)s THEN attempted_step ELSE %(step)s END
  WHERE id = %(run_id)s AND version = %(expected_version)s
  RETURNING version, pause_requested, event_seq - %(event_count)s AS base_seq
), checkpoint AS (
  INSERT INTO {q}data_plane_checkpoint (id, run_id, parent_id, step, control, first_seq, messages, changed_values,
                                        sealed_values, events, first_event_seq, last_event_seq, effects, effect_ids,
                                        created_at)
  SELECT %(checkpoint_id)s, %(run_id)s, %(parent_id)s, %(step)s, %(control)s::jsonb, %(first_seq)s, %(messages)s,
         %(values)s, %(sealed_values)s, %(events)s, fence.base_seq + 1, fence.base_seq + %(event_count)s,
         %(inline)s, {{effect_ids}}, now()
  FROM fence
){{effects}}{{audit}}
SELECT version, pause_requested, base_seq, now() FROM fence"""
        # The step's finished calls complete their journal rows in the same statement: a result is recorded
        # exactly when the checkpoint that used it commits (before it, a crash retries a tool call with its
        # idempotency key, as the journal's "started" row says). The step's audit events come last, by the audit
        # log's own part (control_plane.audit.sql): after the fence, so a writer that was fenced off logs
        # nothing. A commit without effects or audit events uses a statement without those parts.
        # A fresh step's model calls, which no journal row marks started, are stored in the checkpoint's row, with
        # ids from the journal's sequence (one each; EffectRecord reads both).
        journal = ", " + _journal_part(q, after="fence, ")
        audited = ", " + audit_insert_part(qualifier=q, param="audit", after="fence")
        sequence = f"nextval('{q}data_plane_effectrecord_id_seq')"
        ids = {0: "NULL", 1: f"ARRAY[{sequence}]",  # one call, the usual case: no subquery to plan and run
               2: f"ARRAY(SELECT {sequence} FROM generate_series(1, %(inline_count)s))"}
        self._commit_sqls = {
            (rows, audit, inline): self._commit_sql.replace("{effects}", journal if rows else "")
            .replace("{audit}", audited if audit else "").replace("{effect_ids}", ids[inline])
            for rows in (False, True) for audit in (False, True) for inline in (0, 1, 2)}
        self._record_effects_sql = "WITH " + _journal_part(q, after="") + " SELECT 1"
        # What a run's checkpoints up to a step changed, in order: each row's first message's number, its
        # messages (a JSON array text) and its changed values, plain and sealed. Rows that changed neither are
        # left out; pruned ones (control NULL) are not, as later states are made of them.
        deltas = ("SELECT 1, s.step, s.first_seq, s.messages, s.changed_values, s.sealed_values{blanks} "
                  f"FROM {{source}}{q}data_plane_checkpoint s WHERE s.run_id = {{run}} AND s.step <= {{step}} "
                  "AND (s.messages IS NOT NULL OR s.changed_values IS NOT NULL OR s.sealed_values IS NOT NULL)")
        # One round trip for a run's own checkpoint: a first row (kind 0) with the checkpoint and its run's
        # lineage, then its run's checkpoints up to it (kind 1), by step.
        self._checkpoint_sql = (
            f"WITH c AS (SELECT c.id, c.run_id, c.step, c.control, r.base_run_id, r.base_message_count, r.base_step "
            f"FROM {q}data_plane_checkpoint c JOIN {q}data_plane_run r ON r.id = c.run_id "
            "WHERE c.id = %s AND c.control IS NOT NULL) "
            "SELECT 0, c.step, NULL::int, NULL, NULL, NULL, c.id, c.run_id, c.control, c.base_run_id, "
            "c.base_message_count, c.base_step FROM c UNION ALL "
            + deltas.format(blanks=", NULL, NULL, NULL, NULL, NULL, NULL", source="c, ", run="c.run_id",
                            step="c.step")
            + " ORDER BY 1, 2")
        self._run_lineage_sql = f"SELECT base_run_id, base_message_count, base_step FROM {q}data_plane_run WHERE id = %s"
        # A fork's earlier segments (its source runs'), one round trip each.
        self._segment_sql = deltas.format(blanks="", source="", run="%(run)s", step="%(step)s") + " ORDER BY 2"

    def commit(self, *, run_id: UUID, expected_version: int, checkpoint_id: UUID, parent_id: UUID | None, step: int,
               previous: RunState | None, state: RunState, run_status: str, reason: str = "",
               events: Sequence[Mapping[str, Any]] = (), release_lease: bool = False,
               lease_seconds: float = 30.0, changed_values: Mapping[str, Any] | None = None,
               audit: Sequence[AuditEntry] = (), effects: Sequence[JournalEntry] = ()) -> CommitResult:
        """Commit ``state`` as the run's next checkpoint. Raises Fenced when the version moved on.

        ``effects``, the step's finished model and tool calls, are recorded in the run's effect journal by the
        same statement, the ``inline`` ones in the checkpoint's row (a fenced writer records nothing: it can
        ``record_effects`` them on their own).

        ``audit`` events (a tool call, the run's end) are appended to the tenant's audit log by the same
        statement: a step's tool calls are logged exactly when, and only if, the step commits.

        Releasing the lease hands the run to whichever task is dispatched for this step next; keeping it
        extends it by ``lease_seconds`` (the writer goes on with the next step itself: the new step is then the
        run's ``attempted_step``, so a task that claims it after a crash knows its effects may have begun). Runs
        in the caller's transaction when there is one, so related rows can join the same commit; in autocommit,
        the one statement is a transaction of its own (all of it or nothing, durable when acknowledged).
        """
        old_count = len(previous.messages) if previous else 0
        appended = state.messages[old_count:]
        if changed_values is None:
            old_values = previous.values if previous else {}
            changed_values = {k: v for k, v in state.values.items() if k not in old_values or old_values[k] != v}
        control = state.control_json()
        messages = [m.to_json() for m in appended]
        values = dict(changed_values)
        cipher = self.cipher if self.cipher is not None and self.cipher.encrypts_payloads else None
        if cipher is not None:
            messages = [cipher.seal_text(payload_json(m), bound_to=message_bound_to(self.schema, run_id, old_count + i))
                        for i, m in enumerate(messages)]
            values = {k: cipher.seal_text(payload_json(v), bound_to=value_bound_to(self.schema, run_id, step, k))
                      for k, v in values.items()}
            control = {"message_count": control["message_count"],
                       "sealed": cipher.seal_text(payload_json(control),
                                                  bound_to=control_bound_to(self.schema, checkpoint_id))}
        params = {
            "run_id": run_id, "expected_version": expected_version, "checkpoint_id": checkpoint_id,
            "parent_id": parent_id, "step": step, "status": run_status, "reason": reason[:500],
            "output": state.output or "", "error": payload_json(state.error) if state.error else None,
            "cost_usd": state.cost_usd, "input_tokens": state.input_tokens, "output_tokens": state.output_tokens,
            "event_count": len(events), "terminal": state.is_terminal, "release": release_lease,
            "lease_seconds": lease_seconds,
            "control": payload_json(control), "first_seq": old_count,
            "messages": payload_json(messages) if messages else None,
            "values": payload_json(values) if values and cipher is None else None,
            "sealed_values": payload_json(values) if values and cipher is not None else None,
            "events": payload_json(list(events)) if events else None,
        }
        if audit:
            params["audit"] = payload_json([entry.to_json() for entry in audit])
        now = time.monotonic()
        inline = [entry.to_json(now=now) for entry in effects if entry.inline]
        rows = [entry.to_json(now=now) for entry in effects if not entry.inline]
        params["inline"] = payload_json(inline) if inline else None
        if inline:
            params["inline_count"] = len(inline)
        if rows:
            params["effects"] = payload_json(rows)
        with self.connection.cursor() as cursor:
            cursor.execute(self._commit_sqls[bool(rows), bool(audit), min(len(inline), 2)], params)
            row = cursor.fetchone()
        if row is None:
            raise Fenced(f"Run {run_id} moved past version {expected_version}; this writer stops.")
        return CommitResult(version=row[0], pause_requested=row[1], first_event_seq=row[2] + 1, committed_at=row[3])

    def record_effects(self, *, run_id: UUID, effects: Sequence[JournalEntry]) -> None:
        """Record finished calls in the run's journal on their own (a step that will not commit them: a
        transient failure of another call, a fenced writer), so a retry reuses what was already paid for."""
        if not effects:
            return
        now = time.monotonic()
        with self.connection.cursor() as cursor:
            cursor.execute(self._record_effects_sql, {
                "run_id": run_id, "effects": payload_json([entry.to_json(now=now) for entry in effects])})

    def load(self, checkpoint_id: UUID) -> LoadedCheckpoint:
        """Rebuild the full state at a checkpoint: its control, and the messages and values its run's checkpoints
        up to it changed (for a fork, after those of its source runs up to the fork's point). Raises
        CheckpointNotFound for an unknown or pruned checkpoint."""
        with self.connection.cursor() as cursor:
            cursor.execute(self._checkpoint_sql, [checkpoint_id])
            rows = cursor.fetchall()
            if not rows or rows[0][0] != 0:
                raise CheckpointNotFound(f"Checkpoint {checkpoint_id} not found.")
            *_, checkpoint_id, run_id, control, base_run, base_count, base_step = rows[0]
            step = rows[0][1]
            control = control if isinstance(control, dict) else json.loads(control)
            if "sealed" in control:
                control = json.loads(self._open(control["sealed"], control_bound_to(self.schema, checkpoint_id)))
            segments = self._lineage(cursor, run_id, control["message_count"], step, (base_run, base_count, base_step))
            parts = []
            for segment_run, first_seq, upto_seq, upto_step in segments[:-1]:
                cursor.execute(self._segment_sql, {"run": segment_run, "step": upto_step})
                parts.append((segment_run, first_seq, upto_seq, cursor.fetchall()))
            parts.append((run_id, segments[-1][1], segments[-1][2], rows[1:]))
        messages: list[Message] = []
        values: dict[str, Any] = {}
        for segment_run, first_seq, upto_seq, deltas in parts:  # oldest first: later values override
            self._read_messages(messages, segment_run, first_seq, upto_seq, deltas)
            self._read_values(values, segment_run, deltas)
        if len(messages) != control["message_count"]:
            raise CheckpointCorrupt(f"Checkpoint {checkpoint_id} counts {control['message_count']} messages; its "
                                    f"lineage holds {len(messages)}.")
        state = RunState.from_parts(control=control, messages=tuple(messages), values=values)
        return LoadedCheckpoint(id=checkpoint_id, run_id=run_id, step=step, state=state)

    def _read_messages(self, messages: list[Message], run_id: UUID, first_seq: int, upto_seq: int,
                       deltas: Sequence[tuple[Any, ...]]) -> None:
        """Append the messages numbered ``first_seq`` up to ``upto_seq`` of the segment's rows (in step order,
        so their messages are numbered on from the first row's ``first_seq``)."""
        arrays = [(row[2], row[3]) for row in deltas if row[3] is not None and row[3] != "[]"]
        if not arrays:
            return
        items = _parse_messages(",".join(text[1:-1] for _, text in arrays))
        start = arrays[0][0]
        skipped = max(0, first_seq - start)
        for seq, item in enumerate(items[skipped:max(0, upto_seq - start)], start=start + skipped):
            if isinstance(item, str):  # sealed
                item = json.loads(self._open(item, message_bound_to(self.schema, run_id, seq)))
            messages.append(Message.from_json(item))

    def _read_values(self, values: dict[str, Any], run_id: UUID, deltas: Sequence[tuple[Any, ...]]) -> None:
        plain = [row[4] for row in deltas if row[4] is not None]
        sealed = [(row[1], row[5]) for row in deltas if row[5] is not None]
        if not sealed:  # the usual case: one parse for the whole segment
            for changed in json.loads(f"[{','.join(plain)}]") if plain else ():
                values.update(changed)
            return
        for _, row_step, _, _, changed, sealed_changed in (row[:6] for row in deltas):
            if changed is not None:
                values.update(json.loads(changed))
            for key, sealed_value in json.loads(sealed_changed).items() if sealed_changed is not None else ():
                values[key] = json.loads(self._open(sealed_value, value_bound_to(self.schema, run_id, row_step, key)))

    def _open(self, sealed: str, bound_to: str) -> str:
        if self.cipher is None:
            raise PayloadSealed(f"A payload of schema {self.schema} is sealed; give the store the tenant's cipher.")
        return self.cipher.open_text(sealed, bound_to=bound_to)

    def _lineage(self, cursor: Any, run_id: UUID, message_count: int, step: int,
                 base: tuple[Any, int, int]) -> list[tuple[UUID, int, int, int]]:
        """(run, first seq, seq bound, step bound) from the oldest ancestor run to this one."""
        segments = []
        current, upto_seq, upto_step = run_id, message_count, step
        for _ in range(64):  # forks of forks; bounded so a corrupt lineage cannot loop
            if base is None:
                cursor.execute(self._run_lineage_sql, [current])
                base = cursor.fetchone()
            base_run, base_count, base_step = base
            base = None
            segments.append((current, base_count if base_run else 0, upto_seq, upto_step))
            if base_run is None:
                break
            current, upto_seq, upto_step = base_run, base_count, base_step
        return list(reversed(segments))
