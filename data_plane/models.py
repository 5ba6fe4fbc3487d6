from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import BrinIndex, GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from pgvector.django import HnswIndex, VectorField


class Ping(models.Model):
    """A round trip through the data plane: the API enqueues it, a worker answers it in this schema.

    Lets a tenant (and the demo, and readiness checks) prove that its work reaches a live worker and
    runs inside its own schema.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        COMPLETED = "completed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    message = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    requested_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    observed_schema = models.CharField(max_length=63, blank=True, default="")
    deliveries = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-requested_at"]


class Agent(models.Model):
    """A tenant's agent. Its behaviour lives in immutable versions; runs pin the version they started on."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.SlugField(max_length=100, unique=True)
    description = models.CharField(max_length=500, blank=True, default="")
    latest_version = models.PositiveIntegerField(default=1)
    is_archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]


class AgentVersion(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    spec = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=100, blank=True, default="")
    # Made for an experiment's variant (the agent's spec with the variant's overrides): runs assigned to the
    # variant use it, but it never becomes the agent's latest (promoting the variant adds a normal version).
    is_variant = models.BooleanField(default=False)

    class Meta:
        ordering = ["agent", "-version"]
        constraints = [models.UniqueConstraint(fields=["agent", "version"], name="agent_version_unique")]


class Run(models.Model):
    """One execution of an agent version. Its state is the chain of checkpoints ending at ``head``."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        PAUSED = "paused"
        WAITING_APPROVAL = "waiting_approval"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent_version = models.ForeignKey(AgentVersion, on_delete=models.PROTECT, related_name="runs")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    status_reason = models.CharField(max_length=500, blank=True, default="")
    input = models.TextField()
    # Whom the run serves (the tenant's own id of its end user) and what kind of task it is: memories are
    # recalled for that end user, and lessons learned are tagged with the task kind.
    end_user = models.CharField(max_length=200, blank=True, default="")
    task_kind = models.CharField(max_length=100, blank=True, default="")
    input_attachments = models.JSONField(default=list, blank=True)  # [{id, media_type}] of the first message
    # The routing policy the run's model calls follow, resolved when the run was created (core/routing.py
    # RunRouting: policy, source, task kind): a recomputed step routes the same way whatever changes later.
    routing = models.JSONField(null=True, blank=True)
    output = models.TextField(blank=True, default="")
    error = models.JSONField(null=True, blank=True)
    # Lineage: a sub-run's parent, and a fork's or replay's source checkpoint (its history precedes ours).
    parent_run = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    parent_key = models.CharField(max_length=200, blank=True, default="")
    source_checkpoint = models.ForeignKey("Checkpoint", null=True, blank=True, on_delete=models.SET_NULL,
                                          related_name="derived_runs")
    base_run = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="derived")
    base_message_count = models.PositiveIntegerField(default=0)
    base_step = models.PositiveIntegerField(default=0)
    reexecute = models.BooleanField(default=False)
    # Set by a retry: results recorded before it may be reused for identical requests after it. A run that
    # was never retried (nor forked: see base_run) has nothing to reuse, and its steps skip looking.
    was_retried = models.BooleanField(default=False)
    # Execution: the head checkpoint, the step it is at, and the fence every commit must match.
    # Unindexed on purpose: a step's update of the run then changes no indexed column and stays a HOT update.
    head = models.ForeignKey("Checkpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                             db_index=False, db_constraint=False)
    step = models.PositiveIntegerField(default=0)
    # The step named by the task that owns the run: a worker may run several steps in one task, and a
    # redelivery of that task (its worker died) must still match, while stale duplicates must not.
    driver_step = models.PositiveIntegerField(default=0)
    # The last step whose effects a task began (None: none yet): set when a task claims the run (at its head)
    # and when it commits a step and goes on with the next. A claim at a head past it finds nothing of that
    # step in the journal, so its model calls are recorded once answered, without a "started" mark first.
    attempted_step = models.PositiveIntegerField(null=True, blank=True)
    version = models.PositiveBigIntegerField(default=0)
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    pause_requested = models.BooleanField(default=False)
    event_seq = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    # A/B testing: the experiment and variant the run was assigned to, and the key that chose the variant.
    experiment = models.ForeignKey("Experiment", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    experiment_variant = models.ForeignKey("ExperimentVariant", null=True, blank=True, on_delete=models.SET_NULL,
                                           related_name="runs")
    assignment_key = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["parent_run", "parent_key"], condition=~models.Q(parent_key=""),
                                               name="run_one_child_per_parent_key")]


class RoutingPolicy(models.Model):
    """A tenant's model routing policy (core/routing.py): agents name it (``routing_policy``), and the one that
    ``is_default`` applies to agents that have no routing of their own."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.SlugField(max_length=100, unique=True)
    description = models.CharField(max_length=500, blank=True, default="")
    policy = models.JSONField()  # normalized: RoutingPolicy.to_json()
    is_default = models.BooleanField(default=False)
    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["is_default"], condition=models.Q(is_default=True),
                                               name="routing_policy_one_default")]


