"""Runs: start, lifecycle (pause, resume, cancel, retry), approvals, time travel (fork, replay), steps.

Every transition is validated (IllegalTransition, a 409, names the current status and what is allowed),
bumps the run's version (fencing any worker that still holds an older one) and is recorded as a run event
and in the audit log. Work is scheduled only after the transaction commits.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from decimal import Decimal
from typing import Any
from uuid import UUID

import jsonschema
from django.db import connection, transaction
from django.utils import timezone

from billing import services as billing_services
from common.actors import Actor
from common.locks import advisory_key
from common.timestamps import format_ts
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from data_plane import streams, tasks
from data_plane.errors import AgentArchived, ApprovalArgumentsInvalid, ApprovalNotPending, IllegalTransition
from data_plane.executor import RunStepper, StepOutcome, finished_event, numbered_events, record_pending_approval, \
    run_status_for
from data_plane.models import Approval, Checkpoint, Run, RunEventRecord
from data_plane.runtime.adapters.checkpoints import PostgresCheckpointStore
from data_plane.sealing import checkpoint_store
from data_plane.runtime.core import machine
from data_plane.runtime.core.messages import AttachmentPart, Message
from data_plane.runtime.core.spec import AgentSpec, spec_from_json
from data_plane.runtime.core.state import Decision, RunState
from data_plane.experiment_selectors import Assignment, experiment_assignment
from data_plane.selectors import agent_version_get, approval_get, checkpoint_get, run_count_active, run_get
from data_plane.services.attachments import attachments_link, message_attachments
from data_plane.services.routing import run_routing_resolve
from guardrails import services as guardrail_services

ACTIVE = ("queued", "running", "paused", "waiting_approval")


def _store(tenant_schema: str) -> PostgresCheckpointStore:
    return checkpoint_store(tenant_schema)


def _tier_of(tenant_schema: str) -> str:
    """The SLA tier of the tenant owning the schema: the connection's tenant (the request's, or the task's,
    looked up at most 2 s ago) when it is that one, else read from the registry."""
    current = getattr(connection, "tenant", None)
    if getattr(current, "schema_name", None) == tenant_schema and getattr(current, "sla_tier", None):
        return current.sla_tier  # type: ignore[union-attr]
    from tenants.selectors import tenant_get_by_schema

    return tenant_get_by_schema(tenant_schema=tenant_schema).sla_tier


def dispatcher(tenant_schema: str) -> Callable[[UUID, int], None]:
    """Schedules a run's step after the current transaction commits (at once outside one), on the Celery
    queue of the tenant's SLA tier (docs/quotas.md)."""
    from data_plane.runtime.wiring import run_step_queue

    queue = run_step_queue(_tier_of(tenant_schema))

    def dispatch(run_id: UUID, step: int) -> None:
        transaction.on_commit(partial(tasks.run_step_task.apply_async, queue=queue, kwargs={
            "tenant_schema": tenant_schema, "run_id": str(run_id), "expected_step": step}))
    return dispatch


def _commit(tenant_schema: str, *, events: list[dict[str, Any]], **fields: Any) -> None:
    """Commit a checkpoint through the store (fenced) and publish its events once the transaction commits."""
    committed = _store(tenant_schema).commit(events=events, **fields)
    transaction.on_commit(partial(streams.run_publish, tenant_schema=tenant_schema, run_id=fields["run_id"],
                                  events=numbered_events(events, committed, messages=fields["state"].messages),
                                  hand_off=True))


def _wake_parent(run: Run, tenant_schema: str) -> None:
    """A sub-run that just finished lets its waiting parent collect the result."""
    if run.parent_run_id:
        parent_step = Run.objects.filter(id=run.parent_run_id, status="running").values_list("step", flat=True).first()
        if parent_step is not None:
            dispatcher(tenant_schema)(run.parent_run_id, parent_step)


def _initial_status(state: RunState) -> str:
    status = run_status_for(state)
    return "queued" if status == "running" else status


