"""SLO endpoints: the calling tenant's (usage:read) and the platform's, per tenant and overall (operator key).

Thin: parse, call one selector, serialize.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing import slo_selectors
from common.validation import validated
from tenants.api_views import OperatorApiView, TenantApiView


class SloFilterSerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text=(
        "Evaluate every SLO over [since, until) instead of its own window (5 min, 1 h, 1 day, the month)."))
    until = serializers.DateTimeField(required=False, help_text="The end of the custom window (default: now).")
    month = serializers.RegexField(r"^2\d{3}-(0[1-9]|1[0-2])$", required=False, help_text=(
        "The month of the SLA status, YYYY-MM (UTC); the current month by default."),
        error_messages={"invalid": "Give the month as YYYY-MM (a year from 2000), for example 2026-03."})

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        now = timezone.now()
        since, until = data.get("since"), data.get("until")
        if until is not None and since is None:
            raise serializers.ValidationError({"since": "A custom window needs since (until alone is not one)."})
        if since is not None:
            end = until or now
            if since >= end or since >= now:
                raise serializers.ValidationError({"since": "since must be before until and before now."})
            if end - since > slo_selectors.MAX_CUSTOM_WINDOW:
                raise serializers.ValidationError(
                    {"since": f"A custom window spans at most {slo_selectors.MAX_CUSTOM_WINDOW.days} days; "
                              f"this one spans {(end - since).days} days."})
        if data.get("month") and data["month"] > f"{now:%Y-%m}":
            raise serializers.ValidationError(
                {"month": f"{data['month']} has not begun; give this or an earlier month."})
        return data


class WindowOutputSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="rolling_5m, rolling_1h, rolling_1d, month or custom.")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class ErrorBudgetOutputSerializer(serializers.Serializer):
    unit = serializers.CharField(help_text="minutes (availability), runs (error rate) or calls (tool calls).")
    allowed = serializers.FloatField(help_text="Bad events the objective allows over the whole window.")
    used = serializers.FloatField()
    left = serializers.FloatField(help_text="allowed - used; negative when overspent.")
    left_fraction = serializers.FloatField(allow_null=True, help_text="left / allowed; null without traffic.")


class SloOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    unit = serializers.CharField(help_text="ms or ratio.")
    objective = serializers.CharField(help_text="below: value < target; at_least: value >= target.")
    target = serializers.FloatField()
    value = serializers.FloatField(allow_null=True, help_text="null: nothing to measure in the window.")
    is_met = serializers.BooleanField(allow_null=True)
    events = serializers.IntegerField(help_text="Runs, turns, tool call attempts or minutes behind the value.")
    window = WindowOutputSerializer()
    error_budget = ErrorBudgetOutputSerializer(allow_null=True)
    is_exact = serializers.BooleanField()


class SlaOutputSerializer(serializers.Serializer):
    tier = serializers.CharField()
    month = serializers.CharField()
    is_final = serializers.BooleanField(help_text="The month is over; before that, is_met and the credit may change.")
    availability_target = serializers.FloatField()
    availability = serializers.FloatField()
    down_minutes = serializers.IntegerField()
    allowed_down_minutes = serializers.FloatField()
    is_met = serializers.BooleanField()
    credit_percent = serializers.IntegerField()
    credit_percent_due = serializers.IntegerField()
    credit_usd_due = serializers.DecimalField(max_digits=12, decimal_places=2)


class SloReportOutputSerializer(serializers.Serializer):
    scope = serializers.CharField(help_text="The tenant's slug, or platform.")
    sla_tier = serializers.CharField()
    evaluated_at = serializers.DateTimeField()
    slos = SloOutputSerializer(many=True)
    sla = SlaOutputSerializer(allow_null=True)


class PlatformSloReportOutputSerializer(serializers.Serializer):
    overall = SloReportOutputSerializer()
    tenants = SloReportOutputSerializer(many=True)


def _data(report: Any) -> dict[str, Any]:
    return asdict(report)


class SloReportApi(TenantApiView):
    """The tenant's SLOs, error budgets left and SLA status, computed from its recorded runs."""

    required_scopes = {"GET": "usage:read"}

    @extend_schema(operation_id="slos_get", parameters=[SloFilterSerializer], responses=SloReportOutputSerializer,
                   tags=["slos"])
    def get(self, request: Request) -> Response:
        filters = validated(SloFilterSerializer, request.query_params)
        report = slo_selectors.slo_report_get(tenant=request.user.tenant, **filters)
        return Response(SloReportOutputSerializer(_data(report)).data)


class PlatformSloReportApi(OperatorApiView):
    """Every tenant's SLOs and the platform's overall, each tenant measured inside its own schema."""

    @extend_schema(operation_id="platform_slos_get", parameters=[SloFilterSerializer],
                   responses=PlatformSloReportOutputSerializer, tags=["platform"])
    def get(self, request: Request) -> Response:
        filters = validated(SloFilterSerializer, request.query_params)
        report = slo_selectors.slo_report_platform(**filters)
        return Response(PlatformSloReportOutputSerializer(_data(report)).data)
