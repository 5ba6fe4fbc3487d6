"""The shell around the pure runtime core: one durable step of one run.

A step: claim the run (a lease, and a new version that fences any other writer), rebuild its state
from the head checkpoint, perform the effects the state waits on (model and tool calls concurrently,
each journalled so a recorded result is never paid for twice), apply them with the core's ``step``,
and commit the next checkpoint with its events in one fenced statement. Only after that commit is the
next step dispatched. A worker killed at any instant leaves the run at its last checkpoint with an
expired lease; the redelivered task (acks_late) claims it and carries on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from collections import OrderedDict
from functools import partial
from typing import Any
from uuid import UUID

from django.db import DatabaseError, close_old_connections, connection, transaction

from common.actors import Actor
from common.commits import ASYNC_COMMIT
from common.schemas import in_schema
from common.timestamps import format_ts
from control_plane.audit.sql import AuditEntry
from data_plane import streams
from data_plane.guarding import OutputBlocked, RunGuard
from data_plane.models import Approval, EffectRecord, Run
from data_plane.runtime.adapters.checkpoints import CommitResult, Fenced, JournalEntry, LoadedCheckpoint, \
    PostgresCheckpointStore
from data_plane.runtime.core import context, machine
from data_plane.runtime.core.context import SUMMARY_KEY, EstimatedTokens, Meter
from data_plane.runtime.core.machine import CallModel, CallTool, Command, EffectFailed, StartSubRun, SubRunResult
from data_plane.runtime.core.messages import Message, ToolResult, Usage
from data_plane.runtime.core.ports import ChatModel, MediaSource, MemoryRecall, MemoryUnavailable, ModelReply, \
    ModelRequest, ProviderRejected, ProviderUnavailable, RetryNotice, TokenCounter, ToolRunner, ToolUnavailable, \
    request_has_attachments
from data_plane.runtime.core.routing import RunRouting
from data_plane.runtime.core.spec import AgentSpec, spec_from_json
from data_plane.runtime.core.state import RunState, Status
from data_plane.runtime.loop import run_coroutine
from data_plane.sealing import checkpoint_store
from data_plane.spending import HeldSpend, SpendGuard, SpendRefused
from guardrails.selectors import Outcome, Pipeline

logger = logging.getLogger(__name__)
RUNTIME = Actor(kind="system", id="runtime")  # the actor of what a run does by itself (its audit events)

RUNNABLE = ("queued", "running")
TERMINAL = ("completed", "failed", "cancelled")


class TransientStepError(Exception):
    """An effect failed in a way worth retrying (provider or tool unavailable); the step did not commit."""


@dataclass(frozen=True)
class StepOutcome:
    kind: str  # advanced | stale | busy | not_runnable | fenced | transient
    retry_in: float | None = None
    step: int | None = None
    run_status: str | None = None


@dataclass(frozen=True)
class Claim:
    version: int
    head_id: UUID
    agent_version_id: UUID
    reexecute: bool
    base_run_id: UUID | None
    parent_run_id: UUID | None
    was_retried: bool = False
    event_seq: int = 0  # the run's last event when claimed: the first step's deltas follow it
    routing: Any = None  # the run's routing (RunRouting JSON), fixed when it was created; None: the spec's models
    fresh: bool = False  # no task began the head step's effects before: nothing of it is journalled


class _Lru(OrderedDict):  # type: ignore[type-arg]
    """A small bounded cache of immutable things (agent versions' specs, committed checkpoints' states)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


# Agent versions and checkpoints never change once written, so a process may keep them: the next step of
# a run on the same worker skips re-reading its whole conversation.
_SPECS = _Lru(512)
_STATES = _Lru(256)
_AGENT_NAMES = _Lru(512)
_AGENT_IDS = _Lru(512)
_CACHE_LOCK = threading.Lock()


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def run_status_for(state: RunState) -> str:
    return {Status.RUNNING: "running", Status.WAITING_SUBRUN: "running", Status.WAITING_APPROVAL: "waiting_approval",
            Status.COMPLETED: "completed", Status.FAILED: "failed"}[state.status]