def _append_event(run: Run, type_: str, data: dict[str, Any], tenant_schema: str) -> None:
    """Append an event to a run whose row the caller holds locked; published after commit."""
    run.event_seq += 1
    event = RunEventRecord.objects.create(run=run, seq=run.event_seq, type=type_, data=data)
    transaction.on_commit(partial(streams.run_publish, tenant_schema=tenant_schema, run_id=run.id, events=[
        {"seq": event.seq, "type": type_, "data": data, "ts": format_ts(event.created_at)}], hand_off=True))



def _run_admit(tenant, *, count_start: bool = True) -> bool:  # type: ignore[no-untyped-def]
    """The tier's run quotas at a run's start (docs/quotas.md), inside the start's transaction: runs at once
    are counted under a per-tenant lock held to commit, so concurrent starts never exceed the limit (sub-runs
    are part of their parent and not counted; paused runs keep their slot); then one run-start token is taken
    (``count_start``). Raises ConcurrentRunsExceeded, RunRateExceeded. Returns whether a token was taken."""
    from billing import quotas
    from billing.wiring import tier_limiter

    limiter = tier_limiter()
    if limiter is None:
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [advisory_key("run-admission", tenant.schema_name)])
    quotas.concurrent_runs_check(tenant=tenant, active_runs=run_count_active(tenant_schema=tenant.schema_name))
    return count_start and limiter.run_rate_admit(tenant=tenant) is not None


@contextmanager
def _admitted(tenant, *, is_active: bool = True) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """``_run_admit`` around a start (nothing for a run that starts finished, such as a fork of a completed
    run's last checkpoint): the run-start token is given back if the start fails."""
    taken = _run_admit(tenant) if is_active else False
    try:
        yield
    except BaseException:
        if taken:
            from billing.wiring import tier_limiter

            limiter = tier_limiter()
            if limiter is not None:
                limiter.run_rate_refund(tenant=tenant)
        raise


def _create_run(*, tenant_schema: str, agent_version: Any, input: str, values: Mapping[str, Any] | None,
                now: float, parent_run_id: UUID | None = None, parent_key: str = "",
                attachments: tuple[AttachmentPart, ...] = (), end_user: str = "", task_kind: str = "",
                guard_events: Sequence[dict[str, Any]] = (), assignment: Assignment | None = None) -> Run:
    spec = spec_from_json(agent_version.spec)
    state, _ = machine.start(spec, input=input, now=now, values=values, attachments=attachments)
    run = Run.objects.create(agent_version=agent_version, input=input, parent_run_id=parent_run_id,
                             parent_key=parent_key, status="queued", end_user=end_user, task_kind=task_kind,
                             input_attachments=[part.to_json() for part in attachments],
                             **({"experiment_id": assignment.experiment_id,
                                 "experiment_variant_id": assignment.variant_id,
                                 "assignment_key": assignment.key} if assignment else {}),
                             routing=run_routing_resolve(spec, task_kind=task_kind))
    attachments_link(run_id=run.id, parts=attachments)
    status = _initial_status(state)
    if status == "queued":
        # Dispatched first once the transaction commits, before its events are handed to the publisher: the
        # step's task is on the turn's critical path, its subscribers' "queued" event is not (the worker's own
        # events come milliseconds later, after its commit).
        dispatcher(tenant_schema)(run.id, 0)
    _commit(tenant_schema, run_id=run.id, expected_version=0, checkpoint_id=uuid.uuid4(), parent_id=None, step=0,
            previous=None, state=state, run_status=status, release_lease=True,
            events=[*guard_events, {"type": "run.status", "data": {
                "status": status, **({"experiment": assignment.data()} if assignment else {})}}])
    record_pending_approval(run.id, state)
    run.refresh_from_db()  # the commit statement moved its status, version and head
    run.agent_version = agent_version  # refreshing forgot it: kept, the answer's serializer reads no more rows
    return run