class Checkpoint(models.Model):
    """A run's state after a step, and what the step changed: its ``control`` (small and whole), the messages it
    appended, the values it changed, and its commit's events. A state is read back from its run's checkpoints up
    to it (and its source runs' for a fork), so bytes written per step do not grow with the conversation, and a
    step's checkpoint is one row (see docs/checkpoint-storage.md).

    - ``messages``: the appended messages as one JSON array text (NULL when none), the first at sequence number
      ``first_seq``; each a JSON object, or a JSON string when sealed (data_plane.sealing).
    - ``changed_values``, ``sealed_values``: the changed values as JSON object texts, plain and sealed.
    - ``control`` is NULL once retention pruned the checkpoint: it can no longer be read, listed or forked, and
      its row stays for the messages and values later states are made of.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexes are kept to what reads need (the unique (run, step) serves lookups by run): each one is paid
    # at every step's commit.
    # Written only by the fenced commit statement, which inserts nothing unless the run's row matched: the
    # database does not re-check these references at every commit (the ORM still follows them).
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints", db_index=False,
                            db_constraint=False)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                               db_index=False, db_constraint=False)
    step = models.PositiveIntegerField()
    control = models.JSONField(null=True)
    first_seq = models.PositiveIntegerField(default=0)
    # JSON texts: read back whole and in order, never queried inside, so they round-trip without jsonb's
    # conversions and cost no parsing at the commit.
    messages = models.TextField(null=True)
    changed_values = models.TextField(null=True)
    sealed_values = models.TextField(null=True)
    # The commit's events, numbered first_event_seq to last_event_seq (a JSON array text of {type, data}; NULL
    # when none), stamped with created_at: read through RunEvent.
    events = models.TextField(null=True)
    first_event_seq = models.BigIntegerField(default=0)
    last_event_seq = models.BigIntegerField(default=0)
    # The step's model calls when it was fresh (nothing marked them started): their journal entries, a JSON
    # array text of JournalEntry.to_json (NULL when none), with their ids in the journal's sequence; read
    # through EffectRecord.
    effects = models.TextField(null=True)
    effect_ids = ArrayField(models.BigIntegerField(), null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="checkpoint_run_step_unique")]
        # Usage metering reads the calls that finished since its watermark: a BRIN index finds the checkpoints
        # written since, in the order they were written, and costs a commit next to nothing.
        indexes = [BrinIndex(fields=["created_at"], name="checkpoint_created_brin")]


class RunEventRecord(models.Model):
    """An event of a run recorded on its own: one no checkpoint's commit made (a pause, a cancel, a tool call
    started, an approval's decision), and every event recorded before migration 0022. A commit's events are in
    its checkpoint's row (``Checkpoint.events``); ``RunEvent`` reads both."""

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.DO_NOTHING, related_name="+", db_index=False, db_constraint=False)
    seq = models.PositiveBigIntegerField()
    type = models.CharField(max_length=64)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "data_plane_runevent"
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="run_event_seq_unique")]


class RunEvent(models.Model):
    """The log of what happened in a run, numbered per run (streaming reads it): a view (migration 0022) of the
    events recorded on their own (``RunEventRecord``) and those of the checkpoints' commits, one row each.
    Read-only; the run's ``event_seq`` numbers both.

    ``batch_first_seq`` and ``batch_last_seq`` number the first and last events of the row an event comes from
    (its own for a recorded event): a filter on them is decided before a checkpoint's events are read, which a
    filter on ``seq`` is not. Events are numbered without gaps: every number is taken by the statement that
    writes its event."""

    pk = models.CompositePrimaryKey("run", "seq")
    run = models.ForeignKey(Run, on_delete=models.DO_NOTHING, related_name="events", db_constraint=False)
    seq = models.BigIntegerField()
    type = models.CharField(max_length=64)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField()
    batch_first_seq = models.BigIntegerField()
    batch_last_seq = models.BigIntegerField()

    class Meta:
        managed = False
        db_table = "data_plane_runevent_all"
        ordering = ["run", "seq"]


