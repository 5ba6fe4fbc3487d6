"""Data-plane endpoints. Thin: parse, call one service or selector, serialize."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from common.errors import PermissionDenied
from common.pagination import counted_page_response, paginated, paginated_response
from common.validation import validated
from data_plane import selectors, services
from data_plane.models import Approval, Run
from data_plane.runtime.core.media import SUPPORTED_TYPES
from data_plane.runtime.core.messages import Message
from data_plane.serializers import (
    AgentOutputSerializer,
    AttachmentOutputSerializer,
    AgentVersionDetailOutputSerializer,
    AgentVersionOutputSerializer,
    ApprovalOutputSerializer,
    CheckpointOutputSerializer,
    CheckpointStateOutputSerializer,
    PingOutputSerializer,
    RunEventOutputSerializer,
    RunOutputSerializer,
)
from tenants import services as tenant_services
from tenants.api_views import TenantApiView

ATTACHMENTS_HELP = ("Ids of files uploaded with POST /v1/attachments, given to the model after the text, in "
                    "this order: images to models that take images, audio to models that take audio, else its "
                    "transcript. Every model of the agent's policy must be able to take them (400 otherwise).")
MAX_ATTACHMENTS_PER_MESSAGE = 16


def _attachments_field() -> serializers.ListField:
    return serializers.ListField(child=serializers.UUIDField(), required=False, default=list,
                                 max_length=MAX_ATTACHMENTS_PER_MESSAGE, help_text=ATTACHMENTS_HELP)


def _text_or_attachments(attrs: dict[str, Any], text_field: str) -> dict[str, Any]:
    if not attrs[text_field].strip() and not attrs["attachments"]:
        raise serializers.ValidationError({text_field: ["This field may be blank only when attachments are sent."]})
    return attrs


SPEC_HELP = ("The agent spec: instructions, models (preferred first), tools [{name, description, input_schema, "
             "requires_approval}], limits {max_steps, max_seconds, max_cost_usd}, an optional graph {entry, "
             "max_steps, nodes: [{id, kind, ...}]} (without one: the plan / act / observe / reflect loop) and "
             "agent_tools {tool name: agent name}. Every problem is listed in the 400's errors.spec.")


class PingListCreateApi(TenantApiView):
    required_scopes = {"GET": "pings:read", "POST": "pings:write"}

    class InputSerializer(serializers.Serializer):
        message = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)

    @extend_schema(operation_id="pings_list", responses=paginated(PingOutputSerializer), tags=["data plane"])
    def get(self, request: Request) -> Response:
        pings = selectors.ping_list(tenant_schema=request.user.tenant.schema_name)
        return paginated_response(request=request, view=self, queryset=pings, serializer_class=PingOutputSerializer)

    @extend_schema(operation_id="pings_create", request=InputSerializer, responses={202: PingOutputSerializer},
                   tags=["data plane"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        ping = services.ping_create(tenant=request.user.tenant, actor=request.user.actor, **data)
        return Response(PingOutputSerializer(ping).data, status=status.HTTP_202_ACCEPTED)


class PingDetailApi(TenantApiView):
    required_scopes = {"GET": "pings:read"}

    @extend_schema(operation_id="pings_get", responses=PingOutputSerializer, tags=["data plane"])
    def get(self, request: Request, ping_id: UUID) -> Response:
        ping = selectors.ping_get(tenant_schema=request.user.tenant.schema_name, ping_id=ping_id)
        return Response(PingOutputSerializer(ping).data)


# --- Attachments -------------------------------------------------------------------------------------

class AttachmentListCreateApi(TenantApiView):
    """Files for runs' messages: upload one (multipart), list them. The type is checked against the bytes."""

    required_scopes = {"GET": "runs:read", "POST": "runs:write"}
    parser_classes = [MultiPartParser]

    class FilterSerializer(serializers.Serializer):
        run_id = serializers.UUIDField(required=False, help_text="Only those a message of this run carried first.")

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(allow_empty_file=True, help_text=(
            "The image (PNG, JPEG, GIF, WEBP) or audio (WAV, MP3, OGG/Opus, FLAC, WEBM). Its type is read from its "
            "content and must match the part's Content-Type (or media_type) when one is given."))
        media_type = serializers.CharField(max_length=100, required=False, default="", allow_blank=True,
                                           help_text="The declared type; the file part's Content-Type when omitted.")

    @extend_schema(operation_id="attachments_list", parameters=[FilterSerializer],
                   responses=paginated(AttachmentOutputSerializer), tags=["attachments"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        attachments = selectors.attachment_list(tenant_schema=request.user.tenant.schema_name, **filters)
        return paginated_response(request=request, view=self, queryset=attachments,
                                  serializer_class=AttachmentOutputSerializer)

    @extend_schema(operation_id="attachments_upload", request={"multipart/form-data": InputSerializer},
                   responses={201: AttachmentOutputSerializer}, tags=["attachments"])
    def post(self, request: Request) -> Response:
        # checked before the body is parsed, so a huge upload is refused without being stored first
        services.attachment_request_check(content_length=int(request.META.get("CONTENT_LENGTH") or 0))
        data = validated(self.InputSerializer, request.data)
        upload = data["file"]
        attachment = services.attachment_upload(
            tenant=request.user.tenant, actor=request.user.actor, stream=upload, filename=upload.name or "",
            declared_media_type=data["media_type"] or upload.content_type or "")
        return Response(AttachmentOutputSerializer(attachment).data, status=status.HTTP_201_CREATED)


class AttachmentDetailApi(TenantApiView):
    required_scopes = {"GET": "runs:read", "DELETE": "runs:write"}

    @extend_schema(operation_id="attachments_get", responses=AttachmentOutputSerializer, tags=["attachments"])
    def get(self, request: Request, attachment_id: UUID) -> Response:
        attachment = selectors.attachment_get(tenant_schema=request.user.tenant.schema_name,
                                              attachment_id=attachment_id)
        return Response(AttachmentOutputSerializer(attachment).data)

    @extend_schema(operation_id="attachments_delete", responses={204: None}, tags=["attachments"])
    def delete(self, request: Request, attachment_id: UUID) -> Response:
        services.attachment_delete(tenant=request.user.tenant, attachment_id=attachment_id, actor=request.user.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class _AnyAccept(BaseContentNegotiation):
    """The bytes are served whatever the client accepts (an <img> asks for image/*); errors stay JSON."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: str | None = None) -> Any:
        return renderers[0], renderers[0].media_type


class AttachmentContentApi(TenantApiView):
    """The file's bytes, with its media type."""

    required_scopes = {"GET": "runs:read"}
    content_negotiation_class = _AnyAccept

    @extend_schema(operation_id="attachments_content", responses={
        (200, media_type): OpenApiResponse(OpenApiTypes.BINARY, description=(
            "The bytes as uploaded; Content-Type is the attachment's media type.")) for media_type in SUPPORTED_TYPES},
        tags=["attachments"])
    def get(self, request: Request, attachment_id: UUID) -> FileResponse:
        content = selectors.attachment_content(tenant_schema=request.user.tenant.schema_name,
                                               attachment_id=attachment_id)
        response = FileResponse(content.file, content_type=content.media_type, as_attachment=True,
                                filename=content.download_name)
        response["X-Content-Type-Options"] = "nosniff"
        response["Cache-Control"] = "private, max-age=3600"
        response["ETag"] = f'"{content.sha256}"'
        return response


# --- Agents ------------------------------------------------------------------------------------------

class AgentListCreateApi(TenantApiView):
    required_scopes = {"GET": "agents:read", "POST": "agents:write"}

    class FilterSerializer(serializers.Serializer):
        include_archived = serializers.BooleanField(required=False, default=False)

    class InputSerializer(serializers.Serializer):
        name = serializers.SlugField(max_length=100, help_text="Unique in the tenant; a-z, 0-9, '-' and '_'.")
        description = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
        spec = serializers.DictField(help_text=SPEC_HELP)

    @extend_schema(operation_id="agents_list", parameters=[FilterSerializer],
                   responses=paginated(AgentOutputSerializer), tags=["agents"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        agents = selectors.agent_list(tenant_schema=request.user.tenant.schema_name, **filters)
        return paginated_response(request=request, view=self, queryset=agents, serializer_class=AgentOutputSerializer)

    @extend_schema(operation_id="agents_create", request=InputSerializer, responses={201: AgentOutputSerializer},
                   tags=["agents"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        agent = services.agent_create(tenant=request.user.tenant, actor=request.user.actor, **data)
        return Response(AgentOutputSerializer(agent).data, status=status.HTTP_201_CREATED)


class AgentDetailApi(TenantApiView):
    required_scopes = {"GET": "agents:read", "PATCH": "agents:write"}

    class UpdateInputSerializer(serializers.Serializer):
        description = serializers.CharField(max_length=500, required=False, allow_blank=True)
        spec = serializers.DictField(required=False, help_text="A new spec adds a version; running runs keep theirs. "
                                                               + SPEC_HELP)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if not attrs:
                raise serializers.ValidationError("Send a description, a spec, or both.")
            return attrs

    @extend_schema(operation_id="agents_get", responses=AgentOutputSerializer, tags=["agents"])
    def get(self, request: Request, agent_id: UUID) -> Response:
        agent = selectors.agent_get(tenant_schema=request.user.tenant.schema_name, agent_id=agent_id)
        return Response(AgentOutputSerializer(agent).data)

    @extend_schema(operation_id="agents_update", request=UpdateInputSerializer, responses=AgentOutputSerializer,
                   tags=["agents"])
    def patch(self, request: Request, agent_id: UUID) -> Response:
        data = validated(self.UpdateInputSerializer, request.data)
        agent = services.agent_update(tenant=request.user.tenant, agent_id=agent_id, actor=request.user.actor, **data)
        return Response(AgentOutputSerializer(agent).data)


class AgentArchiveApi(TenantApiView):
    required_scopes = {"POST": "agents:write"}

    @extend_schema(operation_id="agents_archive", request=None, responses=AgentOutputSerializer, tags=["agents"])
    def post(self, request: Request, agent_id: UUID) -> Response:
        agent = services.agent_archive(tenant=request.user.tenant, agent_id=agent_id, actor=request.user.actor)
        return Response(AgentOutputSerializer(agent).data)


class AgentVersionListApi(TenantApiView):
    required_scopes = {"GET": "agents:read"}

    @extend_schema(operation_id="agents_versions_list", responses=paginated(AgentVersionOutputSerializer),
                   tags=["agents"])
    def get(self, request: Request, agent_id: UUID) -> Response:
        versions = selectors.agent_version_list(tenant_schema=request.user.tenant.schema_name, agent_id=agent_id)
        return paginated_response(request=request, view=self, queryset=versions,
                                  serializer_class=AgentVersionOutputSerializer)


class AgentVersionDetailApi(TenantApiView):
    required_scopes = {"GET": "agents:read"}

    @extend_schema(operation_id="agents_versions_get", responses=AgentVersionDetailOutputSerializer, tags=["agents"])
    def get(self, request: Request, agent_id: UUID, version: int) -> Response:
        agent_version = selectors.agent_version_get(tenant_schema=request.user.tenant.schema_name, agent_id=agent_id,
                                                    version=version)
        return Response(AgentVersionDetailOutputSerializer(agent_version).data)


# --- Runs --------------------------------------------------------------------------------------------

class RunListCreateApi(TenantApiView):
    required_scopes = {"GET": "runs:read", "POST": "runs:write"}

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Run.Status.choices, required=False)
        agent_id = serializers.UUIDField(required=False)
        parent_run_id = serializers.UUIDField(required=False, help_text="Only the sub-runs of this run.")

    class InputSerializer(serializers.Serializer):
        agent_id = serializers.UUIDField()
        input = serializers.CharField(max_length=100_000, allow_blank=True,
                                      help_text="The user's message that starts the run (may be empty when it "
                                                "has attachments).")
        attachments = _attachments_field()
        version = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None,
                                           help_text="The agent version to run; the latest when omitted.")
        values = serializers.DictField(required=False, default=dict,
                                       help_text="Initial state values, readable by the graph's routers and tools.")
        end_user = serializers.CharField(max_length=200, required=False, default="", allow_blank=True,
                                         help_text="Your id of the end user the run serves: the agent recalls that "
                                                   "user's memories (and never another user's).")
        task_kind = serializers.SlugField(max_length=100, required=False, default="", allow_blank=True,
                                          help_text="What kind of task this is (e.g. refund-request): lessons the "
                                                    "agent learns are tagged with it.")
        assignment_key = serializers.CharField(
            max_length=200, required=False, default="", allow_blank=True,
            help_text="While the agent runs an A/B test and no version is given, the run goes to the variant this key "
                      "hashes to (the same key, the same variant). Default: end_user, else a fresh random key.")
        budget_usd = serializers.DecimalField(
            max_digits=16, decimal_places=8, min_value=Decimal("0.00000001"), max_value=Decimal("1000000"),
            required=False, allow_null=True, default=None,
            help_text="This run's own budget in USD (besides the agent's limits.max_cost_usd; the smaller applies): "
                      "an LLM call whose worst case does not fit is not made and the run fails with budget_exceeded.")

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            return _text_or_attachments(attrs, "input")

    @extend_schema(operation_id="runs_list", parameters=[FilterSerializer], responses=paginated(RunOutputSerializer),
                   tags=["runs"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        runs = selectors.run_list(tenant_schema=request.user.tenant.schema_name, **filters)
        return paginated_response(request=request, view=self, queryset=runs, serializer_class=RunOutputSerializer)

    @extend_schema(operation_id="runs_start", request=InputSerializer, responses={202: RunOutputSerializer},
                   tags=["runs"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        run = services.run_start(tenant=request.user.tenant, actor=request.user.actor, **data)
        return Response(RunOutputSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class RunDetailApi(TenantApiView):
    required_scopes = {"GET": "runs:read"}

    @extend_schema(operation_id="runs_get", responses=RunOutputSerializer, tags=["runs"])
    def get(self, request: Request, run_id: UUID) -> Response:
        run = selectors.run_get(tenant_schema=request.user.tenant.schema_name, run_id=run_id)
        return Response(RunOutputSerializer(run).data)


class RunPauseApi(TenantApiView):
    """Pause between steps: at once when no step is in flight, else when the current step commits."""

    required_scopes = {"POST": "runs:write"}

    @extend_schema(operation_id="runs_pause", request=None, responses=RunOutputSerializer, tags=["runs"])
    def post(self, request: Request, run_id: UUID) -> Response:
        run = services.run_pause(tenant=request.user.tenant, run_id=run_id, actor=request.user.actor)
        return Response(RunOutputSerializer(run).data)


class RunResumeApi(TenantApiView):
    required_scopes = {"POST": "runs:write"}

    @extend_schema(operation_id="runs_resume", request=None, responses=RunOutputSerializer, tags=["runs"])
    def post(self, request: Request, run_id: UUID) -> Response:
        run = services.run_resume(tenant=request.user.tenant, run_id=run_id, actor=request.user.actor)
        return Response(RunOutputSerializer(run).data)


class RunCancelApi(TenantApiView):
    required_scopes = {"POST": "runs:write"}

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)

    @extend_schema(operation_id="runs_cancel", request=InputSerializer, responses=RunOutputSerializer, tags=["runs"])
    def post(self, request: Request, run_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        run = services.run_cancel(tenant=request.user.tenant, run_id=run_id, actor=request.user.actor, **data)
        return Response(RunOutputSerializer(run).data)


class RunRetryApi(TenantApiView):
    """Retry a failed run from its last checkpoint, reusing the model and tool results already paid for."""

    required_scopes = {"POST": "runs:write"}

    @extend_schema(operation_id="runs_retry", request=None, responses=RunOutputSerializer, tags=["runs"])
    def post(self, request: Request, run_id: UUID) -> Response:
        run = services.run_retry(tenant=request.user.tenant, run_id=run_id, actor=request.user.actor)
        return Response(RunOutputSerializer(run).data)


class RunMessageCreateApi(TenantApiView):
    """Continue a completed run's conversation: the user's next message starts the run's next turn."""

    required_scopes = {"POST": "runs:write"}

    class InputSerializer(serializers.Serializer):
        text = serializers.CharField(max_length=100_000, allow_blank=True,
                                     help_text="The user's message (may be empty when it has attachments).")
        attachments = _attachments_field()

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            return _text_or_attachments(attrs, "text")

    @extend_schema(operation_id="runs_messages_create", request=InputSerializer,
                   responses={202: RunOutputSerializer}, tags=["runs"])
    def post(self, request: Request, run_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        run = services.run_message_send(tenant=request.user.tenant, run_id=run_id, actor=request.user.actor, **data)
        return Response(RunOutputSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class RunFeedbackOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    run_id = serializers.UUIDField()
    score = serializers.FloatField()
    comment = serializers.CharField()
    source = serializers.CharField(help_text="user (through this API) or evaluator (the agent's evaluator step).")
    lesson_id = serializers.UUIDField(allow_null=True, help_text="The lesson the agent learned from it, once written.")
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()


class RunFeedbackApi(TenantApiView):
    """Score a finished run. Under the agent's memory.reflect_below, an agent that reflects writes a lesson
    (Reflexion) that its later runs of the same kind of task recall."""

    required_scopes = {"GET": "runs:read", "POST": "runs:write"}

    class InputSerializer(serializers.Serializer):
        score = serializers.FloatField(min_value=0.0, max_value=1.0, help_text="0 (wrong) to 1 (perfect).")
        comment = serializers.CharField(max_length=4000, required=False, default="", allow_blank=True,
                                        help_text="What was wrong: the agent's lesson starts from it.")

    class CreatedSerializer(RunFeedbackOutputSerializer):
        lesson_requested = serializers.BooleanField(help_text="True: the agent is writing a lesson from it.")

    @extend_schema(operation_id="runs_feedback_list", responses=RunFeedbackOutputSerializer(many=True), tags=["runs"])
    def get(self, request: Request, run_id: UUID) -> Response:
        run = selectors.run_get(tenant_schema=request.user.tenant.schema_name, run_id=run_id)
        return Response(RunFeedbackOutputSerializer(run.feedback.all(), many=True).data)

    @extend_schema(operation_id="runs_feedback_create", request=InputSerializer, responses={201: CreatedSerializer},
                   tags=["runs"])
    def post(self, request: Request, run_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        feedback, learns = services.run_feedback_create(tenant=request.user.tenant, run_id=run_id,
                                                        actor=request.user.actor, **data)
        return Response({**RunFeedbackOutputSerializer(feedback).data, "lesson_requested": learns},
                        status=status.HTTP_201_CREATED)


class StreamTokenNeedsApiKey(PermissionDenied):
    code = "stream_token_needs_api_key"


class RunStreamTokenApi(TenantApiView):
    """A short-lived token to stream this run where no header can be sent (a browser's WebSocket or
    EventSource): pass it as ``?access_token=``. It carries at most the caller's streaming scopes (an API key's, or
    an OAuth access token's), and stops working when that credential does."""

    required_scopes = {"POST": "runs:read"}

    class InputSerializer(serializers.Serializer):
        scopes = serializers.ListField(child=serializers.CharField(max_length=64), required=False, max_length=3,
                                       help_text="A subset of runs:read, runs:write, approvals:write (default: "
                                                 "those of this key).")
        ttl_seconds = serializers.IntegerField(min_value=30, max_value=3600, default=300)

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField()
        expires_at = serializers.DateTimeField()
        scopes = serializers.ListField(child=serializers.CharField())
        run_id = serializers.UUIDField()
        stream_path = serializers.CharField(help_text="The websocket (ws[s]://) and server-sent events (GET) path.")

    @extend_schema(operation_id="runs_stream_token_create", request=InputSerializer,
                   responses={201: OutputSerializer}, tags=["runs"])
    def post(self, request: Request, run_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        run = selectors.run_get(tenant_schema=request.user.tenant.schema_name, run_id=run_id)
        if not request.user.credential:  # a portal session: a stream token must end with the credential it came from
            raise StreamTokenNeedsApiKey("Stream tokens are issued to API keys and OAuth access tokens only (a token "
                                         "ends with its credential); call this with one that has runs:read.")
        issued = tenant_services.stream_token_issue(
            tenant=request.user.tenant, credential=request.user.credential, held_scopes=request.user.scopes,
            run_id=str(run.id), actor=request.user.actor, scopes=data.get("scopes"), ttl_seconds=data["ttl_seconds"])
        body = {"token": issued.token, "expires_at": issued.expires_at, "scopes": list(issued.scopes),
                "run_id": run.id, "stream_path": f"/v1/runs/{run.id}/stream"}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_201_CREATED)


class RunEventListApi(TenantApiView):
    required_scopes = {"GET": "runs:read"}

    class FilterSerializer(serializers.Serializer):
        after_seq = serializers.IntegerField(min_value=0, required=False, default=0,
                                             help_text="Only events after this sequence number (the last one seen).")

    @extend_schema(operation_id="runs_events_list", parameters=[FilterSerializer],
                   responses=paginated(RunEventOutputSerializer), tags=["runs"])
    def get(self, request: Request, run_id: UUID) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        schema = request.user.tenant.schema_name
        return counted_page_response(
            request=request, serializer_class=RunEventOutputSerializer,
            page=lambda offset, limit: selectors.run_event_window(tenant_schema=schema, run_id=run_id, offset=offset,
                                                                  limit=limit, **filters))


# --- Checkpoints: time travel ------------------------------------------------------------------------

class AppendedMessageInputSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "assistant", "system"])
    content = serializers.CharField(max_length=100_000)


class CheckpointListApi(TenantApiView):
    required_scopes = {"GET": "runs:read"}

    @extend_schema(operation_id="runs_checkpoints_list", responses=paginated(CheckpointOutputSerializer),
                   tags=["checkpoints"])
    def get(self, request: Request, run_id: UUID) -> Response:
        checkpoints = selectors.checkpoint_list(tenant_schema=request.user.tenant.schema_name, run_id=run_id)
        return paginated_response(request=request, view=self, queryset=checkpoints,
                                  serializer_class=CheckpointOutputSerializer)


class CheckpointDetailApi(TenantApiView):
    required_scopes = {"GET": "runs:read"}

    @extend_schema(operation_id="runs_checkpoints_get", responses=CheckpointStateOutputSerializer,
                   tags=["checkpoints"])
    def get(self, request: Request, run_id: UUID, checkpoint_id: UUID) -> Response:
        state = selectors.checkpoint_state(tenant_schema=request.user.tenant.schema_name, run_id=run_id,
                                           checkpoint_id=checkpoint_id)
        return Response(CheckpointStateOutputSerializer({"id": checkpoint_id, "run_id": run_id, "state": state}).data)


class CheckpointForkApi(TenantApiView):
    """A new run from this checkpoint, with patched values and added messages; the source is untouched."""

    required_scopes = {"POST": "runs:write"}

    class InputSerializer(serializers.Serializer):
        values = serializers.DictField(required=False, default=dict,
                                       help_text="Values to set (or overwrite) in the fork's state.")
        messages = AppendedMessageInputSerializer(many=True, required=False, default=list,
                                                  help_text="Messages appended to the conversation; a finished "
                                                            "conversation continues from the graph's entry.")
        reexecute = serializers.BooleanField(required=False, default=False,
                                             help_text="Pay for model and tool calls again instead of reusing "
                                                       "the results the source branch recorded.")

        def validate_messages(self, messages: list[dict[str, str]]) -> list[Message]:
            return [Message(role=message["role"], content=message["content"]) for message in messages]  # type: ignore[arg-type]

    @extend_schema(operation_id="runs_checkpoints_fork", request=InputSerializer, responses={201: RunOutputSerializer},
                   tags=["checkpoints"])
    def post(self, request: Request, run_id: UUID, checkpoint_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        run = services.run_fork(tenant=request.user.tenant, run_id=run_id, checkpoint_id=checkpoint_id,
                                actor=request.user.actor, values=data["values"], append_messages=data["messages"],
                                reexecute=data["reexecute"])
        return Response(RunOutputSerializer(run).data, status=status.HTTP_201_CREATED)


class CheckpointReplayApi(TenantApiView):
    """A new run from this checkpoint with the same state (a fork without changes)."""

    required_scopes = {"POST": "runs:write"}

    class InputSerializer(serializers.Serializer):
        reexecute = serializers.BooleanField(required=False, default=False,
                                             help_text="Pay for model and tool calls again instead of reusing "
                                                       "the results the source branch recorded.")

    @extend_schema(operation_id="runs_checkpoints_replay", request=InputSerializer,
                   responses={201: RunOutputSerializer}, tags=["checkpoints"])
    def post(self, request: Request, run_id: UUID, checkpoint_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        run = services.run_fork(tenant=request.user.tenant, run_id=run_id, checkpoint_id=checkpoint_id,
                                actor=request.user.actor, **data)
        return Response(RunOutputSerializer(run).data, status=status.HTTP_201_CREATED)


# --- Approvals ---------------------------------------------------------------------------------------

class ApprovalListApi(TenantApiView):
    required_scopes = {"GET": "runs:read"}

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Approval.Status.choices, required=False)
        run_id = serializers.UUIDField(required=False)

    @extend_schema(operation_id="approvals_list", parameters=[FilterSerializer],
                   responses=paginated(ApprovalOutputSerializer), tags=["approvals"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        approvals = selectors.approval_list(tenant_schema=request.user.tenant.schema_name, **filters)
        return paginated_response(request=request, view=self, queryset=approvals,
                                  serializer_class=ApprovalOutputSerializer)


class ApprovalDetailApi(TenantApiView):
    required_scopes = {"GET": "runs:read"}

    @extend_schema(operation_id="approvals_get", responses=ApprovalOutputSerializer, tags=["approvals"])
    def get(self, request: Request, approval_id: UUID) -> Response:
        approval = selectors.approval_get(tenant_schema=request.user.tenant.schema_name, approval_id=approval_id)
        return Response(ApprovalOutputSerializer(approval).data)


class ApprovalDecideApi(TenantApiView):
    """Approve or reject a pending approval; the run continues (or, rejected without a way out, fails)."""

    required_scopes = {"POST": "approvals:write"}

    class InputSerializer(serializers.Serializer):
        approved = serializers.BooleanField()
        arguments = serializers.DictField(
            child=serializers.DictField(), required=False, default=dict,
            help_text="Edited arguments by tool call id, checked against each tool's input schema.")
        comment = serializers.CharField(max_length=2000, required=False, default="", allow_blank=True)

    @extend_schema(operation_id="approvals_decide", request=InputSerializer, responses=ApprovalOutputSerializer,
                   tags=["approvals"])
    def post(self, request: Request, approval_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        approval = services.approval_decide(tenant=request.user.tenant, approval_id=approval_id,
                                            actor=request.user.actor, **data)
        return Response(ApprovalOutputSerializer(approval).data)


# --- Tools: MCP servers, the catalogue, permissions --------------------------------------------------------

class McpServerOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    transport = serializers.CharField()
    url = serializers.CharField()
    command = serializers.CharField()
    args = serializers.ListField(child=serializers.CharField())
    secret_names = serializers.JSONField(help_text="The names of the stored headers and env variables; their "
                                                   "values are sealed and never shown.")
    timeout_seconds = serializers.FloatField()
    status = serializers.CharField()
    last_error = serializers.CharField()
    catalogue_version = serializers.IntegerField()
    tools = serializers.SerializerMethodField()
    discovered_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()

    def get_tools(self, server: Any) -> list[str]:
        return list(server.tools.filter(is_active=True).order_by("name").values_list("name", flat=True))


class McpServerListCreateApi(TenantApiView):
    """A tenant's MCP servers. Registering lists the server's tools into the catalogue (502 when it cannot)."""

    required_scopes = {"GET": "tools:read", "POST": "tools:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=30, help_text="Lowercase; its tools are named <name>__<tool>.")
        transport = serializers.ChoiceField(choices=["http", "stdio"])
        url = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
        command = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
        args = serializers.ListField(child=serializers.CharField(max_length=1000), required=False, default=list,
                                     max_length=50)
        headers = serializers.DictField(child=serializers.CharField(max_length=4000), required=False, default=dict,
                                        help_text="Sent with every request to a remote server (credentials); "
                                                  "sealed at rest.")
        env = serializers.DictField(child=serializers.CharField(max_length=4000), required=False, default=dict,
                                    help_text="Environment of a local server's process (credentials); sealed.")
        timeout_seconds = serializers.FloatField(required=False, default=30.0)

    @extend_schema(operation_id="mcp_servers_list", responses=paginated(McpServerOutputSerializer), tags=["tools"])
    def get(self, request: Request) -> Response:
        servers = selectors.mcp_server_list(tenant_schema=request.user.tenant.schema_name)
        return paginated_response(request=request, view=self, queryset=servers,
                                  serializer_class=McpServerOutputSerializer)

    @extend_schema(operation_id="mcp_servers_register", request=InputSerializer,
                   responses={201: McpServerOutputSerializer}, tags=["tools"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        server = services.mcp_server_register(tenant=request.user.tenant, actor=request.user.actor, **data)
        return Response(McpServerOutputSerializer(server).data, status=status.HTTP_201_CREATED)


class McpServerDetailApi(TenantApiView):
    required_scopes = {"GET": "tools:read", "DELETE": "tools:write"}

    @extend_schema(operation_id="mcp_servers_get", responses=McpServerOutputSerializer, tags=["tools"])
    def get(self, request: Request, server_id: UUID) -> Response:
        server = selectors.mcp_server_get(tenant_schema=request.user.tenant.schema_name, server_id=server_id)
        return Response(McpServerOutputSerializer(server).data)

    @extend_schema(operation_id="mcp_servers_archive", responses={204: None}, tags=["tools"])
    def delete(self, request: Request, server_id: UUID) -> Response:
        services.mcp_server_archive(tenant=request.user.tenant, server_id=server_id, actor=request.user.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class McpServerRefreshApi(TenantApiView):
    """List the server's tools again (new, changed and removed tools); agents pick them up in their next
    version."""

    required_scopes = {"POST": "tools:write"}

    @extend_schema(operation_id="mcp_servers_refresh", request=None, responses=McpServerOutputSerializer,
                   tags=["tools"])
    def post(self, request: Request, server_id: UUID) -> Response:
        server = services.mcp_server_refresh(tenant=request.user.tenant, server_id=server_id,
                                             actor=request.user.actor)
        return Response(McpServerOutputSerializer(server).data)


class CatalogueToolOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    input_schema = serializers.JSONField()
    server = serializers.CharField(allow_null=True, help_text="The MCP server; null for a built-in tool.")
    version = serializers.IntegerField()


class ToolCatalogueApi(TenantApiView):
    """The tools agents can be given: built-in ones and the tenant's MCP servers' tools."""

    required_scopes = {"GET": "tools:read"}

    class FilterSerializer(serializers.Serializer):
        q = serializers.CharField(required=False, default="", allow_blank=True, max_length=200,
                                  help_text="Words that must all appear in the name or description.")
        server = serializers.CharField(required=False, default="", allow_blank=True, max_length=30,
                                       help_text="Only this server's tools ('builtin' for the platform's).")

    @extend_schema(operation_id="tools_list", parameters=[FilterSerializer],
                   responses=paginated(CatalogueToolOutputSerializer), tags=["tools"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        tools = selectors.tool_catalogue(tenant_schema=request.user.tenant.schema_name, query=filters["q"],
                                         server=filters["server"])
        return paginated_response(request=request, view=self, queryset=tools,
                                  serializer_class=CatalogueToolOutputSerializer)


class ToolPermissionOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    agent_id = serializers.UUIDField(allow_null=True)
    tool = serializers.CharField()
    mode = serializers.CharField()
    argument_schema = serializers.JSONField(allow_null=True)
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()


class ToolPermissionListCreateApi(TenantApiView):
    """Who may call what: allow, deny or require approval, per agent or tenant-wide, with optional argument
    constraints. Enforced by the workers at every call."""

    required_scopes = {"GET": "tools:read", "POST": "tools:write"}

    class FilterSerializer(serializers.Serializer):
        agent_id = serializers.UUIDField(required=False, allow_null=True, default=None)

    class InputSerializer(serializers.Serializer):
        tool = serializers.CharField(max_length=64, help_text="A tool's name, or '<server>__*'.")
        mode = serializers.ChoiceField(choices=["allow", "deny", "require_approval"])
        agent_id = serializers.UUIDField(required=False, allow_null=True, default=None,
                                         help_text="Only for this agent; tenant-wide when omitted.")
        argument_schema = serializers.DictField(required=False, allow_null=True, default=None,
                                                help_text="A JSON schema the call's arguments must satisfy.")

    @extend_schema(operation_id="tool_permissions_list", parameters=[FilterSerializer],
                   responses=paginated(ToolPermissionOutputSerializer), tags=["tools"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        permissions = selectors.tool_permission_list(tenant_schema=request.user.tenant.schema_name, **filters)
        return paginated_response(request=request, view=self, queryset=permissions,
                                  serializer_class=ToolPermissionOutputSerializer)

    @extend_schema(operation_id="tool_permissions_set", request=InputSerializer,
                   responses={201: ToolPermissionOutputSerializer}, tags=["tools"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        permission = services.tool_permission_set(tenant=request.user.tenant, actor=request.user.actor, **data)
        return Response(ToolPermissionOutputSerializer(permission).data, status=status.HTTP_201_CREATED)


class ToolPermissionDetailApi(TenantApiView):
    required_scopes = {"DELETE": "tools:write"}

    @extend_schema(operation_id="tool_permissions_delete", responses={204: None}, tags=["tools"])
    def delete(self, request: Request, permission_id: UUID) -> Response:
        services.tool_permission_delete(tenant=request.user.tenant, permission_id=permission_id,
                                        actor=request.user.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ToolStatsOutputSerializer(serializers.Serializer):
    tool = serializers.CharField()
    calls = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True)
    latency_p50_ms = serializers.FloatField(allow_null=True)
    latency_p95_ms = serializers.FloatField(allow_null=True)


class ToolStatsApi(TenantApiView):
    """Success rate and latency per tool, from the runs' recorded calls."""

    required_scopes = {"GET": "tools:read"}

    class FilterSerializer(serializers.Serializer):
        days = serializers.IntegerField(min_value=1, max_value=90, required=False, default=7)

    @extend_schema(operation_id="tools_stats", parameters=[FilterSerializer],
                   responses=ToolStatsOutputSerializer(many=True), tags=["tools"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        stats = selectors.tool_call_stats(tenant_schema=request.user.tenant.schema_name, **filters)
        return Response(ToolStatsOutputSerializer(stats, many=True).data)


class ToolSettingsApi(TenantApiView):
    """Settings of the built-in tools: the hosts http_fetch may reach (none until set)."""

    required_scopes = {"GET": "tools:read", "PUT": "tools:write"}

    class InputSerializer(serializers.Serializer):
        http_fetch_hosts = serializers.ListField(child=serializers.CharField(max_length=253), max_length=200,
                                                 help_text="Host names, or *.domain for a domain's subdomains.")

    class OutputSerializer(serializers.Serializer):
        http_fetch_hosts = serializers.ListField(child=serializers.CharField())
        updated_by = serializers.CharField()
        updated_at = serializers.DateTimeField(allow_null=True)

    @extend_schema(operation_id="tool_settings_get", responses=OutputSerializer, tags=["tools"])
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(selectors.tool_settings_get(
            tenant_schema=request.user.tenant.schema_name)).data)

    @extend_schema(operation_id="tool_settings_update", request=InputSerializer, responses=OutputSerializer,
                   tags=["tools"])
    def put(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        updated = services.tool_settings_update(tenant=request.user.tenant, actor=request.user.actor, **data)
        return Response(self.OutputSerializer(updated).data)
