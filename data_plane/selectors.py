from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, BinaryIO
from uuid import UUID

from django.db import connection
from django.db.models import Case, F, IntegerField, Max, Q, QuerySet, TextField, When
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast

from common.schemas import require_schema
from data_plane.attachment_storage import BlobMissing, BlobStorage
from data_plane.runtime.core.media import EXTENSIONS
from common.timestamps import format_ts
from data_plane.errors import AgentNotFound, ApprovalNotFound, AttachmentNotFound, CheckpointNotFound, \
    McpServerNotFound, PingNotFound, RunNotFound
from data_plane.models import Agent, AgentVersion, Approval, Attachment, Checkpoint, EffectRecord, Experiment, \
    McpServer, McpTool, Ping, Run, RunEvent, ToolPermission, ToolSettings
from data_plane.sealing import checkpoint_store, run_message_open
from data_plane.runtime.core.state import RunState


def ping_list(*, tenant_schema: str) -> QuerySet[Ping]:
    require_schema(tenant_schema)
    return Ping.objects.all()


def ping_get(*, tenant_schema: str, ping_id: UUID) -> Ping:
    """One ping of the tenant. Raises PingNotFound (also for another tenant's id), WrongSchema."""
    require_schema(tenant_schema)
    try:
        return Ping.objects.get(id=ping_id)
    except Ping.DoesNotExist:
        raise PingNotFound(f"Ping {ping_id} not found.") from None


def attachment_list(*, tenant_schema: str, run_id: UUID | None = None) -> QuerySet[Attachment]:
    """The tenant's attachments, newest first; with ``run_id``, those a message of that run carried first."""
    require_schema(tenant_schema)
    attachments = Attachment.objects.all()
    return attachments.filter(run_id=run_id) if run_id is not None else attachments


def attachment_get(*, tenant_schema: str, attachment_id: UUID, for_update: bool = False) -> Attachment:
    """One attachment of the tenant. Raises AttachmentNotFound (also for another tenant's id)."""
    require_schema(tenant_schema)
    attachments = Attachment.objects.select_for_update() if for_update else Attachment.objects
    try:
        return attachments.get(id=attachment_id)
    except Attachment.DoesNotExist:
        raise AttachmentNotFound(f"Attachment {attachment_id} not found.") from None


@dataclass(frozen=True)
class AttachmentContent:
    file: BinaryIO  # the caller closes it (a FileResponse does)
    media_type: str
    sha256: str
    download_name: str  # the uploader's name with the extension of the real type, or the id


def attachment_content(*, tenant_schema: str, attachment_id: UUID,
                       storage: BlobStorage | None = None) -> AttachmentContent:
    """An attachment's bytes, opened. Raises AttachmentNotFound (also when its object is missing)."""
    attachment = attachment_get(tenant_schema=tenant_schema, attachment_id=attachment_id)
    if storage is None:
        from data_plane.runtime.wiring import attachment_storage

        storage = attachment_storage()
    try:
        file = storage.open(attachment.storage_key)
    except BlobMissing:
        raise AttachmentNotFound(f"Attachment {attachment_id}'s content is missing from storage; upload it "
                                 "again.") from None
    stem = attachment.filename.rsplit(".", 1)[0] if attachment.filename else ""
    return AttachmentContent(file=file, media_type=attachment.media_type, sha256=attachment.sha256,
                             download_name=f"{stem or attachment.id}.{EXTENSIONS.get(attachment.media_type, 'bin')}")


def attachment_list_by_ids(*, tenant_schema: str, attachment_ids: list[UUID]) -> list[Attachment]:
    """The attachments with these ids, in the order given (each once). Raises AttachmentNotFound naming every
    id that is not the tenant's."""
    require_schema(tenant_schema)
    wanted = list(dict.fromkeys(attachment_ids))
    found = {attachment.id: attachment for attachment in Attachment.objects.filter(id__in=wanted)}
    missing = [str(attachment_id) for attachment_id in wanted if attachment_id not in found]
    if missing:
        raise AttachmentNotFound(f"Attachment{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found; "
                                 "upload files with POST /v1/attachments and send the ids it returns.",
                                 extra={"errors": {"attachments": [f"{i} not found" for i in missing]}})
    return [found[attachment_id] for attachment_id in wanted]


def agent_list(*, tenant_schema: str, include_archived: bool = False) -> QuerySet[Agent]:
    require_schema(tenant_schema)
    agents = Agent.objects.all()
    return agents if include_archived else agents.filter(is_archived=False)


