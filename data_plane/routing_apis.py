"""Model routing policies: list, create, read, change, delete, and explain a decision. Thin: parse, call, shape."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from common.pagination import paginated, paginated_response
from common.validation import validated
from data_plane import routing_selectors, services
from data_plane.runtime import wiring
from tenants.api_views import TenantApiView

POLICY_HELP = ('{"tiers": {"cheap": ["gpt-4o-mini"], "strong": ["gpt-4o", "claude-3-5-sonnet-latest"]}, '
               '"rules": [{"name": "code", "when": {"task_kinds": ["code"]}, "tier": "strong"}], '
               '"complexity_threshold": 0.5, "fallbacks": {"cheap": "strong"}}. Each tier lists its models, the first '
               "preferred, then fallbacks on rate limits and outages; the first rule that matches decides, else the "
               "complexity estimate against the threshold. See docs/model-routing.md.")


class RoutingPolicyOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    description = serializers.CharField()
    policy = serializers.DictField()
    is_default = serializers.BooleanField(help_text="Agents that have no routing of their own use this policy.")
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class RoutingDecisionOutputSerializer(serializers.Serializer):
    tier = serializers.CharField()
    model = serializers.CharField(help_text="The model the call goes to first.")
    models = serializers.ListField(child=serializers.CharField(), help_text="The first, then its fallbacks.")
    rule = serializers.CharField(allow_null=True, help_text="The rule that matched; null: the complexity decided.")
    reason = serializers.CharField()
    complexity = serializers.FloatField()
    factors = serializers.DictField(child=serializers.FloatField(), help_text="Each factor's share of complexity.")
    cues = serializers.ListField(child=serializers.CharField(), help_text="Reasoning and code cues found.")
    threshold = serializers.FloatField()
    task_kind = serializers.CharField()
    input_tokens = serializers.IntegerField()
    tools = serializers.IntegerField()
    policy = serializers.CharField()


class RoutingPolicyListCreateApi(TenantApiView):
    """The tenant's model routing policies: agents name one (``routing_policy`` in their spec), and the default
    one routes agents that have no routing of their own."""

    required_scopes = {"GET": "agents:read", "POST": "agents:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.SlugField(max_length=100, help_text="Unique in the tenant; agents name the policy by it.")
        description = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
        policy = serializers.DictField(help_text=POLICY_HELP)
        is_default = serializers.BooleanField(required=False, default=False,
                                              help_text="Make it the tenant's default (the previous one stops being).")

    @extend_schema(operation_id="routing_policies_list", responses=paginated(RoutingPolicyOutputSerializer),
                   tags=["routing"])
    def get(self, request: Request) -> Response:
        policies = routing_selectors.routing_policy_list(tenant_schema=request.user.tenant.schema_name)
        return paginated_response(request=request, view=self, queryset=policies,
                                  serializer_class=RoutingPolicyOutputSerializer)

    @extend_schema(operation_id="routing_policies_create", request=InputSerializer,
                   responses={201: RoutingPolicyOutputSerializer}, tags=["routing"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        policy = services.routing_policy_create(tenant=request.user.tenant, actor=request.user.actor, **data)
        return Response(RoutingPolicyOutputSerializer(policy).data, status=status.HTTP_201_CREATED)


class RoutingPolicyDetailApi(TenantApiView):
    required_scopes = {"GET": "agents:read", "PATCH": "agents:write", "DELETE": "agents:write"}

    class UpdateInputSerializer(serializers.Serializer):
        description = serializers.CharField(max_length=500, required=False, allow_blank=True)
        policy = serializers.DictField(required=False, help_text="Runs already started keep the routing they "
                                                                 "started with. " + POLICY_HELP)
        is_default = serializers.BooleanField(required=False)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if not attrs:
                raise serializers.ValidationError("Send a description, a policy or is_default.")
            return attrs

    @extend_schema(operation_id="routing_policies_get", responses=RoutingPolicyOutputSerializer, tags=["routing"])
    def get(self, request: Request, policy_id: UUID) -> Response:
        policy = routing_selectors.routing_policy_get(tenant_schema=request.user.tenant.schema_name,
                                                      policy_id=policy_id)
        return Response(RoutingPolicyOutputSerializer(policy).data)

    @extend_schema(operation_id="routing_policies_update", request=UpdateInputSerializer,
                   responses=RoutingPolicyOutputSerializer, tags=["routing"])
    def patch(self, request: Request, policy_id: UUID) -> Response:
        data = validated(self.UpdateInputSerializer, request.data)
        policy = services.routing_policy_update(tenant=request.user.tenant, policy_id=policy_id,
                                                actor=request.user.actor, **data)
        return Response(RoutingPolicyOutputSerializer(policy).data)

    @extend_schema(operation_id="routing_policies_delete", responses={204: None}, tags=["routing"])
    def delete(self, request: Request, policy_id: UUID) -> Response:
        services.routing_policy_delete(tenant=request.user.tenant, policy_id=policy_id, actor=request.user.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RoutingPolicyExplainApi(TenantApiView):
    """A dry run: the decision the policy would make for a run's first model call with this input. Nothing
    is called, charged or recorded."""

    required_scopes = {"POST": "agents:read"}

    class InputSerializer(serializers.Serializer):
        input = serializers.CharField(max_length=100_000, allow_blank=True, trim_whitespace=False,
                                      help_text="The user's message, as a run would start with it.")
        task_kind = serializers.CharField(max_length=100, required=False, default="", allow_blank=True)
        tools = serializers.IntegerField(min_value=0, max_value=128, required=False, default=0,
                                         help_text="How many tools the call offers.")

    @extend_schema(operation_id="routing_policies_explain", request=InputSerializer,
                   responses=RoutingDecisionOutputSerializer, tags=["routing"])
    def post(self, request: Request, policy_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        decision = routing_selectors.routing_policy_explain(tenant_schema=request.user.tenant.schema_name,
                                                            policy_id=policy_id, counter=wiring.token_counter(),
                                                            **data)
        return Response(RoutingDecisionOutputSerializer(decision).data)