class RunStepper:
    """Executes steps of runs in one tenant schema. Ports are passed in: no settings are read here.

    ``token_counter`` measures each model call's context (default: an estimate of four characters a token);
    ``memory_recall_factory``, when given, makes a run's MemoryRecall (like ``tool_runner_factory``, from the
    run's id, once a step), asked for each model call's relevant long-term memories, which go into the call's
    system message within their share of the budget (core/context.py)."""

    def __init__(self, *, tenant_schema: str, chat_model: ChatModel,
                 tool_runner_factory: Callable[[str], ToolRunner], dispatch: Callable[[UUID, int], None],
                 owner: str | None = None, lease_seconds: float = 30.0, clock: Callable[[], float] = time.time,
                 tenant: Any = None, steps_per_task: int = 1,
                 on_stop: Callable[[UUID], None] | None = None,
                 on_finished: Callable[[UUID, str, AgentSpec], None] | None = None,
                 media: MediaSource | None = None, token_counter: TokenCounter | None = None,
                 memory_recall_factory: Callable[[str], MemoryRecall] | None = None,
                 guard_for: Callable[[str], Pipeline | None] | None = None,
                 spend_guard: SpendGuard | None = None) -> None:
        self.schema = tenant_schema
        self.chat_model = chat_model
        self.meter = Meter(counter=token_counter or EstimatedTokens(),
                           recalls_memories=memory_recall_factory is not None)
        self.memory_recall_factory = memory_recall_factory
        self.tool_runner_factory = tool_runner_factory
        self.dispatch = dispatch
        self.owner = owner or f"{uuid.uuid4().hex[:12]}"
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.tenant = tenant
        self.steps_per_task = max(1, steps_per_task)
        self.on_stop = on_stop  # told when a run stops working (finished, paused, waiting): it can free resources
        self.on_finished = on_finished  # told, after commit, when a run completed or failed: it can learn from it
        self.media = media  # the bytes behind messages' attachments, read at the model's edge
        self.guard_for = guard_for  # an agent's guardrails (by the agent's name), applied at the run's edges
        # holds each LLM call's worst case against the budgets, the token quota and the run's limit first
        self.spend_guard = spend_guard
        self._run_limits: dict[UUID, tuple[float | None, float, UUID]] = {}  # run: (spec limit, spent, agent version)
        self.q = f'"{tenant_schema}".'

    # --- the step ---------------------------------------------------------------------------------

    def run_step(self, run_id: UUID, expected_step: int) -> StepOutcome:
        """Claim the run and execute its next step; go on with further steps in this task (up to
        ``steps_per_task``, each committed before the next starts) while the run stays runnable.

        Runs in the stepper's tenant schema (entered unless the caller is in it already, as the task is): the
        schema-qualified SQL needs the tenant's database role (tenants.db_roles)."""
        with in_schema(self.schema):
            return self._run_step(run_id, expected_step)

    def _run_step(self, run_id: UUID, expected_step: int) -> StepOutcome:
        claim = self._claim(run_id, expected_step)
        if isinstance(claim, StepOutcome):
            return claim
        store = checkpoint_store(self.schema)
        spec = routed(self._spec(claim.agent_version_id), claim.routing)
        head_id, budget, after_seq = claim.head_id, self.steps_per_task, claim.event_seq
        premarked: frozenset[str] = frozenset()  # the step's tool calls its parent's commit marked started
        while True:
            budget -= 1
            with _CACHE_LOCK:
                loaded = _STATES.get((self.schema, head_id))
            if loaded is None:
                loaded = store.load(head_id)
            state = loaded.state
            commands = machine.pending_commands(state, spec, self.meter)
            sent: dict[str, dict[str, Any]] = {}  # model calls' context as sent (after recalled memories)
            guard = self._guard(run_id, claim.agent_version_id, loaded.step + 1)
            # The step's finished calls, recorded in the journal by its commit (or on their own when it does not
            # commit: whatever was paid for stays recorded for the retry).
            journal: dict[str, JournalEntry] = {}
            try:
                # Within one task, a step after the first cannot have anything recorded yet (this task is the
                # run's only driver and created the step), unless the run replays a source branch; nor can the
                # first, when no task began it before this claim (and the run was not retried from a failure).
                fresh = claim.base_run_id is None and (
                    head_id != claim.head_id or (claim.fresh and not claim.was_retried))
                self._run_limits[run_id] = (spec.limits.max_cost_usd, state.cost_usd, claim.agent_version_id)
                prepared = {command.key: _prepare(run_id, loaded.step, command) for command in commands
                            if not isinstance(command, StartSubRun)}
                results = self._begin(run_id, loaded.step, [c for c in commands if c.key not in premarked],
                                      prepared, claim, fresh)
                remaining = [command for command in commands if command.key not in results]
                if remaining:
                    results.update(run_coroutine(self._execute(run_id, loaded.step, remaining, spec, claim, prepared,
                                                               journal, fresh, after_seq, sent, guard)))
            except TransientStepError as exc:
                self._record_alone(store, run_id, journal)
                if fresh:  # its model calls that got no answer were attempted: the retry counts a second attempt
                    self._mark_attempted(run_id, loaded.step, commands, prepared, journal, claim)
                self._release(run_id, claim.version, loaded.step)
                logger.warning("Run %s step %s: transient failure, will retry: %s", run_id, loaded.step, exc)
                return StepOutcome(kind="transient", retry_in=1.0, step=loaded.step)
            except Fenced:  # cancelled or taken over: this worker's resources for the run go
                self._record_alone(store, run_id, journal)
                self._stopped(run_id)
                return StepOutcome(kind="fenced", step=loaded.step)
            except BaseException:
                self._record_alone(store, run_id, journal)
                raise
            new_state, next_commands = machine.step(state, machine.EffectsCompleted(results=results, now=self.clock()),
                                                    spec=spec, meter=self.meter)
            if guard is not None and new_state.status == Status.COMPLETED:
                final = guard.final(new_state.output or "", schema=spec.output_schema)
                if final is not None and final.blocked:
                    new_state = new_state.evolve(status=Status.FAILED, output=None, error={
                        "code": "guardrail_blocked", "message": f"The guardrails refused the answer: "
                                                                f"{final.explanation()}"})
            outcome, committed = self._commit(run_id, claim, store, loaded.id, loaded.step, state, new_state,
                                              commands, results, keep_going=budget > 0, sent=sent,
                                              extra_events=guard.events if guard is not None else (),
                                              journal=list(journal.values()),
                                              next_commands=next_commands if claim.base_run_id is None else ())
            if committed is None:
                if outcome.run_status in ("completed", "failed") and self.on_finished is not None:
                    self.on_finished(run_id, outcome.run_status, spec)
                return outcome
            claim = replace(claim, version=committed[0])
            head_id, after_seq, premarked = committed[1], committed[2], committed[3]

    def _guard(self, run_id: UUID, agent_version_id: UUID, step: int) -> RunGuard | None:
        """The step's guardrails: the run's agent's pipeline (None when no guardrails are wired)."""
        if self.guard_for is None:
            return None
        key = (self.schema, agent_version_id)
        with _CACHE_LOCK:
            agent = _AGENT_NAMES.get(key)
        if agent is None:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT a.name FROM {self.q}data_plane_agentversion v JOIN {self.q}data_plane_agent a "
                               f"ON a.id = v.agent_id WHERE v.id = %s", [agent_version_id])
                agent = cursor.fetchone()[0]
            with _CACHE_LOCK:
                _AGENT_NAMES.remember(key, agent)
        pipeline = self.guard_for(agent)
        if pipeline is None:
            return None
        return RunGuard(pipeline=pipeline, tenant=self.tenant, schema=self.schema, agent=agent, run_id=run_id,
                        step=step)

    def _spec(self, agent_version_id: UUID) -> AgentSpec:
        key = (self.schema, agent_version_id)
        with _CACHE_LOCK:
            spec = _SPECS.get(key)
        if spec is None:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT spec FROM {self.q}data_plane_agentversion WHERE id = %s", [agent_version_id])
                spec = spec_from_json(_json(cursor.fetchone()[0]))
            with _CACHE_LOCK:
                _SPECS.remember(key, spec)
        return spec

    def fail(self, run_id: UUID, *, code: str, message: str) -> None:
        """Fail a run whose steps keep failing transiently, from its head checkpoint (fenced)."""
        with in_schema(self.schema):
            self._fail(run_id, code=code, message=message)

    def _fail(self, run_id: UUID, *, code: str, message: str) -> None:
        with in_schema(self.schema):
            run = Run.objects.get(id=run_id)
        if run.status in TERMINAL:
            return
        store = checkpoint_store(self.schema)
        loaded = store.load(run.head_id)
        failed = loaded.state.evolve(status=Status.FAILED, error={"code": code, "message": message})
        events = [{"type": "error", "data": dict(failed.error or {})},
                  {"type": "run.status", "data": {"status": "failed", "error": failed.error}},
                  finished_event("failed", failed)]
        with transaction.atomic():
            committed = store.commit(run_id=run_id, expected_version=run.version, checkpoint_id=uuid.uuid4(),
                                     parent_id=loaded.id, step=loaded.step + 1, previous=loaded.state, state=failed,
                                     run_status="failed", reason=message, release_lease=True, events=events)
            transaction.on_commit(partial(self._publish, run_id, events, committed))
        with in_schema(self.schema):
            self._after_terminal(run)
        if self.on_finished is not None:
            self.on_finished(run_id, "failed", self._spec(run.agent_version_id))

    # --- claim and lease --------------------------------------------------------------------------

    def _claim(self, run_id: UUID, expected_step: int) -> Claim | StepOutcome:
        # ``fresh``: no task began the effects of the run's head step before this claim (attempted_step, read
        # under the row's lock, is behind it), so nothing of that step can be in the journal.
        sql = f"""
WITH before AS (SELECT attempted_step FROM {self.q}data_plane_run WHERE id = %(id)s FOR UPDATE)
UPDATE {self.q}data_plane_run r SET lease_owner = %(owner)s,
  lease_expires_at = now() + make_interval(secs => %(ttl)s), version = r.version + 1,
  status = CASE WHEN r.status = 'queued' THEN 'running' ELSE r.status END,
  started_at = coalesce(r.started_at, now()), attempted_step = r.step
FROM before
WHERE r.id = %(id)s AND r.driver_step = %(step)s AND r.status IN ('queued', 'running')
  AND (r.lease_owner = '' OR r.lease_expires_at IS NULL OR r.lease_expires_at < now()) AND {ASYNC_COMMIT} = 'off'
RETURNING r.version, r.head_id, r.agent_version_id, r.reexecute, r.base_run_id, r.parent_run_id, r.was_retried,
  r.event_seq, r.routing, before.attempted_step IS NULL OR before.attempted_step < r.step"""
        with connection.cursor() as cursor:
            cursor.execute(sql, {"owner": self.owner, "ttl": self.lease_seconds, "id": run_id, "step": expected_step})
            row = cursor.fetchone()
            if row is not None:
                return Claim(*row)
            cursor.execute(f"SELECT status, driver_step, extract(epoch FROM lease_expires_at - now()) "
                           f"FROM {self.q}data_plane_run WHERE id = %s", [run_id])
            found = cursor.fetchone()
        if found is None or found[1] != expected_step:
            return StepOutcome(kind="stale", step=expected_step)
        if found[0] not in RUNNABLE:
            return StepOutcome(kind="not_runnable", step=expected_step, run_status=found[0])
        return StepOutcome(kind="busy", retry_in=max(float(found[2] or 0), 0.1), step=expected_step)

    def _release(self, run_id: UUID, version: int, step: int) -> None:
        """Give the run up (a transient failure): the task's retry claims it again at ``step``."""
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {self.q}data_plane_run SET lease_owner = '', lease_expires_at = NULL, "
                           f"driver_step = %s WHERE id = %s AND version = %s", [step, run_id, version])

    def _renew(self, run_id: UUID, version: int) -> bool:
        """Extend the lease; False when the run was cancelled or claimed by someone else meanwhile."""
        close_old_connections()
        with in_schema(self.schema), connection.cursor() as cursor:
            cursor.execute(f"UPDATE {self.q}data_plane_run SET lease_expires_at = now() + make_interval(secs => %s) "
                           f"WHERE id = %s AND version = %s AND lease_owner = %s RETURNING 1",
                           [self.lease_seconds, run_id, version, self.owner])
            return cursor.fetchone() is not None

    # --- effects ----------------------------------------------------------------------------------

    def _begin(self, run_id: UUID, step: int, commands: list[Command], prepared: dict[str, _Prepared],
               claim: Claim, fresh: bool) -> dict[str, machine.EffectResult]:
        """Mark the step's calls started in the journal (in this thread, before any is made), one statement a
        call; the results already recorded for some of them (this run's, or a source branch's on a replay)."""
        recorded: dict[str, machine.EffectResult] = {}
        for command in commands:
            effect = prepared.get(command.key)
            # A model call has no effect to guard, only a result to keep: on a fresh step it is recorded once, with
            # the commit. A tool call is always marked started first, so a retry is known as one.
            if effect is None or (fresh and effect.kind == EffectRecord.Kind.MODEL):
                continue
            result = self._journal_begin(run_id, step, command.key, effect, claim, command.node_id)
            if result is not None:
                recorded[command.key] = result
        return recorded

    def _record_alone(self, store: PostgresCheckpointStore, run_id: UUID, journal: dict[str, JournalEntry]) -> None:
        """Record a step's finished calls without its commit (the step ends another way), best effort: a call
        left "started" is made again with the same idempotency key by the retry."""
        if not journal:
            return
        try:
            store.record_effects(run_id=run_id, effects=list(journal.values()))
        except DatabaseError:
            logger.exception("Run %s: recording %d finished calls failed; a retry makes them again with the same "
                             "idempotency keys", run_id, len(journal))

    def _mark_attempted(self, run_id: UUID, step: int, commands: list[Command], prepared: dict[str, _Prepared],
                        journal: dict[str, JournalEntry], claim: Claim) -> None:
        """Mark a fresh step's model calls that were made without an answer as started (they had no journal row),
        so the journal counts the retry's call as their second attempt. Best effort."""
        try:
            for command in commands:
                effect = prepared.get(command.key)
                if effect is not None and effect.kind == EffectRecord.Kind.MODEL and command.key not in journal:
                    self._journal_begin(run_id, step, command.key, effect, claim, command.node_id)
        except DatabaseError:
            logger.exception("Run %s: marking step %s's unanswered model calls failed", run_id, step)

    async def _execute(self, run_id: UUID, step: int, commands: list[Command], spec: AgentSpec,
                       claim: Claim, prepared: dict[str, _Prepared], journal: dict[str, JournalEntry],
                       fresh: bool = False, after_seq: int = 0, sent: dict[str, dict[str, Any]] | None = None,
                       guard: RunGuard | None = None) -> dict[str, machine.EffectResult]:
        if not commands:
            return {}
        tools = self.tool_runner_factory(str(run_id))
        memory = self.memory_recall_factory(str(run_id)) if self.memory_recall_factory is not None else None
        sent = {} if sent is None else sent
        work = asyncio.ensure_future(asyncio.gather(
            *(self._effect(run_id, step, command, prepared.get(command.key), journal, tools, claim, fresh, after_seq,
                           sent, memory, guard)
              for command in commands),
            return_exceptions=True))
        while not work.done():
            done, _ = await asyncio.wait({work}, timeout=self.lease_seconds / 3)
            if not done and not await asyncio.to_thread(self._renew, run_id, claim.version):
                work.cancel()
                raise Fenced(f"Run {run_id} was cancelled or taken over during step {step}.")
        outcomes = work.result()
        results: dict[str, machine.EffectResult] = {}
        transient = None
        for command, outcome in zip(commands, outcomes):
            if isinstance(outcome, (ProviderUnavailable, ToolUnavailable)):
                transient = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            elif outcome is not None:
                results[command.key] = outcome
        if transient is not None:
            raise TransientStepError(str(transient))
        return results

    async def _effect(self, run_id: UUID, step: int, command: Command, effect: _Prepared | None,
                      journal: dict[str, JournalEntry], tools: ToolRunner, claim: Claim, fresh: bool, after_seq: int,
                      sent: dict[str, dict[str, Any]], memory: MemoryRecall | None = None,
                      guard: RunGuard | None = None) -> machine.EffectResult | None:
        if isinstance(command, StartSubRun):
            return await asyncio.to_thread(self._subrun, run_id, command)
        assert effect is not None
        idempotency_key = effect.idempotency_key
        started = time.monotonic()

        def finished(result: Any, usage: Usage | None = None) -> Any:  # journalled with the step's commit
            # a fresh step's model call has no journal row (``_begin``): its checkpoint's row can hold it
            journal[command.key] = effect.entry(step, command.key, result, usage, started,
                                                inline=fresh and effect.kind == EffectRecord.Kind.MODEL)
            return result

        if isinstance(command, CallModel):
            guarded = guard if command.key != SUMMARY_KEY else None  # a summary is bookkeeping, not an answer
            deltas = _DeltaStream(schema=self.schema, run_id=run_id, after_seq=after_seq, node=command.node_id,
                                  name=f"{claim.version}.{command.node_id}", guard=guarded)
            model_request = await self._with_memories(command.request, run_id, memory)
            if "context" in model_request.metadata:
                sent[command.key] = model_request.metadata["context"]
            # only a request with attachments needs the media (and ChatModels without media support keep working)
            media = {"media": self.media} if request_has_attachments(model_request) else {}
            held = await asyncio.to_thread(self._spend_hold, run_id, idempotency_key, model_request) \
                if self.spend_guard is not None else None
            if isinstance(held, EffectFailed):  # refused before the call: nothing paid, nothing recorded as paid
                # (a fresh call has no journal row; one marked started is closed, so its retry is refused too)
                return held if fresh else finished(held)
            paid: Usage | None = None
            try:
                try:
                    reply = await self.chat_model.complete(model_request, on_delta=deltas.send,
                                                           on_retry=deltas.restart, **media)
                    paid = reply.usage
                    if guarded is not None:
                        reply = await guarded.reply(reply, await deltas.finish(), node=command.node_id)
                finally:  # the deltas go out before the step's events (the reply supersedes them)
                    await deltas.flush()
            except ProviderRejected as exc:
                return finished(EffectFailed(code="model_rejected", message=str(exc)))
            except OutputBlocked as blocked:
                assert guarded is not None
                await guarded.stopped(blocked, node=command.node_id)
                return finished(EffectFailed(code="guardrail_blocked",
                                             message=f"The guardrails stopped the model's answer: {blocked}"))
            finally:
                if held is not None:  # the actual cost counted, the hold freed, whatever happened to the call
                    await asyncio.to_thread(self._spend_settle, held, paid)
            return finished(reply, reply.usage)
        call, refused = (command.call, None) if guard is None else await guard.before_call(command.call,
                                                                                            node=command.node_id)
        result = refused or await tools.call(call, idempotency_key=idempotency_key)
        if guard is not None and refused is None:
            result = await guard.after_call(call, result, node=command.node_id)
        return finished(result)

    def _spend_hold(self, run_id: UUID, idempotency_key: str, request: ModelRequest) -> HeldSpend | EffectFailed:
        """Hold the call's worst case, or the failure that stops the run: a budget refused it."""
        assert self.spend_guard is not None
        spec_limit, spent, agent_version_id = self._run_limits[run_id]
        close_old_connections()
        with in_schema(self.schema):
            held = self.spend_guard.hold(run_id=run_id, agent_id=self._agent_id(agent_version_id),
                                         idempotency_key=idempotency_key, request=request, run_limit_usd=spec_limit,
                                         run_spent_usd=spent)
        if isinstance(held, SpendRefused):
            logger.info("Run %s: LLM call %s refused by a budget: %s", run_id, idempotency_key, held.message)
            return EffectFailed(code="budget_exceeded", message=held.message)
        return held

    def _spend_settle(self, held: HeldSpend, usage: Usage | None) -> None:
        assert self.spend_guard is not None
        close_old_connections()
        try:
            with in_schema(self.schema):
                self.spend_guard.settle(held, usage)
        except DatabaseError:  # the call happened: its step must not fail (and pay again) for the bookkeeping
            logger.exception("Settling LLM call %s failed; its hold lapses at its expiry and its cost (%s) is "
                             "not counted against the budgets", held.idempotency_key, usage)

    def _agent_id(self, agent_version_id: UUID) -> UUID:
        key = (self.schema, agent_version_id)
        with _CACHE_LOCK:
            agent_id = _AGENT_IDS.get(key)
        if agent_id is None:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT agent_id FROM {self.q}data_plane_agentversion WHERE id = %s", [agent_version_id])
                agent_id = cursor.fetchone()[0]
            with _CACHE_LOCK:
                _AGENT_IDS.remember(key, agent_id)
        return agent_id

    async def _with_memories(self, request: ModelRequest, run_id: UUID, memory: MemoryRecall | None) -> ModelRequest:
        """The request with the agent's relevant memories recalled into it, when a memory store is wired and
        the request keeps them room. A store that cannot answer leaves the call without them."""
        if memory is None or request.recall is None:
            return request
        recall = request.recall
        try:
            memories = await memory.recall(query=recall.query, limit=recall.limit, max_tokens=recall.max_tokens)
        except MemoryUnavailable as exc:
            logger.warning("Memories of run %s unavailable; the model call goes ahead without them: %s",
                           run_id, exc)
            return context.with_memories(request, [], self.meter.counter)
        return context.with_memories(request, memories, self.meter.counter)

    def _journal_begin(self, run_id: UUID, step: int, key: str, effect: _Prepared, claim: Claim,
                       node_id: str) -> machine.EffectResult | None:
        """A recorded result for this effect (this run's, or the source branch's on a replay), or None after
        marking the effect started. A tool call marked started gets its tool.started event in the same
        statement (numbered after the run's last event, fenced by the claim's version). One statement in the
        common case; explicit schema in the SQL. The mark commits without waiting for the disk: lost in a crash
        of Postgres, the retry calls the tool again with the same idempotency key, as it would anyway."""
        kind, name, idempotency_key, effect_digest, request = (effect.kind, effect.name, effect.idempotency_key,
                                                               effect.digest, effect.request)
        q = self.q
        with in_schema(self.schema), connection.cursor() as cursor:
            cursor.execute(
                f"WITH journal AS (INSERT INTO {q}data_plane_effectrecord (run_id, step, key, kind, idempotency_key, "
                "digest, name, request, status, attempts, input_tokens, output_tokens, cost_usd, started_at) "
                "VALUES (%(run)s, %(step)s, %(key)s, %(kind)s, %(idem)s, %(digest)s, %(name)s, %(request)s::jsonb, "
                "'started', 1, 0, 0, 0, now()) "
                "ON CONFLICT (idempotency_key) DO UPDATE SET attempts = "
                f"{q}data_plane_effectrecord.attempts + "
                f"CASE WHEN {q}data_plane_effectrecord.status = 'started' THEN 1 ELSE 0 END "
                "RETURNING id, status, result, attempts), "
                f"numbered AS (UPDATE {q}data_plane_run SET event_seq = event_seq + 1 "
                "WHERE id = %(run)s AND version = %(version)s AND %(kind)s = 'tool' "
                "AND EXISTS (SELECT 1 FROM journal WHERE status = 'started') RETURNING event_seq), "
                f"started AS (INSERT INTO {q}data_plane_runevent (run_id, seq, type, data, created_at) "
                "SELECT %(run)s, numbered.event_seq, 'tool.started', "
                "jsonb_build_object('node', %(node)s::text, 'call', %(call)s::jsonb, 'attempt', journal.attempts), now() "
                "FROM numbered, journal RETURNING seq, data, created_at) "
                "SELECT journal.id, journal.status, journal.result, journal.attempts, started.seq, started.data, "
                f"started.created_at FROM journal LEFT JOIN started ON true WHERE {ASYNC_COMMIT} = 'off'",
                {"run": run_id, "step": step, "key": key, "kind": kind, "idem": idempotency_key,
                 "digest": effect_digest, "name": name, "request": json.dumps(request), "version": claim.version,
                 "node": node_id, "call": json.dumps({"id": request.get("call_id"), "name": request.get("name"),
                                                      "arguments": request.get("arguments")})})
            record_id, status, result, attempts, event_seq, event_data, event_at = cursor.fetchone()
            if event_seq is not None:
                streams.run_publish(tenant_schema=self.schema, run_id=run_id, events=[{
                    "seq": event_seq, "type": "tool.started", "data": _json(event_data),
                    "ts": format_ts(event_at)}])
            if status != EffectRecord.Status.STARTED:
                return _decode_result(kind, _json(result))
            if attempts > 1 or claim.reexecute or (claim.base_run_id is None and not claim.was_retried):
                return None  # nothing recorded elsewhere could match: no need to look
            lineage = [run_id]
            if claim.base_run_id is not None:
                cursor.execute(
                    f"WITH RECURSIVE lineage(id, base) AS (SELECT id, base_run_id FROM {self.q}data_plane_run "
                    f"WHERE id = %s UNION ALL SELECT r.id, r.base_run_id FROM {self.q}data_plane_run r "
                    "JOIN lineage l ON r.id = l.base) SELECT id FROM lineage LIMIT 64", [claim.base_run_id])
                lineage += [row[0] for row in cursor.fetchall()]
            cursor.execute(
                f"SELECT id, result FROM {self.q}data_plane_effectrecord_all WHERE digest = %s "
                "AND run_id = ANY(%s) AND status = 'succeeded' AND id <> %s ORDER BY id DESC LIMIT 1",
                [effect_digest, lineage, record_id])
            source = cursor.fetchone()
            if source is None:
                return None
            cursor.execute(
                f"UPDATE {self.q}data_plane_effectrecord SET status = 'succeeded', result = %s::jsonb, latency_ms = 0, "
                "reused_from = %s, finished_at = now() WHERE id = %s", [json.dumps(_json(source[1])), source[0],
                                                                         record_id])
        return _decode_result(kind, _json(source[1]))

    def _subrun(self, run_id: UUID, command: StartSubRun) -> SubRunResult | None:
        """The child run's result when it has finished; otherwise start it (once) and return None."""
        from data_plane import services  # the run services create runs; they import this module's users

        close_old_connections()
        with in_schema(self.schema):
            child = Run.objects.filter(parent_run_id=run_id, parent_key=command.key).first()
            if child is None:
                child = services.run_create_child(tenant_schema=self.schema, parent_run_id=run_id,
                                                  parent_key=command.key, agent_name=command.agent,
                                                  input=command.input, dispatch=self.dispatch)
            if child.status in TERMINAL:
                output = child.output if child.status == "completed" else (child.error or {}).get("message", "")
                return SubRunResult(run_id=str(child.id), status=child.status, output=output or "")
        return None

    # --- commit -----------------------------------------------------------------------------------

    def _commit(self, run_id: UUID, claim: Claim, store: PostgresCheckpointStore, parent_id: UUID, parent_step: int,
                previous: RunState, state: RunState, commands: list[Command],
                results: dict[str, machine.EffectResult], *, keep_going: bool,
                sent: dict[str, dict[str, Any]] | None = None, extra_events: Sequence[dict[str, Any]] = (),
                journal: Sequence[JournalEntry] = (), next_commands: Sequence[Command] = ()
                ) -> tuple[StepOutcome, tuple[int, UUID, int, frozenset[str]] | None]:
        """Commit the step. Returns its outcome, and (new version, checkpoint, last event's seq, the next step's
        calls marked started) when this task goes on with the run's next step itself (it keeps the lease)
        instead of dispatching it: then the commit also marks that step's tool calls (``next_commands``, the
        core's answer for ``state``) started, with their tool.started events, as the next step would first."""
        step = parent_step + 1
        run_status = run_status_for(state)
        waiting_subrun = state.status == Status.WAITING_SUBRUN
        continues = keep_going and run_status == "running" and not waiting_subrun
        checkpoint_id = uuid.uuid4()
        events = _step_events(commands, results, step, checkpoint_id, previous, state, run_status, sent or {},
                              extra_events)
        # The step's tool calls and the run's end go to the tenant's audit log in the commit statement itself.
        audit: list[AuditEntry] = []
        if self.tenant is not None:
            audit.extend(_tool_call_audit(run_id, step, command, results[command.key],
                                          agent_version_id=claim.agent_version_id)
                         for command in commands if isinstance(command, CallTool) and command.key in results)
            if run_status != "running":
                audit.append(AuditEntry(actor_kind=RUNTIME.kind, actor_id=RUNTIME.id, action=f"run.{run_status}",
                                        target_type="run", target_id=str(run_id), data={"step": step}))
        # exactly what a reload would give: control and values as they round-trip through JSON
        reloaded = RunState.from_parts(control=json.loads(json.dumps(state.control_json(), default=str)),
                                       messages=state.messages,
                                       values=json.loads(json.dumps(dict(state.values), default=str)))
        if reloaded == state:  # the same state: the next step plans from the object the core just planned
            reloaded = state
        # This task goes on with the next step: its tool calls are marked started here, with their tool.started
        # events, instead of by a statement of their own before the calls (the step is fresh: nothing of it is
        # recorded). Only when the next step plans from this very state, so the calls are the same. A pause or
        # cancel that stops the run at this commit leaves them marked: resumed, they count a second attempt.
        premarked: list[JournalEntry] = []
        if continues and reloaded is state:
            for command in next_commands:
                if isinstance(command, CallTool):
                    premarked.append(_prepare(run_id, step, command).started(step, command.key))
                    events.append({"type": "tool.started", "data": {"node": command.node_id, "call": {
                        "id": command.call.id, "name": command.call.name, "arguments": command.call.arguments},
                        "attempt": 1}})
        joined = state.pending_approval is not None
        # The commit is one statement. When no other row joins it (an approval), it is its own transaction
        # (autocommit): as atomic and as durable, without the BEGIN and COMMIT round trips.
        alone = not joined and not connection.in_atomic_block and connection.get_autocommit()
        try:
            with nullcontext() if alone else transaction.atomic():
                committed = store.commit(run_id=run_id, expected_version=claim.version, checkpoint_id=checkpoint_id,
                                         parent_id=parent_id, step=step, previous=previous, state=state,
                                         run_status=run_status, reason=(state.error or {}).get("message", ""),
                                         events=events, release_lease=not continues, lease_seconds=self.lease_seconds,
                                         audit=audit, effects=[*journal, *premarked])
                if joined:
                    with in_schema(self.schema):
                        record_pending_approval(run_id, state)
        except Fenced:  # the run's next owner may reuse what this writer's calls got
            self._record_alone(store, run_id, {entry.key: entry for entry in journal})
            self._stopped(run_id)
            return StepOutcome(kind="fenced", step=parent_step), None
        except Exception:
            self._record_alone(store, run_id, {entry.key: entry for entry in journal})
            raise
        with _CACHE_LOCK:
            _STATES.remember((self.schema, checkpoint_id), LoadedCheckpoint(id=checkpoint_id, run_id=run_id, step=step,
                                                                            state=reloaded))
        transaction.on_commit(partial(self._publish, run_id, events, committed, state))
        if committed.pause_requested and run_status == "running":
            self._pause(run_id, committed.version, step)
            self._stopped(run_id)
            return StepOutcome(kind="advanced", step=step, run_status="paused"), None
        if run_status != "running":
            self._stopped(run_id)
        if continues:
            return StepOutcome(kind="advanced", step=step, run_status=run_status), (
                committed.version, checkpoint_id, committed.first_event_seq + len(events) - 1,
                frozenset(entry.key for entry in premarked))
        if run_status == "running" and not waiting_subrun:
            self.dispatch(run_id, step)
        elif run_status in TERMINAL:
            if claim.parent_run_id is not None:
                with in_schema(self.schema):
                    self._after_terminal(Run.objects.get(id=run_id))
        return StepOutcome(kind="advanced", step=step, run_status=run_status), None

    def _stopped(self, run_id: UUID) -> None:
        if self.on_stop is not None:
            self.on_stop(run_id)

    def _pause(self, run_id: UUID, version: int, step: int) -> None:
        """The pause asked for during the step takes effect now that it committed: status and event together."""
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"UPDATE {self.q}data_plane_run SET status = 'paused', pause_requested = false, "
                           f"lease_owner = '', lease_expires_at = NULL, version = version + 1, driver_step = %s, "
                           f"event_seq = event_seq + 1 WHERE id = %s AND version = %s RETURNING event_seq, now()",
                           [step, run_id, version])
            row = cursor.fetchone()
            if row is not None:
                cursor.execute(f"INSERT INTO {self.q}data_plane_runevent (run_id, seq, type, data, created_at) "
                               f"VALUES (%s, %s, 'run.status', %s::jsonb, now())",
                               [run_id, row[0], json.dumps({"status": "paused"})])
                transaction.on_commit(partial(streams.run_publish, tenant_schema=self.schema, run_id=run_id, events=[
                    {"seq": row[0], "type": "run.status", "data": {"status": "paused"},
                     "ts": format_ts(row[1])}]))

    def _after_terminal(self, run: Run) -> None:
        """A finished sub-run wakes its parent, which collects the result in its next step."""
        if run.parent_run_id is not None:
            parent = Run.objects.filter(id=run.parent_run_id).values_list("status", "step").first()
            if parent is not None and parent[0] == "running":
                self.dispatch(run.parent_run_id, parent[1])

    def _publish(self, run_id: UUID, events: list[dict[str, Any]], committed: CommitResult,
                 state: RunState | None = None) -> None:
        streams.run_publish(tenant_schema=self.schema, run_id=run_id,
                            events=numbered_events(events, committed, messages=state.messages if state else ()))