def run_start(*, tenant, agent_id: UUID, input: str, actor: Actor, version: int | None = None,  # type: ignore[no-untyped-def]
              values: Mapping[str, Any] | None = None, attachments: Sequence[UUID] = (),
              clock: Callable[[], float] = time.time, end_user: str = "", task_kind: str = "",
              assignment_key: str = "", budget_usd: Decimal | None = None) -> Run:
    """Start a run of the agent's latest (or given) version with the user's input: its text and attached files
    (uploaded before, by id); for an end user (their memories are recalled) and a kind of task (lessons are
    tagged with it); with its own budget (``budget_usd``) when given. The input passes the agent's input
    guardrails first (redacted where they redact). While the agent has a running experiment and no version is
    given, the run goes to the variant its ``assignment_key`` (by default the end user, else a fresh random key)
    hashes to. Raises AgentNotFound, AgentArchived, AttachmentNotFound, AttachmentNotSupportedByModel,
    GuardrailBlocked, and TokenQuotaExhausted or BudgetExhausted (429) when the month's tokens or a tenant or agent
    budget is used up. The first step is dispatched after commit."""
    require_schema(tenant.schema_name)
    agent_version = agent_version_get(tenant_schema=tenant.schema_name, agent_id=agent_id, version=version,
                                      note_running_experiment=version is None)
    assignment = experiment_assignment(
        tenant_schema=tenant.schema_name, agent_id=agent_id, key=assignment_key or end_user or uuid.uuid4().hex,
    ) if version is None and agent_version.running_experiment else None
    if assignment is not None:
        agent_version = assignment.agent_version
    if agent_version.agent.is_archived:
        raise AgentArchived(f"Agent {agent_version.agent.name!r} is archived; it takes no new runs.")
    billing_services.run_admission_check(tenant=tenant, agent_id=agent_version.agent_id)
    parts = message_attachments(tenant_schema=tenant.schema_name, attachment_ids=attachments,
                                spec=spec_from_json(agent_version.spec), agent_name=agent_version.agent.name)
    agent_name = agent_version.agent.name
    guarded = guardrail_services.text_guard(tenant=tenant, agent=agent_name, point="input", text=input, actor=actor)
    with transaction.atomic(), _admitted(tenant):
        run = _create_run(tenant_schema=tenant.schema_name, agent_version=agent_version, input=guarded.text,
                          values=values, now=clock(), attachments=parts, end_user=end_user, task_kind=task_kind,
                          guard_events=guardrail_services.decision_events(guarded), assignment=assignment)
        if budget_usd is not None:
            billing_services.run_budget_set(tenant=tenant, run_id=run.id, limit_usd=budget_usd)
        guardrail_services.decisions_record(tenant=tenant, agent=agent_name, outcome=guarded, run_id=run.id,
                                            actor=actor)
        audit_event_record(tenant=tenant, actor=actor, action="run.start", target_type="run", target_id=str(run.id),
                           data={"agent": agent_version.agent.name, "version": agent_version.version,
                                 **({"attachments": [part.id for part in parts]} if parts else {}),
                                 **(assignment.data() if assignment else {}),
                                 **({"budget_usd": str(budget_usd)} if budget_usd is not None else {})})
    return run


def run_create_child(*, tenant_schema: str, parent_run_id: UUID, parent_key: str, agent_name: str, input: str,
                     dispatch: Callable[[UUID, int], None] | None = None) -> Run:
    """Start a sub-run for a parent's effect (once per parent and key). Called by the executor."""
    from data_plane.models import Agent

    agent = Agent.objects.filter(name=agent_name, is_archived=False).first()
    if agent is None:
        raise AgentArchived(f"Agent {agent_name!r} does not exist or is archived.")
    agent_version = agent_version_get(tenant_schema=tenant_schema, agent_id=agent.id)
    parent = Run.objects.filter(id=parent_run_id).values_list("end_user", "task_kind").first() or ("", "")
    with transaction.atomic():
        return _create_run(tenant_schema=tenant_schema, agent_version=agent_version, input=input, values=None,
                           now=time.time(), parent_run_id=parent_run_id, parent_key=parent_key, end_user=parent[0],
                           task_kind=parent[1])


def _transition(run: Run, *, to: str, allowed: tuple[str, ...], action: str) -> None:
    if run.status not in allowed:
        raise IllegalTransition(f"Run {run.id} is {run.status}; {action} needs it to be {' or '.join(allowed)}.")
    run.status = to
    run.version += 1