def agent_get(*, tenant_schema: str, agent_id: UUID, for_update: bool = False) -> Agent:
    """One agent of the tenant. Raises AgentNotFound (also for another tenant's id)."""
    require_schema(tenant_schema)
    agents = Agent.objects.select_for_update() if for_update else Agent.objects
    try:
        return agents.get(id=agent_id)
    except Agent.DoesNotExist:
        raise AgentNotFound(f"Agent {agent_id} not found.") from None


def agent_version_list(*, tenant_schema: str, agent_id: UUID) -> QuerySet[AgentVersion]:
    """The agent's versions, newest first. Raises AgentNotFound (also for another tenant's id)."""
    agent = agent_get(tenant_schema=tenant_schema, agent_id=agent_id)
    return AgentVersion.objects.filter(agent=agent).order_by("-version")


def agent_version_get(*, tenant_schema: str, agent_id: UUID, version: int | None = None,
                      note_running_experiment: bool = False) -> AgentVersion:
    """The agent's given version, or its latest, with its agent (one query either way). Raises AgentNotFound.
    ``note_running_experiment``: the same query also says whether an experiment of the agent is running (the
    version's ``running_experiment``), so a run's start looks for its variant only then.

    Every run's start reads it, so the query is written once, not built by the ORM at each call (the ORM took
    about 1 ms to build it, against 0.1 ms for the round trip); the rows become models as the ORM's would."""
    require_schema(tenant_schema)
    row = None
    if version is None or 0 <= version <= _LARGEST_VERSION:  # a larger number is no version (and no SQL integer)
        with connection.cursor() as cursor:
            cursor.execute(_AGENT_VERSION_SQL[note_running_experiment], [agent_id, version])
            row = cursor.fetchone()
    if row is None:
        agent = agent_get(tenant_schema=tenant_schema, agent_id=agent_id)  # raises AgentNotFound
        number = version if version is not None else agent.latest_version
        raise AgentNotFound(f"Agent {agent.name!r} has no version {number} (latest: {agent.latest_version}).")
    split = len(_VERSION_FIELDS)
    found = _from_row(AgentVersion, _VERSION_FIELDS, row[:split])
    found.agent = _from_row(Agent, _AGENT_FIELDS, row[split:split + len(_AGENT_FIELDS)])
    if note_running_experiment:
        found.running_experiment = row[-1]  # type: ignore[attr-defined]
    return found


_LARGEST_VERSION = 2 ** 31 - 1  # AgentVersion.version is a Postgres integer
_VERSION_FIELDS = AgentVersion._meta.concrete_fields
_AGENT_FIELDS = Agent._meta.concrete_fields


def _agent_version_sql(*, note_running_experiment: bool) -> str:
    columns = [f"v.{field.column}" for field in _VERSION_FIELDS] + [f"a.{field.column}" for field in _AGENT_FIELDS]
    if note_running_experiment:
        columns.append(f"EXISTS (SELECT 1 FROM {Experiment._meta.db_table} e WHERE e.agent_id = v.agent_id "
                       f"AND e.status = '{Experiment.Status.RUNNING.value}')")
    return (f"SELECT {', '.join(columns)} FROM {AgentVersion._meta.db_table} v "
            f"JOIN {Agent._meta.db_table} a ON a.id = v.agent_id "
            "WHERE v.agent_id = %s AND v.version = coalesce(%s::integer, a.latest_version)")


_AGENT_VERSION_SQL = {noted: _agent_version_sql(note_running_experiment=noted) for noted in (False, True)}


def _from_row(model: Any, fields: Any, values: Sequence[Any]) -> Any:
    """A model instance from its concrete fields' column values, converted as the ORM converts them."""
    converted = [field.from_db_value(value, None, connection) if hasattr(field, "from_db_value") else value
                 for field, value in zip(fields, values)]
    return model.from_db(connection.alias, [field.attname for field in fields], converted)


def run_list(*, tenant_schema: str, status: str | None = None, agent_id: UUID | None = None,
             parent_run_id: UUID | None = None) -> QuerySet[Run]:
    require_schema(tenant_schema)
    runs = Run.objects.select_related("agent_version__agent", "experiment_variant")
    if status:
        runs = runs.filter(status=status)
    if agent_id:
        runs = runs.filter(agent_version__agent_id=agent_id)
    if parent_run_id:
        runs = runs.filter(parent_run_id=parent_run_id)
    return runs