class _DeltaStream:
    """Publishes one model call's token deltas, in order; a retried attempt streams again under a new name, so
    a subscriber drops the failed attempt's text.

    One publish at a time: fragments that arrive while one is in flight are sent together after it, as one
    delta (their text joined). A model streaming slower than a publish (every real one) gets a delta per
    fragment, as soon as it arrives; a burst (a fast or cached model) costs a few Redis round trips, not one
    pair per fragment. ``flush`` waits until everything sent is published."""

    def __init__(self, *, schema: str, run_id: UUID, after_seq: int, node: str, name: str,
                 guard: RunGuard | None = None) -> None:
        self.schema, self.run_id, self.after_seq, self.node, self.name = schema, run_id, after_seq, node, name
        self.attempt = 1
        self.guard = guard
        self.stream_guard = guard.stream() if guard is not None else None
        self._pending: list[tuple[str, str]] = []  # (stream, text) not yet published
        self._publishing: asyncio.Future[None] | None = None

    async def send(self, text: str) -> None:
        """Publish a fragment; with guardrails, what the output rail lets through (redacted, held back a few
        characters), and stop the stream (OutputBlocked) when it finds a violation."""
        if self.stream_guard is not None:
            text, blocked = self.stream_guard.feed(text)
            if blocked is not None:
                raise OutputBlocked(blocked)
        if text:
            self._queue(text)

    async def finish(self) -> Outcome | None:
        """The end of the stream: publish what was held back; the output rail's outcome on the whole text."""
        if self.stream_guard is None:
            return None
        rest, outcome = self.stream_guard.finish()
        if outcome.blocked:
            raise OutputBlocked(outcome)
        if rest:
            self._queue(rest)
        return outcome

    async def flush(self) -> None:
        if self._publishing is not None:
            await self._publishing

    def _queue(self, text: str) -> None:
        self._pending.append((f"{self.name}.{self.attempt}", text))
        if self._publishing is None or self._publishing.done():
            self._publishing = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            stream = self._pending[0][0]
            count = next((i for i, (name, _) in enumerate(self._pending) if name != stream), len(self._pending))
            text = "".join(fragment for _, fragment in self._pending[:count])
            del self._pending[:count]
            await streams.delta_publish(tenant_schema=self.schema, run_id=self.run_id, after_seq=self.after_seq,
                                        node=self.node, text=text, stream=stream)

    async def restart(self, notice: RetryNotice) -> None:
        self.attempt += 1
        self.stream_guard = self.guard.stream() if self.guard is not None else None