def _lease_held(run: Run) -> bool:
    return bool(run.lease_owner) and run.lease_expires_at is not None and run.lease_expires_at > timezone.now()


def run_pause(*, tenant, run_id: UUID, actor: Actor) -> Run:  # type: ignore[no-untyped-def]
    """Pause between steps: at once if no step is in flight, else when the current step commits."""
    with transaction.atomic():
        run = run_get(tenant_schema=tenant.schema_name, run_id=run_id, for_update=True)
        if run.status == "running" and _lease_held(run):
            run.pause_requested = True
            run.save(update_fields=["pause_requested", "updated_at"])
        else:
            _transition(run, to="paused", allowed=("queued", "running"), action="pause")
            run.lease_owner, run.lease_expires_at = "", None
            _append_event(run, "run.status", {"status": "paused"}, tenant.schema_name)
            run.save()
        audit_event_record(tenant=tenant, actor=actor, action="run.pause", target_type="run", target_id=str(run.id))
    return run


def run_resume(*, tenant, run_id: UUID, actor: Actor) -> Run:  # type: ignore[no-untyped-def]
    """Resume a paused run from its head checkpoint. Raises IllegalTransition."""
    with transaction.atomic():
        run = run_get(tenant_schema=tenant.schema_name, run_id=run_id, for_update=True)
        _transition(run, to="queued", allowed=("paused",), action="resume")
        run.pause_requested = False
        run.driver_step = run.step  # the task dispatched below owns the run from here
        _append_event(run, "run.status", {"status": "queued"}, tenant.schema_name)
        run.save()
        dispatcher(tenant.schema_name)(run.id, run.step)
        audit_event_record(tenant=tenant, actor=actor, action="run.resume", target_type="run", target_id=str(run.id))
    return run


def run_cancel(*, tenant, run_id: UUID, actor: Actor, reason: str = "") -> Run:  # type: ignore[no-untyped-def]
    """Terminate a run and its active sub-runs. An in-flight step is fenced off and its calls cancelled."""
    with transaction.atomic():
        run = run_get(tenant_schema=tenant.schema_name, run_id=run_id, for_update=True)
        _cancel(run, reason=reason or f"cancelled by {actor}", tenant_schema=tenant.schema_name)
        audit_event_record(tenant=tenant, actor=actor, action="run.cancel", target_type="run", target_id=str(run.id),
                           data={"reason": reason})
    return run


def _cancel(run: Run, *, reason: str, tenant_schema: str) -> None:
    _transition(run, to="cancelled", allowed=ACTIVE, action="cancel")
    run.status_reason = reason[:500]
    run.finished_at = timezone.now()
    run.lease_owner, run.lease_expires_at, run.pause_requested = "", None, False
    _append_event(run, "run.status", {"status": "cancelled", "reason": reason}, tenant_schema)
    finished = finished_event("cancelled", None, reason=reason)
    _append_event(run, finished["type"], finished["data"], tenant_schema)
    run.save()
    Approval.objects.filter(run=run, status=Approval.Status.PENDING).update(status=Approval.Status.CANCELLED)
    for child in Run.objects.select_for_update().filter(parent_run=run, status__in=ACTIVE):
        _cancel(child, reason=f"parent run {run.id} was cancelled", tenant_schema=tenant_schema)
    _wake_parent(run, tenant_schema)


def run_retry(*, tenant, run_id: UUID, actor: Actor) -> Run:  # type: ignore[no-untyped-def]
    """Retry a failed run from its last checkpoint: what was already paid for (recorded model and tool
    results) is reused, not paid again. Raises IllegalTransition."""
    with transaction.atomic():
        run = run_get(tenant_schema=tenant.schema_name, run_id=run_id, for_update=True)
        if run.status != "failed":
            raise IllegalTransition(f"Run {run.id} is {run.status}; only a failed run can be retried.")
        if run.parent_run_id is None:
            _run_admit(tenant)
        head = _store(tenant.schema_name).load(run.head_id)
        revived = machine.revive(head.state, spec_from_json(run.agent_version.spec))
        status = _initial_status(revived)
        _commit(tenant.schema_name, run_id=run.id, expected_version=run.version, checkpoint_id=uuid.uuid4(),
                parent_id=head.id, step=head.step + 1, previous=head.state, state=revived, run_status=status,
                release_lease=True, events=[{"type": "run.status", "data": {"status": status, "retry": True}}])
        Run.objects.filter(id=run.id).update(finished_at=None, status_reason="", was_retried=True)
        record_pending_approval(run.id, revived)
        if status == "queued":
            dispatcher(tenant.schema_name)(run.id, head.step + 1)
        audit_event_record(tenant=tenant, actor=actor, action="run.retry", target_type="run", target_id=str(run.id))
    run.refresh_from_db()
    return run