def run_get(*, tenant_schema: str, run_id: UUID, for_update: bool = False) -> Run:
    """One run of the tenant. Raises RunNotFound (also for another tenant's id)."""
    require_schema(tenant_schema)
    runs = Run.objects.select_for_update(of=("self",)) if for_update else Run.objects
    try:
        return runs.select_related("agent_version__agent", "experiment_variant").get(id=run_id)
    except Run.DoesNotExist:
        raise RunNotFound(f"Run {run_id} not found.") from None


def run_count_active(*, tenant_schema: str) -> int:
    """How many of the tenant's runs hold a slot of its concurrent-runs quota: top-level runs queued, running,
    paused or waiting for approval (sub-runs are part of their parent)."""
    require_schema(tenant_schema)
    return Run.objects.filter(status__in=("queued", "running", "paused", "waiting_approval"),
                              parent_run__isnull=True).count()


# What the checkpoint APIs show of a checkpoint: not the step's messages, values and events (a state is read
# whole, by checkpoint_state; events by the events API), which would be most of the bytes of a listing.
_CHECKPOINT_PAYLOAD = ("messages", "changed_values", "sealed_values", "events")


def checkpoint_list(*, tenant_schema: str, run_id: UUID) -> QuerySet[Checkpoint]:
    """The run's checkpoints, oldest first, without those retention pruned. Raises RunNotFound."""
    run = run_get(tenant_schema=tenant_schema, run_id=run_id)
    return Checkpoint.objects.filter(run=run, control__isnull=False).defer(*_CHECKPOINT_PAYLOAD).order_by("step")


def checkpoint_get(*, tenant_schema: str, run_id: UUID, checkpoint_id: UUID) -> Checkpoint:
    """Raises CheckpointNotFound (also when it belongs to another run or tenant)."""
    require_schema(tenant_schema)
    found = (Checkpoint.objects.filter(run_id=run_id, id=checkpoint_id, control__isnull=False)
             .defer(*_CHECKPOINT_PAYLOAD).first())
    if found is None:
        raise CheckpointNotFound(f"Checkpoint {checkpoint_id} of run {run_id} not found.")
    return found


def checkpoint_state(*, tenant_schema: str, run_id: UUID, checkpoint_id: UUID) -> RunState:
    """The full state at a checkpoint, rebuilt from its lineage. Raises CheckpointNotFound."""
    checkpoint = checkpoint_get(tenant_schema=tenant_schema, run_id=run_id, checkpoint_id=checkpoint_id)
    return checkpoint_store(tenant_schema).load(checkpoint.id).state


def approval_list(*, tenant_schema: str, status: str | None = None, run_id: UUID | None = None
                  ) -> QuerySet[Approval]:
    require_schema(tenant_schema)
    approvals = Approval.objects.all()
    if status:
        approvals = approvals.filter(status=status)
    if run_id:
        approvals = approvals.filter(run_id=run_id)
    return approvals


def approval_get(*, tenant_schema: str, approval_id: UUID, for_update: bool = False) -> Approval:
    require_schema(tenant_schema)
    approvals = Approval.objects.select_for_update() if for_update else Approval.objects
    try:
        return approvals.get(id=approval_id)
    except Approval.DoesNotExist:
        raise ApprovalNotFound(f"Approval {approval_id} not found.") from None


# A model reply's whole message, out of the messages of the checkpoint of its step (by the unique (run, step)):
# element message_seq - first_seq of that step's array. Events written before the reply's step was put in its
# data (migration 0021 added it to the older ones) find none.
_REPLY_MESSAGE_SQL = (
    "(SELECT (c.messages::json -> ((data_plane_runevent_all.data->>'message_seq')::int - c.first_seq))::text "
    "FROM data_plane_checkpoint c WHERE c.run_id = data_plane_runevent_all.run_id "
    "AND c.step = (data_plane_runevent_all.data->>'step')::int)")


def run_event_list(*, tenant_schema: str, run_id: UUID, after_seq: int = 0) -> QuerySet[RunEvent]:
    """A run's events after ``after_seq``, in order; a model reply's whole message is annotated as
    ``message_json`` (the event itself keeps only a preview: the checkpoint holds the message). Raises
    RunNotFound."""
    return _run_events(run_get(tenant_schema=tenant_schema, run_id=run_id), after_seq)


def _run_events(run: Run, after_seq: int) -> QuerySet[RunEvent]:
    return (RunEvent.objects.filter(run=run, batch_last_seq__gt=after_seq, seq__gt=after_seq).order_by("seq")
            .annotate(message_position=Cast(KeyTextTransform("message_seq", "data"), IntegerField()))
            .annotate(message_json=Case(When(type="model.reply", then=RawSQL(_REPLY_MESSAGE_SQL, [])),
                                        output_field=TextField())))