def numbered_events(events: list[dict[str, Any]], committed: CommitResult,
                    messages: tuple[Message, ...] | list[Message] = ()) -> list[dict[str, Any]]:
    """A commit's events as subscribers get them: numbered, stamped with the commit's time, and a model
    reply carrying its whole message (the database keeps it once, in the checkpoint's messages)."""
    stamp = format_ts(committed.committed_at)
    numbered = []
    for offset, event in enumerate(events):
        data = event["data"]
        position = data.get("message_seq") if event["type"] == "model.reply" else None
        if position is not None and position < len(messages):
            data = {**data, "message": messages[position].to_json()}
        numbered.append({"seq": committed.first_event_seq + offset, "type": event["type"], "data": data, "ts": stamp})
    return numbered


def finished_event(status: str, state: RunState | None, *, reason: str = "") -> dict[str, Any]:
    """The last event of a run's turn: how it ended, its output or error, and what it used."""
    data: dict[str, Any] = {"status": status}
    if state is not None:
        data.update(output=state.output, error=dict(state.error) if state.error else None, steps=state.steps,
                    usage={"input_tokens": state.input_tokens, "output_tokens": state.output_tokens,
                           "cost_usd": state.cost_usd})
    if reason:
        data["reason"] = reason
    return {"type": "run.finished", "data": data}