class Approval(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="approvals")
    key = models.CharField(max_length=200)
    node_id = models.CharField(max_length=200)
    kind = models.CharField(max_length=20)
    prompt = models.TextField(blank=True, default="")
    calls = models.JSONField(default=list)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    decided_by = models.CharField(max_length=100, blank=True, default="")
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True, default="")
    arguments = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["run", "key"], name="approval_run_key_unique")]


class EffectKind(models.TextChoices):
    MODEL = "model"
    TOOL = "tool"


class EffectStatus(models.TextChoices):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EffectFields(models.Model):
    """What the journal knows of a call: the table's columns, which its view (``EffectRecord``) has too."""

    Kind = EffectKind
    Status = EffectStatus

    step = models.PositiveIntegerField()
    key = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=EffectKind.choices)
    # Unique and indexed through Meta: a field's own unique=True or db_index=True on a CharField also builds a
    # varchar_pattern_ops index for LIKE queries, which nothing here makes, and every step's commit paid for it.
    idempotency_key = models.CharField(max_length=300)
    digest = models.CharField(max_length=64)
    name = models.CharField(max_length=200)  # the model or the tool
    request = models.JSONField(default=dict)
    result = models.JSONField(null=True)
    status = models.CharField(max_length=10, choices=EffectStatus.choices, default=EffectStatus.STARTED)
    attempts = models.PositiveIntegerField(default=1)
    latency_ms = models.FloatField(null=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    reused_from = models.BigIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["run", "step", "id"]


class EffectRecordRow(EffectFields):
    """A call of a run recorded in the journal's table: every tool call (marked started before it is made, so a
    retry knows it as one, then completed by its step's commit), a model call a retry or a replay makes, and
    whatever a step that did not commit recorded. A fresh step's model call, which nothing marks started, is
    stored in its checkpoint's row instead (``Checkpoint.effects``); ``EffectRecord`` reads both."""

    id = models.BigAutoField(primary_key=True)
    # No database constraint, as for the other tables a step's commit writes: the check of a deferred foreign key
    # locks the run's row at COMMIT, the row the same statement's fence just updated: 0.03-0.09 ms of a 0.75-0.9 ms
    # commit, measured with copies of the tables. Rows are written for a run that exists (the fenced commit, or a
    # worker holding the run's lease); runs are never deleted but with their tenant's schema.
    run = models.ForeignKey(Run, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False)

    class Meta(EffectFields.Meta):
        db_table = "data_plane_effectrecord"
        constraints = [models.UniqueConstraint(fields=["idempotency_key"], name="effect_idempotency_key_unique")]
        indexes = [models.Index(fields=["digest"], name="effect_digest_idx")]


class EffectRecord(EffectFields):
    """The journal of a run's effects (model and tool calls): a recorded result is never paid for twice. A view
    (migration 0023) of the journal's table (``EffectRecordRow``) and of the model calls stored in their
    checkpoints' rows, one row each; read-only. Ids are one sequence's (the table's), in the order the calls
    were recorded. An idempotency key is in one of the two: a call stored with its checkpoint was made by a
    fresh step, which nothing marked started, and its step is over once that checkpoint committed.

    ``batch_created_at`` is when the row an entry comes from was written (its own ``finished_at`` for the
    table's): no entry finished after it, and a filter on it is decided before a checkpoint's entries are read."""

    id = models.BigIntegerField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.DO_NOTHING, related_name="effects", db_constraint=False)
    batch_created_at = models.DateTimeField(null=True)

    class Meta(EffectFields.Meta):
        managed = False
        db_table = "data_plane_effectrecord_all"


class Note(models.Model):
    """The built-in notes tool's notebook: an idempotent side effect agents can make."""

    id = models.BigAutoField(primary_key=True)
    idempotency_key = models.CharField(max_length=300, unique=True)
    run_id = models.UUIDField(null=True, blank=True)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]


class McpServer(models.Model):
    """A tenant's MCP server: remote (streamable HTTP) or a local command the workers run (stdio).

    Credentials (HTTP headers, environment variables) are sealed at rest (common.crypto), bound to the
    tenant's schema and this row: only their names are ever shown back."""

    class Transport(models.TextChoices):
        HTTP = "http"
        STDIO = "stdio"

    class Status(models.TextChoices):
        ACTIVE = "active"
        ERROR = "error"  # the last discovery failed; its tools stay as they were
        ARCHIVED = "archived"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=32, unique=True)
    transport = models.CharField(max_length=8, choices=Transport.choices)
    url = models.URLField(max_length=500, blank=True, default="")
    command = models.CharField(max_length=500, blank=True, default="")
    args = models.JSONField(default=list, blank=True)
    sealed_secrets = models.TextField(blank=True, default="")
    secret_names = models.JSONField(default=dict, blank=True)  # {"headers": [...], "env": [...]}: names only
    timeout_seconds = models.FloatField(default=30.0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    last_error = models.TextField(blank=True, default="")
    catalogue_version = models.PositiveIntegerField(default=0)
    discovered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]