def run_message_send(*, tenant, run_id: UUID, text: str, actor: Actor,  # type: ignore[no-untyped-def]
                     attachments: Sequence[UUID] = (), clock: Callable[[], float] = time.time) -> Run:
    """Continue a completed run's conversation with the user's next message (its text and attached files): the
    same run takes another turn from its head checkpoint (its subscribers keep following it). Raises
    IllegalTransition while the run is still working or waiting, and for a failed (retry it) or cancelled run;
    AttachmentNotFound, AttachmentNotSupportedByModel, GuardrailBlocked (the agent's input guardrails)."""
    current = run_get(tenant_schema=tenant.schema_name, run_id=run_id)
    _require_completed(current)  # a run that takes no message answers 409, whatever the message says
    agent_name = current.agent_version.agent.name
    guarded = guardrail_services.text_guard(tenant=tenant, agent=agent_name, point="input", text=text, actor=actor,
                                            run_id=run_id)  # outside the transaction: a refusal stays recorded
    text = guarded.text
    with transaction.atomic():
        run = run_get(tenant_schema=tenant.schema_name, run_id=run_id, for_update=True)
        _require_completed(run)  # again, under the lock: it may have changed since
        if run.parent_run_id is None:
            _run_admit(tenant, count_start=False)  # a completed run active again takes a slot, not a start
        spec = spec_from_json(run.agent_version.spec)
        parts = message_attachments(tenant_schema=tenant.schema_name, attachment_ids=attachments, spec=spec,
                                    agent_name=run.agent_version.agent.name)
        guardrail_services.decisions_record(tenant=tenant, agent=agent_name, outcome=guarded, run_id=run.id,
                                            actor=actor)
        head = _store(tenant.schema_name).load(run.head_id)
        message = Message(role="user", content=text, attachments=parts)
        state = head.state.evolve(messages=head.state.messages + (message,))
        state = machine.reopen(state, spec, now=clock())
        status = _initial_status(state)
        user_event: dict[str, Any] = {"message_seq": len(head.state.messages), "content": text}
        if parts:
            user_event["attachments"] = [part.to_json() for part in parts]
        _commit(tenant.schema_name, run_id=run.id, expected_version=run.version, checkpoint_id=uuid.uuid4(),
                parent_id=head.id, step=head.step + 1, previous=head.state, state=state, run_status=status,
                release_lease=True, events=[
                    *guardrail_services.decision_events(guarded),
                    {"type": "message.user", "data": user_event},
                    {"type": "run.status", "data": {"status": status}}])
        attachments_link(run_id=run.id, parts=parts)
        Run.objects.filter(id=run.id).update(finished_at=None, status_reason="", output="")
        record_pending_approval(run.id, state)
        if status == "queued":
            dispatcher(tenant.schema_name)(run.id, head.step + 1)
        audit_event_record(tenant=tenant, actor=actor, action="run.message", target_type="run",
                           target_id=str(run.id), data={"characters": len(text),
                                                        **({"attachments": [p.id for p in parts]} if parts else {})})
    run.refresh_from_db()
    return run


def _require_completed(run: Run) -> None:
    if run.status != "completed":
        hint = {"failed": " Retry it first.", "cancelled": " Start a new run."}.get(
            run.status, " Wait for its run.finished event, or cancel it.")
        raise IllegalTransition(f"Run {run.id} is {run.status}; a message continues a completed run's "
                                f"conversation.{hint}")


