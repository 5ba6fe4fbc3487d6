"""Budget endpoints: budgets with their current period's spend, alerts, and the month's token quota.
Thin: parse, call one service or selector, serialize."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing import selectors, services
from billing.models import Budget
from common.pagination import paginated, paginated_response
from common.validation import validated
from tenants.api_views import TenantApiView

_LIMIT = {"max_digits": 16, "decimal_places": 8, "min_value": Decimal(0), "max_value": Decimal("100000000")}
_THRESHOLDS_HELP = "Percents of the limit at which an alert is recorded once per period (default 50, 80, 100)."


class CurrentPeriodSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField(allow_null=True, help_text="When it resets; null for a total budget.")
    spent_usd = serializers.DecimalField(max_digits=18, decimal_places=8, help_text="Settled cost of LLM calls.")
    reserved_usd = serializers.DecimalField(max_digits=18, decimal_places=8,
                                            help_text="Held by LLM calls in flight (their worst case).")
    remaining_usd = serializers.DecimalField(max_digits=18, decimal_places=8)
    is_exhausted = serializers.BooleanField(help_text="New runs are refused (429) until the period resets or the "
                                                      "limit is raised.")


class BudgetOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    scope = serializers.CharField()
    agent_id = serializers.UUIDField(allow_null=True)
    agent_name = serializers.CharField(allow_null=True)
    period = serializers.CharField()
    limit_usd = serializers.DecimalField(max_digits=16, decimal_places=8)
    alert_thresholds = serializers.ListField(child=serializers.IntegerField())
    is_enabled = serializers.BooleanField()
    current_period = CurrentPeriodSerializer()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def to_representation(self, instance: Any) -> dict[str, Any]:
        current = selectors.budget_status(budget=instance)
        return super().to_representation({
            "id": instance.id, "scope": instance.scope, "agent_id": instance.agent_id,
            "agent_name": instance.agent_name or None, "period": instance.period, "limit_usd": instance.limit_usd,
            "alert_thresholds": list(instance.alert_thresholds), "is_enabled": instance.is_enabled,
            "current_period": {"start": current.period_start, "end": current.period_end,
                               "spent_usd": current.spent_usd, "reserved_usd": current.reserved_usd,
                               "remaining_usd": current.remaining_usd, "is_exhausted": current.is_exhausted},
            "created_at": instance.created_at, "updated_at": instance.updated_at})


class BudgetListCreateApi(TenantApiView):
    required_scopes = {"GET": "budgets:read", "POST": "budgets:write"}

    class InputSerializer(serializers.Serializer):
        scope = serializers.ChoiceField(choices=Budget.Scope.choices,
                                        help_text="tenant: every LLM call of the tenant; agent: one agent's.")
        agent_id = serializers.UUIDField(required=False, allow_null=True, default=None,
                                         help_text="The agent of an agent budget.")
        period = serializers.ChoiceField(choices=Budget.Period.choices,
                                         help_text="day and month reset at UTC midnight and the 1st; total never.")
        limit_usd = serializers.DecimalField(**_LIMIT)
        alert_thresholds = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=1000),
                                                 required=False, allow_empty=True, max_length=10,
                                                 help_text=_THRESHOLDS_HELP)
        is_enabled = serializers.BooleanField(required=False, default=True)

    @extend_schema(operation_id="budgets_list", responses=paginated(BudgetOutputSerializer), tags=["budgets"])
    def get(self, request: Request) -> Response:
        return paginated_response(request=request, view=self, queryset=selectors.budget_list(tenant=request.user.tenant),
                                  serializer_class=BudgetOutputSerializer)

    @extend_schema(operation_id="budgets_create", request=InputSerializer, responses={201: BudgetOutputSerializer},
                   tags=["budgets"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        budget = services.budget_create(tenant=request.user.tenant, actor=request.user.actor, **data)
        return Response(BudgetOutputSerializer(budget).data, status=status.HTTP_201_CREATED)


class BudgetDetailApi(TenantApiView):
    required_scopes = {"GET": "budgets:read", "PATCH": "budgets:write", "DELETE": "budgets:write"}

    class PatchSerializer(serializers.Serializer):
        limit_usd = serializers.DecimalField(**_LIMIT, required=False)
        alert_thresholds = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=1000),
                                                 required=False, allow_empty=True, max_length=10,
                                                 help_text=_THRESHOLDS_HELP)
        is_enabled = serializers.BooleanField(required=False)

    @extend_schema(operation_id="budgets_get", responses=BudgetOutputSerializer, tags=["budgets"])
    def get(self, request: Request, budget_id: UUID) -> Response:
        budget = selectors.budget_get(tenant=request.user.tenant, budget_id=budget_id)
        return Response(BudgetOutputSerializer(budget).data)

    @extend_schema(operation_id="budgets_update", request=PatchSerializer, responses=BudgetOutputSerializer,
                   tags=["budgets"])
    def patch(self, request: Request, budget_id: UUID) -> Response:
        data = validated(self.PatchSerializer, request.data)
        budget = services.budget_update(tenant=request.user.tenant, budget_id=budget_id, actor=request.user.actor,
                                        **data)
        return Response(BudgetOutputSerializer(budget).data)

    @extend_schema(operation_id="budgets_delete", responses={204: None}, tags=["budgets"])
    def delete(self, request: Request, budget_id: UUID) -> Response:
        services.budget_delete(tenant=request.user.tenant, budget_id=budget_id, actor=request.user.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class BudgetAlertOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    budget_id = serializers.UUIDField()
    scope = serializers.CharField(source="budget.scope")
    agent_name = serializers.CharField(source="budget.agent_name")
    period = serializers.CharField(source="budget.period")
    period_start = serializers.DateTimeField()
    threshold = serializers.IntegerField(help_text="Percent of the limit the period's settled spend reached.")
    spent_usd = serializers.DecimalField(max_digits=18, decimal_places=8)
    limit_usd = serializers.DecimalField(max_digits=16, decimal_places=8)
    created_at = serializers.DateTimeField()


class BudgetAlertListApi(TenantApiView):
    required_scopes = {"GET": "budgets:read"}

    class FilterSerializer(serializers.Serializer):
        budget_id = serializers.UUIDField(required=False)

    @extend_schema(operation_id="budget_alerts_list", parameters=[FilterSerializer],
                   responses=paginated(BudgetAlertOutputSerializer), tags=["budgets"])
    def get(self, request: Request) -> Response:
        data = validated(self.FilterSerializer, request.query_params)
        alerts = selectors.budget_alert_list(tenant=request.user.tenant, budget_id=data.get("budget_id"))
        return paginated_response(request=request, view=self, queryset=alerts,
                                  serializer_class=BudgetAlertOutputSerializer)


class TokenQuotaOutputSerializer(serializers.Serializer):
    tier = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    quota_tokens = serializers.IntegerField(help_text="The plan's tokens_per_month.")
    used_tokens = serializers.IntegerField(help_text="Input and output tokens of this month's settled LLM calls.")
    reserved_tokens = serializers.IntegerField(help_text="Held by LLM calls in flight (their worst case).")
    remaining_tokens = serializers.IntegerField()
    is_exhausted = serializers.BooleanField()


class TokenQuotaApi(TenantApiView):
    required_scopes = {"GET": "usage:read"}

    @extend_schema(operation_id="quotas_tokens_get", responses=TokenQuotaOutputSerializer, tags=["budgets"])
    def get(self, request: Request) -> Response:
        return Response(TokenQuotaOutputSerializer(selectors.token_quota_get(tenant=request.user.tenant)).data)