class McpTool(models.Model):
    """A tool of the tenant's catalogue, as its server listed it. ``name`` is what agents and models see
    (``<server>__<tool>``); ``version`` grows when the server changes its description or schema."""

    id = models.BigAutoField(primary_key=True)
    server = models.ForeignKey(McpServer, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=64, unique=True)
    remote_name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    input_schema = models.JSONField(default=dict)
    version = models.PositiveIntegerField(default=1)
    is_active = models.BooleanField(default=True)  # False once the server stopped listing it
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]


class ToolPermission(models.Model):
    """Allow, deny or require approval for a tool (a catalogue or built-in name, or ``<server>__*``), for one
    agent or (agent empty) all of them; optionally a JSON schema the call's arguments must satisfy. The most
    specific rule wins: agent over tenant-wide, exact name over a server's wildcard."""

    class Mode(models.TextChoices):
        ALLOW = "allow"
        DENY = "deny"
        REQUIRE_APPROVAL = "require_approval"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="tool_permissions")
    tool = models.CharField(max_length=64)
    mode = models.CharField(max_length=20, choices=Mode.choices)
    argument_schema = models.JSONField(null=True, blank=True)
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tool", "created_at"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "tool"], name="tool_permission_agent_tool_unique"),
            models.UniqueConstraint(fields=["tool"], condition=models.Q(agent__isnull=True),
                                    name="tool_permission_tenant_tool_unique"),
        ]


class ToolSettings(models.Model):
    """A tenant's settings of the built-in tools (one row): the hosts ``http_fetch`` may reach."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    http_fetch_hosts = models.JSONField(default=list, blank=True)  # "api.example.com", "*.example.org"
    updated_by = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)


class Memory(models.Model):
    """One long-term memory of a tenant: a fact, a lesson learned by an agent, or a note.

    Searched by meaning (the embedding: pgvector, HNSW, cosine) and by words (the generated full-text
    vector), with the metadata filters applied inside the index scans. ``agent`` empty: every agent's;
    ``end_user`` empty: nobody's in particular. Every vector has 384 dimensions; ``embedding_model`` says
    which model made it, and only vectors of one model are compared.

    A tenant whose policy encrypts payloads keeps the text sealed in ``sealed_text`` (``text`` is then ''); it is
    opened as the row is loaded. ``search_vector`` is kept by a trigger from ``text`` for plain rows, and
    written by the service from the plain text for sealed ones (docs/security-encryption.md says what that keeps
    readable).
    """

    class Kind(models.TextChoices):
        FACT = "fact"
        LESSON = "lesson"
        NOTE = "note"

    class Source(models.TextChoices):
        API = "api"
        TOOL = "tool"
        EXTRACTION = "extraction"
        REFLECTION = "reflection"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    text = models.TextField()
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.FACT)
    agent = models.CharField(max_length=100, blank=True, default="")
    end_user = models.CharField(max_length=200, blank=True, default="")
    tags = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.API)
    source_run_id = models.UUIDField(null=True, blank=True)
    embedding = VectorField(dimensions=384)
    embedding_model = models.CharField(max_length=200)
    sealed_text = models.TextField(blank=True, default="")
    search_vector = SearchVectorField(null=True, editable=False)
    merged_count = models.PositiveIntegerField(default=0)  # near-duplicates folded into this one
    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            HnswIndex(name="memory_embedding_hnsw", fields=["embedding"], m=24, ef_construction=128,
                      opclasses=["vector_cosine_ops"]),
            # No pending list (fastupdate): every word search would scan it whole, up to 4 MB (gin_pending_list_limit),
            # 8 ms on a tenant of a million memories after a bulk import; an insert updates the index at once instead.
            GinIndex(name="memory_search_vector_gin", fields=["search_vector"], fastupdate=False),
            GinIndex(name="memory_tags_gin", fields=["tags"]),
            models.Index(name="memory_scope", fields=["agent", "end_user", "kind"]),
            models.Index(name="memory_end_user", fields=["end_user"]),
            models.Index(name="memory_expires_at", fields=["expires_at"], condition=models.Q(expires_at__isnull=False)),
            models.Index(name="memory_source_run", fields=["source_run_id"],
                         condition=models.Q(source_run_id__isnull=False)),
        ]

    @classmethod
    def from_db(cls, db: str | None, field_names: list[str], values: list[object]) -> Memory:
        # A sealed memory reads as plain text wherever it is loaded (a selector, the API, re-embedding); the
        # tenant is the connection's schema, the binding the row's id.
        instance = super().from_db(db, field_names, values)
        sealed = instance.__dict__.get("sealed_text")
        if sealed:
            from django.db import connection

            from data_plane.sealing import memory_text_open

            instance.text = memory_text_open(tenant_schema=connection.schema_name, memory_id=instance.id,
                                             sealed_text=sealed)
        return instance


class MemorySettings(models.Model):
    """A tenant's memory settings (one row): which model embeds its memories.

    ``embedding_model`` is ``local/all-MiniLM-L6-v2-int8`` (computed on our workers, no network) or a
    litellm model name (for example ``openai/text-embedding-3-small``) asked for 384-dimension vectors;
    its API key is encrypted at rest.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    embedding_model = models.CharField(max_length=200, default="local/all-MiniLM-L6-v2-int8")
    embedding_api_base = models.CharField(max_length=500, blank=True, default="")
    embedding_api_key_encrypted = models.TextField(blank=True, default="")
    default_ttl_days = models.PositiveIntegerField(null=True, blank=True)
    updated_by = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)