def approval_decide(*, tenant, approval_id: UUID, approved: bool, actor: Actor,  # type: ignore[no-untyped-def]
                    arguments: Mapping[str, Mapping[str, Any]] | None = None, comment: str = "",
                    clock: Callable[[], float] = time.time) -> Approval:
    """Approve (optionally with edited tool arguments, checked against each tool's schema) or reject a
    pending approval; the run resumes. Raises ApprovalNotPending, ApprovalArgumentsInvalid."""
    arguments = dict(arguments or {})
    with transaction.atomic():
        approval = approval_get(tenant_schema=tenant.schema_name, approval_id=approval_id, for_update=True)
        run = run_get(tenant_schema=tenant.schema_name, run_id=approval.run_id, for_update=True)
        if approval.status != Approval.Status.PENDING or run.status != "waiting_approval":
            raise ApprovalNotPending(f"Approval {approval.id} is {approval.status} (run {run.id} is {run.status}); "
                                     "only a pending approval of a waiting run can be decided.")
        spec = spec_from_json(run.agent_version.spec)
        _check_edited_arguments(spec, approval, arguments)
        store = _store(tenant.schema_name)
        head = store.load(run.head_id)
        decision = Decision(approval_id=approval.key, approved=approved, arguments=arguments, comment=comment)
        try:
            state, _ = machine.step(head.state, machine.ApprovalDecided(decision=decision, now=clock()), spec=spec)
        except machine.InvalidEvent as exc:
            raise ApprovalArgumentsInvalid(str(exc)) from None
        status = _initial_status(state)
        _commit(tenant.schema_name, run_id=run.id, expected_version=run.version, checkpoint_id=uuid.uuid4(),
                parent_id=head.id, step=head.step + 1, previous=head.state, state=state, run_status=status,
                release_lease=True, reason=(state.error or {}).get("message", ""), events=[
                    {"type": "approval.decided",
                     "data": {"approval_id": str(approval.id), "approved": approved, "comment": comment}},
                    {"type": "run.status", "data": {"status": status}},
                    *([finished_event(status, state)] if state.is_terminal else [])])
        approval.status = Approval.Status.APPROVED if approved else Approval.Status.REJECTED
        approval.decided_by, approval.decided_at = str(actor), timezone.now()
        approval.comment, approval.arguments = comment, arguments
        approval.save()
        record_pending_approval(run.id, state)
        if status == "queued":
            dispatcher(tenant.schema_name)(run.id, head.step + 1)
        elif status in ("completed", "failed"):
            _wake_parent(run, tenant.schema_name)
        audit_event_record(tenant=tenant, actor=actor, action=f"approval.{approval.status}", target_type="run",
                           target_id=str(run.id), data={"approval_id": str(approval.id), "edited": sorted(arguments)})
    return approval


def _check_edited_arguments(spec: AgentSpec, approval: Approval, arguments: Mapping[str, Any]) -> None:
    calls = {call["id"]: call for call in approval.calls}
    errors = {}
    for call_id, edited in arguments.items():
        call = calls.get(call_id)
        if call is None:
            errors[call_id] = [f"No call {call_id!r} awaits approval; calls: {', '.join(calls) or 'none'}."]
            continue
        tool = spec.tool(call["name"])
        try:
            jsonschema.validate(edited, tool.input_schema if tool else {"type": "object"})
        except jsonschema.ValidationError as exc:
            errors[call_id] = [f"Arguments for {call['name']} do not match its input schema: {exc.message}"]
    if errors:
        raise ApprovalArgumentsInvalid("Edited arguments are invalid: " + "; ".join(
            message for messages in errors.values() for message in messages), extra={"errors": {"arguments": errors}})