def record_pending_approval(run_id: UUID, state: RunState) -> None:
    """The Approval row a human decides through the API, once per pending approval (in the current schema)."""
    pending = state.pending_approval
    if pending is not None:
        Approval.objects.get_or_create(run_id=run_id, key=pending.id, defaults={
            "node_id": pending.node_id, "kind": pending.kind, "prompt": pending.prompt,
            "calls": [call.to_json() for call in pending.calls]})


def routed(spec: AgentSpec, run_routing: Any) -> AgentSpec:
    """The spec as a run with this routing (its RunRouting JSON, or None) executes it."""
    if not run_routing:
        return spec
    return replace(spec, run_routing=RunRouting.from_json(_json(run_routing)))


@dataclass(frozen=True)
class _Prepared:
    """A model or tool call as the journal knows it: its kind, name, bounded request and their digest."""

    kind: str
    name: str
    request: dict[str, Any]
    digest: str
    idempotency_key: str

    def started(self, step: int, key: str) -> JournalEntry:
        """The call's journal entry marking it started (no result yet)."""
        return JournalEntry(step=step, key=key, kind=self.kind, idempotency_key=self.idempotency_key,
                            digest=self.digest, name=self.name, request=self.request, result=None,
                            status=EffectRecord.Status.STARTED, latency_ms=None, finished=time.monotonic())

    def entry(self, step: int, key: str, result: Any, usage: Usage | None, started: float, *,
              inline: bool = False) -> JournalEntry:
        """The call's journal entry, now that it finished with ``result`` (paid ``usage``); ``inline`` when no
        journal row marks it started (a fresh step's model call), so its checkpoint's row can hold it."""
        now = time.monotonic()
        return JournalEntry(
            step=step, key=key, kind=self.kind, idempotency_key=self.idempotency_key, digest=self.digest,
            name=usage.model if usage is not None and usage.model else self.name, request=self.request,
            result=_encode_result(result),
            status=EffectRecord.Status.FAILED if isinstance(result, EffectFailed) else EffectRecord.Status.SUCCEEDED,
            latency_ms=round((now - started) * 1000, 3), finished=now,
            input_tokens=usage.input_tokens if usage is not None else 0,
            output_tokens=usage.output_tokens if usage is not None else 0,
            cost_usd=usage.cost_usd if usage is not None else 0.0, inline=inline)