class RunFeedback(models.Model):
    """A score of a finished run, by a user (through the API) or by the agent's evaluator step. A score
    under the agent's threshold makes the agent write a lesson (Reflexion)."""

    class Source(models.TextChoices):
        USER = "user"
        EVALUATOR = "evaluator"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="feedback")
    score = models.FloatField()  # 0 (wrong) to 1 (perfect)
    comment = models.TextField(blank=True, default="")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.USER)
    lesson = models.ForeignKey(Memory, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]


class Attachment(models.Model):
    """A file (an image, an audio clip) uploaded for runs' messages. The bytes are in object storage under
    ``storage_key``, which names the tenant's schema and this row, never anything the uploader chose;
    messages reference the row by id and media type only."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    media_type = models.CharField(max_length=100)  # checked against the bytes: see runtime.core.media
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=300, unique=True)
    filename = models.CharField(max_length=255, blank=True, default="")  # as uploaded; shown, never used as a path
    created_by = models.CharField(max_length=200)  # the actor, e.g. api_key:<id>
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The run whose message first carried it (it may be reused by later messages and runs).
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="attachments")
    # Audio given to a model that cannot take audio is transcribed once, by this model, and kept.
    transcript = models.TextField(blank=True, default="")
    transcript_model = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]


class Experiment(models.Model):
    """An A/B test of an agent: while it runs, runs that name no version are split between its variants by a
    stable hash of their assignment key (data_plane/experiment_assignment.py). At most one runs per agent."""

    class Status(models.TextChoices):
        RUNNING = "running"
        STOPPED = "stopped"
        PROMOTED = "promoted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="experiments")
    name = models.SlugField(max_length=100)
    description = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    salt = models.CharField(max_length=64)  # mixed into the hash: each experiment splits keys afresh
    promoted_variant = models.ForeignKey("ExperimentVariant", null=True, blank=True, on_delete=models.SET_NULL,
                                         related_name="+")
    promoted_version = models.PositiveIntegerField(null=True, blank=True)  # the agent version promotion made
    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "name"], name="experiment_agent_name_unique"),
            models.UniqueConstraint(fields=["agent"], condition=models.Q(status="running"),
                                    name="experiment_one_running_per_agent"),
        ]


class ExperimentVariant(models.Model):
    """One arm of an experiment: its share of the traffic (``weight`` over the sum of weights) and the agent
    version its runs use (the agent's spec with ``overrides`` merged in, or the agent's version at creation)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="variants")
    name = models.SlugField(max_length=50)
    position = models.PositiveSmallIntegerField()  # the order of the cumulative weights
    weight = models.FloatField()
    is_control = models.BooleanField(default=False)
    overrides = models.JSONField(default=dict, blank=True)
    agent_version = models.ForeignKey(AgentVersion, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["experiment", "position"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="experiment_variant_name_unique"),
            models.UniqueConstraint(fields=["experiment", "position"], name="experiment_variant_position_unique"),
        ]
