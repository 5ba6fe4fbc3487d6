"""Output shapes shared by the HTTP API, the websocket stream and the worker's notifications."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from data_plane.models import Approval, Ping, Run
from data_plane.selectors import event_payload


class PingOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    message = serializers.CharField()
    status = serializers.CharField()
    requested_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    worker = serializers.CharField(help_text="The Celery worker that answered.")
    observed_schema = serializers.CharField(help_text="The database schema the worker ran in.")
    deliveries = serializers.IntegerField()


def ping_data(ping: Ping) -> dict[str, Any]:
    return dict(PingOutputSerializer(ping).data)


# --- Attachments -------------------------------------------------------------------------------------

class AttachmentPartOutputSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The attachment's id (GET /v1/attachments/{id}).")
    media_type = serializers.CharField()


class AttachmentOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    media_type = serializers.CharField(help_text="Read from the file's content, e.g. image/png or audio/wav.")
    kind = serializers.SerializerMethodField(help_text="image or audio.")
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField(help_text="The SHA-256 of the content, in hex.")
    filename = serializers.CharField(help_text="The name it was uploaded under (display only).")
    created_by = serializers.CharField(help_text="The actor that uploaded it, e.g. api_key:<id>.")
    created_at = serializers.DateTimeField()
    run_id = serializers.UUIDField(allow_null=True, help_text="The run whose message first carried it.")
    transcript = serializers.CharField(help_text="For audio given to a model that cannot take audio: what "
                                                 "transcription heard (empty until then).")
    content_url = serializers.SerializerMethodField(help_text="Where to GET the bytes.")

    def get_kind(self, attachment: Any) -> str:
        return str(attachment.media_type).split("/", 1)[0]

    def get_content_url(self, attachment: Any) -> str:
        return f"/v1/attachments/{attachment.id}/content"


# --- Agents ------------------------------------------------------------------------------------------

class AgentOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    description = serializers.CharField()
    latest_version = serializers.IntegerField(help_text="New runs use this version unless they name another.")
    is_archived = serializers.BooleanField(help_text="An archived agent takes no new runs and cannot change.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class AgentVersionOutputSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField()
    version = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(help_text="The actor that created this version.")
    is_variant = serializers.BooleanField(help_text="Made for an experiment's variant: runs assigned to the variant "
                                                    "use it; it never becomes the agent's latest.")


class AgentVersionDetailOutputSerializer(AgentVersionOutputSerializer):
    spec = serializers.JSONField(help_text="The normalized spec: instructions, models, tools, limits, graph.")


# --- Runs --------------------------------------------------------------------------------------------

class RunOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Run.Status.choices)
    status_reason = serializers.CharField(help_text="Why the run is cancelled or failed, when it is.")
    input = serializers.CharField()
    end_user = serializers.CharField(help_text="The end user the run serves ('' when none).")
    task_kind = serializers.CharField(help_text="The kind of task ('' when none).")
    input_attachments = AttachmentPartOutputSerializer(many=True, help_text="The files the input carried.")
    output = serializers.CharField(help_text="The final answer, once completed.")
    error = serializers.JSONField(allow_null=True, help_text="{code, message} when the run failed.")
    agent_id = serializers.UUIDField(source="agent_version.agent_id")
    agent_name = serializers.CharField(source="agent_version.agent.name")
    agent_version = serializers.IntegerField(source="agent_version.version")
    step = serializers.IntegerField(help_text="The step of the head checkpoint.")
    head_checkpoint_id = serializers.UUIDField(source="head_id", allow_null=True)
    cost_usd = serializers.FloatField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    parent_run_id = serializers.UUIDField(allow_null=True, help_text="The run that started this one as a sub-run.")
    source_checkpoint_id = serializers.UUIDField(allow_null=True,
                                                 help_text="The checkpoint this run was forked or replayed from.")
    base_run_id = serializers.UUIDField(allow_null=True, help_text="The run whose history precedes this fork's.")
    reexecute = serializers.BooleanField(help_text="A fork or replay that pays for model and tool calls again "
                                                   "instead of reusing the source branch's results.")
    pause_requested = serializers.BooleanField(help_text="The run pauses when its current step commits.")
    experiment_id = serializers.UUIDField(allow_null=True, help_text="The A/B test the run was assigned by.")
    experiment_variant = serializers.CharField(source="experiment_variant.name", allow_null=True, default=None,
                                               help_text="The experiment's variant the run was assigned to.")
    assignment_key = serializers.CharField(help_text="The key that chose the variant ('' when not assigned).")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()


class CheckpointOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    run_id = serializers.UUIDField()
    parent_id = serializers.UUIDField(allow_null=True)
    step = serializers.IntegerField()
    status = serializers.CharField(source="control.status", help_text="The run state's status at this checkpoint.")
    created_at = serializers.DateTimeField()


class ToolCallOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    arguments = serializers.JSONField()


class MessageOutputSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()
    tool_calls = ToolCallOutputSerializer(many=True)
    tool_call_id = serializers.CharField(allow_null=True)
    name = serializers.CharField(allow_null=True)
    attachments = AttachmentPartOutputSerializer(many=True, help_text="Files the message carries, after its text.")


class PendingApprovalOutputSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The approval's key within the run.")
    node_id = serializers.CharField()
    kind = serializers.CharField(help_text="node (an approval node) or tool_calls (tools that need approval).")
    prompt = serializers.CharField()
    calls = ToolCallOutputSerializer(many=True)


class RunStateOutputSerializer(serializers.Serializer):
    status = serializers.CharField()
    messages = MessageOutputSerializer(many=True)
    values = serializers.JSONField()
    frontier = serializers.ListField(child=serializers.CharField(), help_text="The nodes the next step runs.")
    steps = serializers.IntegerField()
    pending_approval = PendingApprovalOutputSerializer(allow_null=True)
    output = serializers.CharField(allow_null=True)
    error = serializers.JSONField(allow_null=True)
    cost_usd = serializers.FloatField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()


class CheckpointStateOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    run_id = serializers.UUIDField()
    state = RunStateOutputSerializer(help_text="The full run state at this checkpoint.")


class RunEventOutputSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    type = serializers.CharField()
    data = serializers.JSONField(help_text="A model.reply's data carries its whole message, as streams send it.")
    created_at = serializers.DateTimeField()

    def to_representation(self, instance: Any) -> dict[str, Any]:
        payload = event_payload(instance)
        return {"seq": payload["seq"], "type": payload["type"], "data": payload["data"], "created_at": payload["ts"]}


# --- Approvals ---------------------------------------------------------------------------------------

class ApprovalOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    run_id = serializers.UUIDField()
    key = serializers.CharField()
    node_id = serializers.CharField()
    kind = serializers.CharField(help_text="node (an approval node) or tool_calls (tools that need approval).")
    prompt = serializers.CharField()
    calls = ToolCallOutputSerializer(many=True)
    status = serializers.ChoiceField(choices=Approval.Status.choices)
    decided_by = serializers.CharField()
    decided_at = serializers.DateTimeField(allow_null=True)
    comment = serializers.CharField()
    arguments = serializers.JSONField(help_text="Edited tool arguments, by call id.")
    created_at = serializers.DateTimeField()
