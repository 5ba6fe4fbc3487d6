"""Guardrail endpoints: policies (the tenant's and each agent's), the effective policy, dry runs, flags."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from common.pagination import paginated, paginated_response
from common.validation import validated
from guardrails import selectors, services
from guardrails.checks.base import POINTS
from guardrails.models import GuardrailFlag
from tenants.api_views import TenantApiView

POLICY_HELP = ("Only what this layer sets: actions {point: {check: action}}, injection {threshold}, pii {kinds}, "
               "topics {colang, yaml}, output_schema, max_input_characters, max_output_characters.")


class PolicyOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    agent = serializers.CharField(help_text="The agent's name; '' for the tenant's layer.")
    config = serializers.DictField(help_text=POLICY_HELP)
    revision = serializers.IntegerField()
    updated_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class PolicyInputSerializer(serializers.Serializer):
    config = serializers.JSONField(help_text=POLICY_HELP)


class GuardrailPolicyListApi(TenantApiView):
    required_scopes = {"GET": "guardrails:read"}

    @extend_schema(operation_id="guardrail_policies_list", responses=paginated(PolicyOutputSerializer),
                   tags=["guardrails"])
    def get(self, request: Request) -> Response:
        policies = selectors.policy_layer_list(tenant_schema=request.user.tenant.schema_name)
        return paginated_response(request=request, view=self, queryset=policies, serializer_class=PolicyOutputSerializer)


class _PolicyLayerApi(TenantApiView):
    required_scopes = {"GET": "guardrails:read", "PUT": "guardrails:write", "DELETE": "guardrails:write"}

    def _get(self, request: Request, agent: str) -> Response:
        layer = selectors.policy_layer_get(tenant_schema=request.user.tenant.schema_name, agent=agent)
        return Response(PolicyOutputSerializer(layer).data)

    def _put(self, request: Request, agent: str) -> Response:
        data = validated(PolicyInputSerializer, request.data)
        layer = services.policy_put(tenant=request.user.tenant, agent=agent, config=data["config"],
                                    actor=request.user.actor)
        return Response(PolicyOutputSerializer(layer).data)

    def _delete(self, request: Request, agent: str) -> Response:
        services.policy_delete(tenant=request.user.tenant, agent=agent, actor=request.user.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class GuardrailTenantPolicyApi(_PolicyLayerApi):
    """The tenant's layer: applies to every agent, under each agent's own layer."""

    @extend_schema(operation_id="guardrail_tenant_policy_get", responses=PolicyOutputSerializer, tags=["guardrails"])
    def get(self, request: Request) -> Response:
        return self._get(request, "")

    @extend_schema(operation_id="guardrail_tenant_policy_set", request=PolicyInputSerializer,
                   responses=PolicyOutputSerializer, tags=["guardrails"])
    def put(self, request: Request) -> Response:
        return self._put(request, "")

    @extend_schema(operation_id="guardrail_tenant_policy_delete", responses={204: None}, tags=["guardrails"])
    def delete(self, request: Request) -> Response:
        return self._delete(request, "")


class GuardrailAgentPolicyApi(_PolicyLayerApi):
    """One agent's layer (by the agent's name), over the tenant's."""

    @extend_schema(operation_id="guardrail_agent_policy_get", responses=PolicyOutputSerializer, tags=["guardrails"])
    def get(self, request: Request, agent: str) -> Response:
        return self._get(request, agent)

    @extend_schema(operation_id="guardrail_agent_policy_set", request=PolicyInputSerializer,
                   responses=PolicyOutputSerializer, tags=["guardrails"])
    def put(self, request: Request, agent: str) -> Response:
        return self._put(request, agent)

    @extend_schema(operation_id="guardrail_agent_policy_delete", responses={204: None}, tags=["guardrails"])
    def delete(self, request: Request, agent: str) -> Response:
        return self._delete(request, agent)


class GuardrailEffectivePolicyApi(TenantApiView):
    required_scopes = {"GET": "guardrails:read"}

    class FilterSerializer(serializers.Serializer):
        agent = serializers.SlugField(required=False, default="", allow_blank=True, max_length=100)

    @extend_schema(operation_id="guardrail_policy_effective", parameters=[FilterSerializer],
                   responses=serializers.DictField(), tags=["guardrails"])
    def get(self, request: Request) -> Response:
        data = validated(self.FilterSerializer, request.query_params)
        policy = selectors.effective_policy(tenant_schema=request.user.tenant.schema_name, agent=data["agent"])
        return Response({"agent": data["agent"], "policy": policy.to_json()})


class GuardrailDryRunApi(TenantApiView):
    """Evaluate a text against a policy without acting: every check's verdict at each point."""

    required_scopes = {"POST": "guardrails:read"}

    class InputSerializer(serializers.Serializer):
        text = serializers.CharField(max_length=100_000, trim_whitespace=False, allow_blank=True)
        points = serializers.ListField(child=serializers.ChoiceField(choices=POINTS), required=False,
                                       help_text=f"Any of {', '.join(POINTS)}; all by default.")
        agent = serializers.SlugField(required=False, default="", allow_blank=True, max_length=100,
                                      help_text="Judge under this agent's effective policy.")
        config = serializers.JSONField(required=False, default=None,
                                       help_text="Judge under this policy (over the defaults) instead.")

    @extend_schema(operation_id="guardrail_dry_run", request=InputSerializer, responses=serializers.DictField(),
                   tags=["guardrails"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        return Response(services.dry_run(tenant=request.user.tenant, text=data["text"], points=data.get("points"),
                                         agent=data["agent"], config=data["config"]))


class FlagOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    run_id = serializers.UUIDField(allow_null=True)
    agent = serializers.CharField()
    point = serializers.CharField()
    check = serializers.CharField(source="check_name")
    score = serializers.FloatField()
    reasons = serializers.ListField(child=serializers.CharField())
    message = serializers.CharField()
    status = serializers.CharField()
    review_comment = serializers.CharField()
    reviewed_by = serializers.CharField()
    reviewed_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class GuardrailFlagListApi(TenantApiView):
    required_scopes = {"GET": "guardrails:read"}

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=GuardrailFlag.Status.values, required=False)
        agent = serializers.SlugField(required=False, max_length=100)
        point = serializers.ChoiceField(choices=POINTS, required=False)
        check = serializers.CharField(required=False, max_length=20)
        run_id = serializers.UUIDField(required=False)

    @extend_schema(operation_id="guardrail_flags_list", parameters=[FilterSerializer],
                   responses=paginated(FlagOutputSerializer), tags=["guardrails"])
    def get(self, request: Request) -> Response:
        filters: dict[str, Any] = validated(self.FilterSerializer, request.query_params)
        flags = selectors.flag_list(tenant_schema=request.user.tenant.schema_name, filters=filters)
        return paginated_response(request=request, view=self, queryset=flags, serializer_class=FlagOutputSerializer)


class GuardrailFlagReviewApi(TenantApiView):
    required_scopes = {"POST": "guardrails:write"}

    class InputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=[GuardrailFlag.Status.CONFIRMED, GuardrailFlag.Status.DISMISSED],
                                         help_text="confirmed: a violation; dismissed: a false positive.")
        comment = serializers.CharField(required=False, default="", allow_blank=True, max_length=1000)

    @extend_schema(operation_id="guardrail_flag_review", request=InputSerializer, responses=FlagOutputSerializer,
                   tags=["guardrails"])
    def post(self, request: Request, flag_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        flag = services.flag_review(tenant=request.user.tenant, flag_id=flag_id, actor=request.user.actor, **data)
        return Response(FlagOutputSerializer(flag).data)