def _prepare(run_id: UUID, step: int, command: Command) -> _Prepared:
    """The call as the journal keeps it (``request``) and its digest, taken over ``identity``: what makes two
    calls the same call, which for a model call includes its last messages whole."""
    idempotency_key = f"{run_id}:{step}:{command.key}"
    if isinstance(command, CallModel) and command.key == SUMMARY_KEY:
        kind, name = EffectRecord.Kind.MODEL, command.request.models[0]
        # the transcript is the run's messages again: the journal keeps its digest and what it covers
        request = {"models": list(command.request.models), "node": command.node_id, "purpose": "summary",
                   "summarises": command.request.metadata["summarises"],
                   "digest": digest([m.to_json() for m in command.request.messages]),
                   **_route_of(command.request)}
        identity = request
    elif isinstance(command, CallModel):
        kind, name = EffectRecord.Kind.MODEL, command.request.models[0]
        messages = command.request.messages
        # The conversation itself is in the run's messages; the journal keeps a bounded identity of the
        # request: a replay's identical request (same lineage position, same last messages) matches it.
        # Recalled memories are added after this, so a replay of the same conversation reuses its answer.
        # The last messages count in the digest as they are, but the row keeps only their digest: they are the
        # run's messages already, and copying them (often most of a step's bytes) into the journal's plaintext
        # would leave a sealed conversation readable there.
        tail = [m.to_json() for m in messages[-2:]]
        shape = {"models": list(command.request.models), "node": command.node_id,
                 "message_count": len(messages), "tools": [t.name for t in command.request.tools],
                 "system": digest(messages[0].to_json()) if messages and messages[0].role == "system" else None,
                 **_route_of(command.request)}
        request, identity = {**shape, "tail_digest": digest(tail)}, {**shape, "tail": tail}
    else:
        assert isinstance(command, CallTool)
        kind, name = EffectRecord.Kind.TOOL, command.call.name
        request = {"name": command.call.name, "arguments": command.call.arguments, "call_id": command.call.id}
        identity = request
    return _Prepared(kind=kind, name=name, request=request, digest=digest({"kind": kind, **identity}),
                     idempotency_key=idempotency_key)


