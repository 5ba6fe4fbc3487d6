"""Long-term memory endpoints: write, search, list, read, delete, forget, settings. Thin: parse, call, shape."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from common.pagination import paginated, paginated_response
from common.validation import validated
from data_plane import memory_selectors, services
from data_plane.models import Memory
from tenants.api_views import TenantApiView

KIND_HELP = "fact (what is true of the world or a user), lesson (what an agent learned from a run) or note."


class MemoryOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    text = serializers.CharField()
    kind = serializers.CharField()
    agent = serializers.CharField(help_text="The agent it belongs to; '' for every agent of the tenant.")
    end_user = serializers.CharField(help_text="The end user it is about; '' for nobody in particular.")
    tags = serializers.ListField(child=serializers.CharField())
    metadata = serializers.DictField()
    source = serializers.CharField(help_text="api, tool, extraction (end of a run) or reflection (a lesson).")
    source_run_id = serializers.UUIDField(allow_null=True)
    embedding_model = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)


class MemoryWrittenOutputSerializer(MemoryOutputSerializer):
    merged = serializers.BooleanField(help_text="True: a near-duplicate existed and was updated instead.")
    merged_count = serializers.IntegerField()


class MemoryHitOutputSerializer(MemoryOutputSerializer):
    score = serializers.FloatField(help_text="Reciprocal-rank fusion of the meaning and word rankings.")
    similarity = serializers.FloatField(allow_null=True, help_text="Cosine similarity, when found by meaning.")
    semantic_rank = serializers.IntegerField(allow_null=True)
    lexical_rank = serializers.IntegerField(allow_null=True)


class MemoryInputSerializer(serializers.Serializer):
    """Shape only; the service checks the values and names every bad field."""

    text = serializers.JSONField(help_text="The memory (at most 8000 characters).")
    kind = serializers.JSONField(required=False, default=Memory.Kind.FACT, help_text=KIND_HELP)
    agent = serializers.JSONField(required=False, default="", help_text="An agent's name; '' for every agent.")
    end_user = serializers.JSONField(required=False, default="", help_text="Your id of the end user, if any.")
    tags = serializers.JSONField(required=False, default=list)
    metadata = serializers.JSONField(required=False, default=dict)
    ttl_seconds = serializers.JSONField(required=False, default=None,
                                        help_text="Forget it after this many seconds (null: keep).")


def _written(remembered: Any) -> dict[str, Any]:
    data = dict(MemoryOutputSerializer(remembered.memory).data)
    return {**data, "merged": remembered.merged, "merged_count": remembered.memory.merged_count}


class MemoryListCreateApi(TenantApiView):
    required_scopes = {"GET": "memories:read", "POST": "memories:write"}

    class FilterSerializer(serializers.Serializer):
        agent = serializers.CharField(required=False, allow_blank=True, max_length=100)
        end_user = serializers.CharField(required=False, allow_blank=True, max_length=200)
        kind = serializers.ChoiceField(choices=Memory.Kind.values, required=False)
        tag = serializers.ListField(child=serializers.CharField(max_length=100), required=False, default=list)
        source_run_id = serializers.UUIDField(required=False)

    @extend_schema(operation_id="memories_list", parameters=[FilterSerializer],
                   responses=paginated(MemoryOutputSerializer), tags=["memory"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        memories = memory_selectors.memory_list(tenant_schema=request.user.tenant.schema_name,
                                                tags=filters.pop("tag"), **filters)
        return paginated_response(request=request, view=self, queryset=memories,
                                  serializer_class=MemoryOutputSerializer)

    @extend_schema(operation_id="memories_create", request=MemoryInputSerializer,
                   responses={201: MemoryWrittenOutputSerializer, 200: MemoryWrittenOutputSerializer},
                   tags=["memory"], description="Remember one thing. A near-duplicate of an existing memory of "
                                                "the same agent, end user and kind updates that one (200, merged).")
    def post(self, request: Request) -> Response:
        data = validated(MemoryInputSerializer, request.data)
        draft = services.memory_draft(**data)
        [remembered] = services.memory_remember(tenant=request.user.tenant, drafts=[draft], actor=request.user.actor)
        return Response(_written(remembered),
                        status=status.HTTP_200_OK if remembered.merged else status.HTTP_201_CREATED)


class MemoryBatchApi(TenantApiView):
    required_scopes = {"POST": "memories:write"}

    class InputSerializer(serializers.Serializer):
        memories = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=100)

    class OutputSerializer(serializers.Serializer):
        memories = MemoryWrittenOutputSerializer(many=True)

    @extend_schema(operation_id="memories_create_batch", request=InputSerializer, responses=OutputSerializer,
                   tags=["memory"], description="Remember up to 100 things at once (embedded in one batch). "
                                                "All are checked first: one bad item writes nothing.")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        drafts = []
        for index, item in enumerate(data["memories"]):
            fields = validated(MemoryInputSerializer, item)
            drafts.append(services.memory_draft(**fields, path=f"memories.{index}."))
        remembered = services.memory_remember(tenant=request.user.tenant, drafts=drafts, actor=request.user.actor)
        return Response({"memories": [_written(r) for r in remembered]})


class MemorySearchApi(TenantApiView):
    required_scopes = {"POST": "memories:read"}

    class InputSerializer(serializers.Serializer):
        query = serializers.CharField(max_length=4000)
        k = serializers.IntegerField(min_value=1, max_value=100, required=False, default=10)
        agent = serializers.CharField(required=False, allow_blank=True, max_length=100, default=None,
                                      help_text="That agent's memories and those of every agent.")
        end_user = serializers.CharField(required=False, allow_blank=True, max_length=200, default=None,
                                         help_text="That end user's memories and those of nobody in particular.")
        kinds = serializers.ListField(child=serializers.ChoiceField(choices=Memory.Kind.values), required=False,
                                      default=list)
        tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False, default=list,
                                     help_text="Every tag must be present.")
        mode = serializers.ChoiceField(choices=["hybrid", "semantic", "lexical"], required=False, default="hybrid")
        min_similarity = serializers.FloatField(min_value=-1.0, max_value=1.0, required=False, default=None,
                                                help_text="Drop what was found by meaning alone and is less similar "
                                                          "(cosine) than this; word matches stay.")

    class OutputSerializer(serializers.Serializer):
        results = MemoryHitOutputSerializer(many=True)

    @extend_schema(operation_id="memories_search", request=InputSerializer, responses=OutputSerializer,
                   tags=["memory"], description="Hybrid search: by meaning (pgvector HNSW, cosine) and by words "
                                                "(Postgres full text), fused by reciprocal rank; filters are "
                                                "applied inside the index scans, so k results come back.")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        hits = memory_selectors.memory_search(tenant_schema=request.user.tenant.schema_name, **data)
        return Response({"results": MemoryHitOutputSerializer(hits, many=True).data})


class MemoryDetailApi(TenantApiView):
    required_scopes = {"GET": "memories:read", "DELETE": "memories:write"}

    @extend_schema(operation_id="memories_get", responses=MemoryOutputSerializer, tags=["memory"])
    def get(self, request: Request, memory_id: UUID) -> Response:
        memory = memory_selectors.memory_get(tenant_schema=request.user.tenant.schema_name, memory_id=memory_id)
        return Response(MemoryOutputSerializer(memory).data)

    @extend_schema(operation_id="memories_delete", responses={204: None}, tags=["memory"])
    def delete(self, request: Request, memory_id: UUID) -> Response:
        services.memory_delete(tenant=request.user.tenant, memory_id=memory_id, actor=request.user.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemoryForgetApi(TenantApiView):
    required_scopes = {"POST": "memories:write"}

    class InputSerializer(serializers.Serializer):
        end_user = serializers.CharField(required=False, max_length=200, default=None)
        agent = serializers.CharField(required=False, max_length=100, default=None)
        everything = serializers.BooleanField(required=False, default=False,
                                              help_text="Forget every memory of the tenant.")

    class OutputSerializer(serializers.Serializer):
        deleted = serializers.IntegerField()

    @extend_schema(operation_id="memories_forget", request=InputSerializer, responses=OutputSerializer,
                   tags=["memory"], description="Delete every memory of an end user (or an agent, or all).")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        deleted = services.memory_forget(tenant=request.user.tenant, actor=request.user.actor, **data)
        return Response({"deleted": deleted})


class MemorySettingsApi(TenantApiView):
    required_scopes = {"GET": "memories:read", "PUT": "memories:write"}

    class InputSerializer(serializers.Serializer):
        embedding_model = serializers.CharField(required=False, max_length=200,
                                                help_text="local/all-MiniLM-L6-v2-int8, or a litellm embedding "
                                                          "model that can return 384 dimensions.")
        embedding_api_base = serializers.CharField(required=False, allow_blank=True, max_length=500)
        embedding_api_key = serializers.CharField(required=False, allow_blank=True, max_length=500,
                                                  write_only=True, help_text="Stored encrypted; never returned.")
        default_ttl_days = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=3650)

    class OutputSerializer(serializers.Serializer):
        embedding_model = serializers.CharField()
        embedding_api_base = serializers.CharField()
        has_embedding_api_key = serializers.SerializerMethodField()
        default_ttl_days = serializers.IntegerField(allow_null=True)
        updated_by = serializers.CharField()
        updated_at = serializers.DateTimeField(allow_null=True)

        def get_has_embedding_api_key(self, settings: Any) -> bool:
            return bool(settings.embedding_api_key_encrypted)

    @extend_schema(operation_id="memory_settings_get", responses=OutputSerializer, tags=["memory"])
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(memory_selectors.memory_settings_get(
            tenant_schema=request.user.tenant.schema_name)).data)

    @extend_schema(operation_id="memory_settings_update", request=InputSerializer, responses=OutputSerializer,
                   tags=["memory"])
    def put(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        updated = services.memory_settings_update(tenant=request.user.tenant, actor=request.user.actor, **data)
        return Response(self.OutputSerializer(updated).data)