def run_fork(*, tenant, run_id: UUID, checkpoint_id: UUID, actor: Actor,  # type: ignore[no-untyped-def]
             values: Mapping[str, Any] | None = None, append_messages: list[Message] | None = None,
             reexecute: bool = False, clock: Callable[[], float] = time.time) -> Run:
    """A new run that starts from a checkpoint of another (time travel), optionally with patched values or
    added messages. The original branch is untouched. Without ``reexecute``, model and tool results the
    source branch recorded for the same requests are reused instead of paid again (replay)."""
    require_schema(tenant.schema_name)
    checkpoint = checkpoint_get(tenant_schema=tenant.schema_name, run_id=run_id, checkpoint_id=checkpoint_id)
    source = run_get(tenant_schema=tenant.schema_name, run_id=run_id)
    store = _store(tenant.schema_name)
    loaded = store.load(checkpoint.id)
    spec = spec_from_json(source.agent_version.spec)
    state = loaded.state.evolve(values={**loaded.state.values, **(values or {})},
                                messages=loaded.state.messages + tuple(append_messages or ()))
    if state.is_terminal and append_messages:
        state = machine.reopen(state, spec, now=clock())
    status = _initial_status(state)
    with transaction.atomic(), _admitted(tenant, is_active=status in ACTIVE):
        run = Run.objects.create(agent_version=source.agent_version, input=source.input,
                                 input_attachments=source.input_attachments, base_run=source,
                                 end_user=source.end_user, task_kind=source.task_kind, routing=source.routing,
                                 base_message_count=len(loaded.state.messages), base_step=checkpoint.step,
                                 source_checkpoint=checkpoint, reexecute=reexecute, status=status,
                                 step=checkpoint.step)
        _commit(tenant.schema_name, run_id=run.id, expected_version=0, checkpoint_id=uuid.uuid4(),
                parent_id=checkpoint.id, step=checkpoint.step, previous=loaded.state, state=state,
                changed_values=dict(values or {}), run_status=status, release_lease=True,
                events=[{"type": "run.status", "data": {"status": status, "forked_from": str(checkpoint.id)}}])
        record_pending_approval(run.id, state)
        if status == "queued":
            dispatcher(tenant.schema_name)(run.id, checkpoint.step)
        audit_event_record(tenant=tenant, actor=actor, action="run.fork", target_type="run", target_id=str(run.id),
                           data={"source_run": str(run_id), "checkpoint": str(checkpoint.id),
                                 "patched_values": sorted(values or {}), "reexecute": reexecute})
    run.refresh_from_db()
    return run


def run_step(*, tenant, run_id: UUID, expected_step: int) -> StepOutcome:  # type: ignore[no-untyped-def]
    """Execute one step of a run (the Celery task's body). Safe to deliver twice: the claim fences it."""
    from data_plane.runtime.wiring import stepper_for

    stepper: RunStepper = stepper_for(tenant=tenant, dispatch=dispatcher(tenant.schema_name))
    return stepper.run_step(run_id, expected_step)


def run_step_fail(*, tenant, run_id: UUID, code: str, message: str) -> None:  # type: ignore[no-untyped-def]
    """Fail a run whose step kept failing transiently (retries exhausted)."""
    from data_plane.runtime.wiring import stepper_for

    stepper_for(tenant=tenant, dispatch=dispatcher(tenant.schema_name)).fail(run_id, code=code, message=message)


RETENTION_DAYS_BY_TIER = {"standard": 7, "professional": 30, "enterprise": 90}


def checkpoints_prune(*, tenant, now=None) -> int:  # type: ignore[no-untyped-def]
    """Prune checkpoints older than the tenant tier's retention, keeping every run's head: they can no longer
    be read, listed, replayed or forked. One that changed no message or value and holds no event and no model call
    is deleted; the others keep their row without its control, as the later states (the head's, and forks') are
    made of their messages and values, the run's events of theirs, and its journal of their model calls. Returns
    how many were pruned. Idempotent."""
    require_schema(tenant.schema_name)
    days = RETENTION_DAYS_BY_TIER.get(tenant.sla_tier, 7)
    cutoff = (now or timezone.now()) - timezone.timedelta(days=days)
    heads = Run.objects.exclude(head_id=None).values("head_id")
    expired = Checkpoint.objects.filter(created_at__lt=cutoff, control__isnull=False).exclude(id__in=heads)
    deleted, _ = expired.filter(messages=None, changed_values=None, sealed_values=None, events=None,
                                 effects=None).delete()
    return deleted + expired.update(control=None)