def _route_of(request: ModelRequest) -> dict[str, Any]:
    """The routing decision of a model call, as journalled and reported with it (nothing when not routed)."""
    route = request.metadata.get("route")
    return {"route": route} if route is not None else {}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _encode_result(result: Any) -> dict[str, Any]:
    match result:
        case ModelReply():
            return {"message": result.message.to_json(), "usage": result.usage.to_json(),
                    "finish_reason": result.finish_reason,
                    **({"held_calls": list(result.held_calls)} if result.held_calls else {})}
        case ToolResult():
            return result.to_json()
        case EffectFailed():
            return {"failed": {"code": result.code, "message": result.message}}
    raise TypeError(f"cannot journal {result!r}")


def _decode_result(kind: str, data: dict[str, Any]) -> machine.EffectResult:
    if "failed" in data:
        return EffectFailed(**data["failed"])
    if kind == EffectRecord.Kind.MODEL:
        return ModelReply(message=Message.from_json(data["message"]), usage=Usage.from_json(data["usage"]),
                          finish_reason=data.get("finish_reason", "stop"),
                          held_calls=tuple(data.get("held_calls", ())))
    return ToolResult.from_json(data)


def _step_events(commands: list[Command], results: dict[str, machine.EffectResult], step: int, checkpoint_id: UUID,
                 previous: RunState, state: RunState, run_status: str,
                 sent: dict[str, dict[str, Any]] | None = None,
                 extra_events: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = list(extra_events)  # the step's guardrail decisions come first
    for command in commands:
        result = results.get(command.key)
        if isinstance(command, CallModel) and command.key == SUMMARY_KEY and isinstance(result, ModelReply):
            start, upto = command.request.metadata["summarises"]
            events.append({"type": "context.summarised", "data": {
                "node": command.node_id, "messages_summarised": upto, "newly_summarised": upto - start,
                "summary_characters": len(state.summary.text) if state.summary else 0,
                "usage": result.usage.to_json()}})
            events.append({"type": "usage", "data": {
                "node": command.node_id, "purpose": "summary", "call": result.usage.to_json(),
                "run": {"input_tokens": state.input_tokens, "output_tokens": state.output_tokens,
                        "cost_usd": state.cost_usd}}})
        elif isinstance(command, CallModel) and isinstance(result, ModelReply):
            # The reply itself is in the checkpoint's messages (at message_seq, in the checkpoint of its step); the
            # event carries a preview, so a step's bytes are not written twice.
            appended = state.messages[len(previous.messages):]
            offset = next((i for i, m in enumerate(appended) if m == result.message), None)
            events.append({"type": "model.reply", "data": {
                "node": command.node_id, "message_seq": None if offset is None else len(previous.messages) + offset,
                "step": step,
                "preview": result.message.content[:280], "truncated": len(result.message.content) > 280,
                "tool_calls": [call.to_json() for call in result.message.tool_calls],
                "usage": result.usage.to_json(), **_route_of(command.request),
                **({"tools_selected": command.request.metadata["tools_selected"],
                    "tools_available": command.request.metadata["tools_available"]}
                   if "tools_selected" in command.request.metadata else {}),
                **({"context": (sent or {}).get(command.key, command.request.metadata["context"])}
                   if "context" in command.request.metadata else {})}})
            events.append({"type": "usage", "data": {
                "node": command.node_id, "call": result.usage.to_json(),
                "run": {"input_tokens": state.input_tokens, "output_tokens": state.output_tokens,
                        "cost_usd": state.cost_usd}}})
        elif isinstance(command, CallTool) and isinstance(result, ToolResult):
            events.append({"type": "tool.finished", "data": {
                "node": command.node_id, "call": command.call.to_json(), "is_error": result.is_error,
                "summary": result.content[:500], "latency_ms": result.latency_ms}})
    events.append({"type": "checkpoint.committed", "data": {"checkpoint_id": str(checkpoint_id), "step": step}})
    if state.pending_approval is not None and previous.pending_approval != state.pending_approval:
        events.append({"type": "approval.requested", "data": state.pending_approval.to_json()})
    if state.error and run_status == "failed":
        events.append({"type": "error", "data": dict(state.error)})
    if run_status_for(previous) != run_status or state.is_terminal:
        events.append({"type": "run.status", "data": {"status": run_status, "output": state.output,
                                                      "error": dict(state.error) if state.error else None}})
    if state.is_terminal:
        events.append(finished_event(run_status, state))
    return events


def _tool_call_audit(run_id: UUID, step: int, command: CallTool, result: Any, *,
                     agent_version_id: UUID) -> AuditEntry:
    name = command.call.name
    data: dict[str, Any] = {"run_id": str(run_id), "step": step, "agent_version_id": str(agent_version_id),
                            "tool": name, "server": name.split("__", 1)[0] if "__" in name else None,
                            "arguments": command.call.arguments}
    if isinstance(result, ToolResult):
        data.update(status="error" if result.is_error else "ok", latency_ms=result.latency_ms,
                    result_bytes=len(result.content.encode()))
    return AuditEntry(actor_kind=RUNTIME.kind, actor_id=RUNTIME.id, action="tool.call", target_type="run",
                      target_id=str(run_id), data=data)