def run_event_window(*, tenant_schema: str, run_id: UUID, after_seq: int = 0, offset: int = 0,
                     limit: int) -> tuple[int, list[RunEvent]]:
    """How many events the run has after ``after_seq``, and those from ``offset`` on (at most ``limit``), as
    ``run_event_list`` gives them. Events are numbered from 1 to the run's ``event_seq`` without gaps, so the count
    is the run row's and the page reads only the rows that hold its events: a page costs the same on a long run
    as on a short one. Raises RunNotFound."""
    run = run_get(tenant_schema=tenant_schema, run_id=run_id)
    first = after_seq + offset
    events = list(_run_events(run, first).filter(batch_first_seq__lte=first + limit)[:limit])
    return max(0, run.event_seq - after_seq), events


def run_event_page(*, tenant_schema: str, run_id: UUID, after_seq: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` of a run's events after ``after_seq`` as streams send them: {seq, type, data, ts}, a
    model reply with its whole message. Raises RunNotFound."""
    _, events = run_event_window(tenant_schema=tenant_schema, run_id=run_id, after_seq=after_seq, limit=limit)
    return [event_payload(event) for event in events]


def event_payload(event: RunEvent) -> dict[str, Any]:
    data = event.data
    message_json = getattr(event, "message_json", None)
    if message_json and event.type == "model.reply":
        message = json.loads(message_json)
        if isinstance(message, str):  # sealed (the tenant encrypts payloads); the connection is in its schema
            message = json.loads(run_message_open(tenant_schema=connection.schema_name, run_id=event.run_id,
                                                  seq=event.message_position, sealed=message))
        data = {**data, "message": message}
    return {"seq": event.seq, "type": event.type, "data": data, "ts": format_ts(event.created_at)}


def run_event_last_seq(*, tenant_schema: str, run_id: UUID, type: str | None = None,
                       up_to: int | None = None) -> int:
    """The number of the run's last event (of ``type``, at or before ``up_to``); 0 when there is none."""
    require_schema(tenant_schema)
    events = RunEvent.objects.filter(run_id=run_id)
    if type is not None:
        events = events.filter(type=type)
    if up_to is not None:
        events = events.filter(seq__lte=up_to, batch_first_seq__lte=up_to)
    return events.aggregate(last=Max("seq"))["last"] or 0


def tool_permission_effective(*, tenant_schema: str, agent_id: UUID | None, tool: str) -> ToolPermission | None:
    """The rule that decides a call of ``tool`` by the agent: the agent's own before the tenant-wide one, an
    exact name before its server's wildcard (``<server>__*``). None: allowed."""
    require_schema(tenant_schema)
    names = [tool] + ([tool.split("__", 1)[0] + "__*"] if "__" in tool else [])
    rules = list(ToolPermission.objects.filter(Q(agent_id=agent_id) | Q(agent__isnull=True), tool__in=names))
    rules.sort(key=lambda rule: (rule.agent_id is None, rule.tool != tool))
    return rules[0] if rules else None


def mcp_server_list(*, tenant_schema: str, include_archived: bool = False) -> QuerySet[McpServer]:
    require_schema(tenant_schema)
    servers = McpServer.objects.all()
    return servers if include_archived else servers.exclude(status=McpServer.Status.ARCHIVED)


def mcp_server_get(*, tenant_schema: str, server_id: UUID) -> McpServer:
    require_schema(tenant_schema)
    server = McpServer.objects.filter(id=server_id).exclude(status=McpServer.Status.ARCHIVED).first()
    if server is None:
        raise McpServerNotFound(f"MCP server {server_id} not found.")
    return server


def tool_catalogue(*, tenant_schema: str, query: str = "", server: str = "") -> list[dict[str, Any]]:
    """The tools agents can be given: the built-in ones and the active tools of active MCP servers, matching
    ``query`` (words in the name or description, all of them) and ``server`` (a server's name, or 'builtin')."""
    from data_plane.tools import BUILTIN_TOOLS

    require_schema(tenant_schema)
    words = [word.lower() for word in query.split()]
    entries: list[dict[str, Any]] = []
    if server in ("", "builtin"):
        entries += [{"name": t.name, "description": t.description, "input_schema": t.input_schema,
                     "server": None, "version": 1} for t in BUILTIN_TOOLS.values()]
    tools = McpTool.objects.select_related("server").filter(is_active=True, server__status__in=("active", "error"))
    if server and server != "builtin":
        tools = tools.filter(server__name=server)
    elif server == "builtin":
        tools = tools.none()
    entries += [{"name": t.name, "description": t.description, "input_schema": t.input_schema,
                 "server": t.server.name, "version": t.version} for t in tools]
    return [e for e in entries if all(w in f"{e['name']} {e['description']}".lower() for w in words)]


def tool_permission_list(*, tenant_schema: str, agent_id: UUID | None = None) -> QuerySet[ToolPermission]:
    require_schema(tenant_schema)
    permissions = ToolPermission.objects.all()
    return permissions.filter(agent_id=agent_id) if agent_id else permissions


def tool_call_stats(*, tenant_schema: str, days: int = 7) -> list[dict[str, Any]]:
    """Per tool, over the last ``days``: calls, how many succeeded (no error, tool's own or transport), the
    success rate, and latency p50/p95 in milliseconds; from the effect journal (replayed results excluded): its
    table, which holds every tool call (each is marked started there before it is made)."""
    require_schema(tenant_schema)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT name, count(*),
                       count(*) FILTER (WHERE status = 'succeeded' AND NOT coalesce((result->>'is_error')::boolean,
                                                                                 false)),
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
                FROM "{tenant_schema}".data_plane_effectrecord
                WHERE kind = 'tool' AND status <> 'started' AND reused_from IS NULL
                  AND started_at > now() - make_interval(days => %s)
                GROUP BY name ORDER BY name""", [days])
        rows = cursor.fetchall()
    return [{"tool": name, "calls": calls, "succeeded": ok, "success_rate": round(ok / calls, 4) if calls else None,
             "latency_p50_ms": round(p50, 3) if p50 is not None else None,
             "latency_p95_ms": round(p95, 3) if p95 is not None else None} for name, calls, ok, p50, p95 in rows]


def tool_settings_get(*, tenant_schema: str) -> ToolSettings:
    """The tenant's built-in tools settings (defaults when never set: http_fetch reaches no host)."""
    require_schema(tenant_schema)
    return ToolSettings.objects.filter(id=1).first() or ToolSettings()


# --- usage: what the billing context's collector reads --------------------------------------------------------

@dataclass(frozen=True)
class FinishedEffect:
    """A journalled model or tool call that has finished (succeeded or failed), with whom it served."""

    journal_id: int
    idempotency_key: str
    kind: str  # "model" or "tool"
    name: str  # the model that answered, or the tool
    run_id: UUID
    step: int
    agent_id: UUID
    agent_name: str
    session_id: UUID  # the top-level run above the effect's run (itself when it is top-level)
    end_user: str
    status: str  # "succeeded" or "failed"
    attempts: int  # how many times the call was started (a retried step counts again)
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int  # of input_tokens, those the provider served from its prompt cache
    cost_usd: Decimal
    latency_ms: float | None
    is_error: bool  # a tool's result that says it failed
    reused_from: int | None  # a replayed result: the journal row it was copied from (nothing was paid)
    purpose: str  # "summary" for the context's summarising calls, else ""
    route: Any  # the routing decision the request recorded, if any
    finished_at: datetime


@dataclass(frozen=True)
class FinishedRun:
    """A run that has finished (completed, failed or cancelled), with its totals."""

    run_id: UUID
    agent_id: UUID
    agent_name: str
    session_id: UUID
    parent_run_id: UUID | None
    status: str
    steps: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    end_user: str
    task_kind: str
    started_at: datetime | None
    finished_at: datetime


FINISHED_RUN_STATUSES = ("completed", "failed", "cancelled")
_MAX_RUN_DEPTH = 64


def _session_ids(run_ids: set[UUID]) -> dict[UUID, UUID]:
    """Each run's top-level run (through parent_run), a query per level of sub-runs."""
    parent_of: dict[UUID, UUID | None] = {}
    todo = set(run_ids)
    for _ in range(_MAX_RUN_DEPTH):
        todo -= set(parent_of)
        if not todo:
            break
        parent_of.update(Run.objects.filter(id__in=todo).values_list("id", "parent_run_id"))
        todo = {parent for parent in parent_of.values() if parent is not None}
    roots: dict[UUID, UUID] = {}
    for run_id in run_ids:
        current, seen = run_id, 0
        while parent_of.get(current) is not None and seen < _MAX_RUN_DEPTH:
            current, seen = parent_of[current], seen + 1  # type: ignore[assignment]
        roots[run_id] = current
    return roots


def effect_list_finished(*, tenant_schema: str, since: datetime | None, until: datetime,
                         after: tuple[datetime, int] | None = None, limit: int = 5000) -> list[FinishedEffect]:
    """The tenant's model and tool calls that finished in [since, until), in (finished_at, journal id) order,
    after ``after`` (the last one of the previous page), at most ``limit``. Replayed results are included
    (``reused_from`` set); a model call a budget refused is not (it was never made). Raises WrongSchema."""
    require_schema(tenant_schema)
    effects = EffectRecord.objects.filter(finished_at__lt=until).exclude(status=EffectRecord.Status.STARTED) \
        .exclude(status=EffectRecord.Status.FAILED, result__contains={"failed": {"code": "budget_exceeded"}})
    if since is not None:  # and on the rows they come from, so older checkpoints' calls are not even read
        effects = effects.filter(finished_at__gte=since, batch_created_at__gte=since)
    if after is not None:
        effects = effects.filter(Q(finished_at__gt=after[0]) | Q(finished_at=after[0], id__gt=after[1]))
    rows = list(effects.order_by("finished_at", "id").annotate(
        agent_id=F("run__agent_version__agent_id"), agent_name=F("run__agent_version__agent__name"),
        end_user=F("run__end_user"),
        cached=KeyTextTransform("cached_input_tokens", KeyTransform("usage", "result")),
        tool_error=KeyTextTransform("is_error", "result"),
        purpose=KeyTextTransform("purpose", "request"), route=KeyTransform("route", "request"),
    ).values("id", "idempotency_key", "kind", "name", "run_id", "step", "agent_id", "agent_name", "end_user", "status",
             "attempts", "input_tokens", "output_tokens", "cost_usd", "latency_ms", "reused_from", "finished_at",
             "cached", "tool_error", "purpose", "route")[:limit])
    sessions = _session_ids({row["run_id"] for row in rows})
    return [FinishedEffect(
        journal_id=row["id"], idempotency_key=row["idempotency_key"], kind=row["kind"], name=row["name"], run_id=row["run_id"],
        step=row["step"], agent_id=row["agent_id"], agent_name=row["agent_name"], session_id=sessions[row["run_id"]],
        end_user=row["end_user"], status=row["status"], attempts=row["attempts"], input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cached_input_tokens=int(row["cached"]) if row["cached"] not in (None, "") and row["reused_from"] is None
        else 0,
        cost_usd=row["cost_usd"], latency_ms=row["latency_ms"], is_error=row["tool_error"] in ("true", True),
        reused_from=row["reused_from"], purpose=row["purpose"] or "", route=row["route"],
        finished_at=row["finished_at"]) for row in rows]


def run_list_finished(*, tenant_schema: str, since: datetime | None, until: datetime,
                      after: tuple[datetime, UUID] | None = None, limit: int = 5000) -> list[FinishedRun]:
    """The tenant's runs that finished in [since, until), in (finished_at, id) order, after ``after``, at most
    ``limit``. A run that finishes again (retried, or continued by a message) is listed with its latest finish
    only: its earlier finish was listed when it happened. Raises WrongSchema."""
    require_schema(tenant_schema)
    runs = Run.objects.filter(status__in=FINISHED_RUN_STATUSES, finished_at__lt=until)
    if since is not None:
        runs = runs.filter(finished_at__gte=since)
    if after is not None:
        runs = runs.filter(Q(finished_at__gt=after[0]) | Q(finished_at=after[0], id__gt=after[1]))
    rows = list(runs.order_by("finished_at", "id").values(
        "id", "agent_version__agent_id", "agent_version__agent__name", "parent_run_id", "status", "step",
        "input_tokens", "output_tokens", "cost_usd", "end_user", "task_kind", "started_at", "finished_at")[:limit])
    sessions = _session_ids({row["id"] for row in rows})
    return [FinishedRun(
        run_id=row["id"], agent_id=row["agent_version__agent_id"], agent_name=row["agent_version__agent__name"],
        session_id=sessions[row["id"]], parent_run_id=row["parent_run_id"], status=row["status"], steps=row["step"],
        input_tokens=row["input_tokens"], output_tokens=row["output_tokens"], cost_usd=row["cost_usd"],
        end_user=row["end_user"], task_kind=row["task_kind"], started_at=row["started_at"],
        finished_at=row["finished_at"]) for row in rows]
