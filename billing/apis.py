"""Usage (tenants) and finance report (operators) endpoints. Thin: parse, call one selector, serialize."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import date
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response

from billing import selectors
from billing.models import UsageRecord
from common.streaming import streamed_body
from common.validation import validated
from tenants.api_views import OperatorApiView, TenantApiView

MAX_DAYS = 366
MAX_HOURLY_DAYS = 31


class _AnyAccept(BaseContentNegotiation):
    """``?format=`` names the answer's format, not a DRF renderer; errors stay JSON problems."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: str | None = None) -> Any:
        return renderers[0], renderers[0].media_type


def _dimensions(raw: str, allowed: tuple[str, ...], field: str) -> tuple[str, ...]:
    chosen = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in allowed]
    if unknown or len(set(chosen)) != len(chosen):
        raise serializers.ValidationError({field: [
            f"Give a comma-separated subset of {', '.join(allowed)}, each once; got {raw!r}."]})
    return tuple(dimension for dimension in allowed if dimension in chosen)  # in the canonical order


class _RangeSerializer(serializers.Serializer):
    start = serializers.DateField(required=False, help_text="First UTC day (YYYY-MM-DD), included.")
    end = serializers.DateField(required=False, help_text="Last UTC day (YYYY-MM-DD), included.")
    max_days = MAX_DAYS

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("start"), attrs.get("end")
        if start is not None and end is not None:
            if end < start:
                raise serializers.ValidationError({"end": [
                    f"end ({end.isoformat()}) must not be before start ({start.isoformat()})."]})
            if (end - start).days + 1 > self.max_days:
                raise serializers.ValidationError({"end": [
                    f"At most {self.max_days} days at once; this range has {(end - start).days + 1}. "
                    "Ask for a shorter one."]})
        return attrs


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _csv(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for count, row in enumerate(rows, start=1):
        writer.writerow(["" if row.get(name) is None else _plain(row.get(name)) for name in columns])
        if count % 1000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()



# --- Tenants: their own usage ---------------------------------------------------------------------------------

class UsageApi(TenantApiView):
    """The calling tenant's usage by day or hour, kind, agent and model or tool; totals; this month vs its plan."""

    required_scopes = {"GET": "usage:read"}

    class FilterSerializer(_RangeSerializer):
        granularity = serializers.ChoiceField(choices=["day", "hour"], default="day")
        group_by = serializers.CharField(required=False, default=",".join(selectors.USAGE_DIMENSIONS), help_text=(
            "Comma-separated subset of kind, agent, name (the model, the tool, or a run's status)."))

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            attrs = super().validate(attrs)
            if attrs["granularity"] == "hour" and "start" in attrs and "end" in attrs \
                    and (attrs["end"] - attrs["start"]).days + 1 > MAX_HOURLY_DAYS:
                raise serializers.ValidationError({"end": [
                    f"Hourly usage covers at most {MAX_HOURLY_DAYS} days; ask for daily usage or a shorter range."]})
            return attrs

    @extend_schema(operation_id="usage_get", parameters=[FilterSerializer], responses=OpenApiTypes.OBJECT,
                   tags=["usage"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        group_by = _dimensions(filters["group_by"], selectors.USAGE_DIMENSIONS, "group_by")
        today = timezone.now().date()
        end = filters.get("end") or today
        start = filters.get("start") or end.replace(day=1)
        if end < start or (filters["granularity"] == "hour" and (end - start).days + 1 > MAX_HOURLY_DAYS):
            raise serializers.ValidationError({"start": [
                f"start ({start.isoformat()}) must be on or before end ({end.isoformat()}), and hourly usage "
                f"covers at most {MAX_HOURLY_DAYS} days."]})
        tenant = request.user.tenant
        rows = selectors.usage_rollup_list(tenant=tenant, start=start, end=end, period=filters["granularity"],
                                           group_by=group_by)
        month = selectors.usage_month_against_plan(tenant=tenant, today=today)
        return Response({
            "start": start.isoformat(), "end": end.isoformat(), "granularity": filters["granularity"],
            "group_by": list(group_by),
            "results": [{name: _plain(value) for name, value in row.items()} for row in rows],
            "totals": [{name: _plain(value) for name, value in row.items()}
                       for row in selectors.usage_totals(tenant=tenant, start=start, end=end)],
            "current_month": {name: _plain(value) for name, value in month.__dict__.items()},
        })


class UsageExportApi(TenantApiView):
    """The calling tenant's own usage records, oldest first, streamed as CSV with a header row."""

    required_scopes = {"GET": "usage:read"}
    content_negotiation_class = _AnyAccept

    class FilterSerializer(_RangeSerializer):
        format = serializers.ChoiceField(choices=["csv"], default="csv")
        kind = serializers.ChoiceField(choices=UsageRecord.Kind.choices, required=False)

    @extend_schema(operation_id="usage_export", parameters=[FilterSerializer],
                   responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description=(
                       "One row per usage record: " + ", ".join(selectors.USAGE_EXPORT_COLUMNS)))},
                   tags=["usage"])
    def get(self, request: Request) -> StreamingHttpResponse:
        filters = validated(self.FilterSerializer, request.query_params)
        end = filters.get("end") or timezone.now().date()
        start = filters.get("start") or end.replace(day=1)
        if end < start:
            raise serializers.ValidationError({"start": [f"start ({start.isoformat()}) must be on or before end "
                                                         f"({end.isoformat()})."]})
        records = selectors.usage_record_export(tenant=request.user.tenant, start=start, end=end,
                                                kind=filters.get("kind"))
        chunks = _csv(records, selectors.USAGE_EXPORT_COLUMNS)
        body = streamed_body(request._request, chunks)
        response = StreamingHttpResponse(body, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="usage-{start.isoformat()}-{end.isoformat()}.csv"'
        response["Cache-Control"] = "no-store"
        return response


# --- Operators: the finance report ----------------------------------------------------------------------------

class PlatformFinanceReportApi(OperatorApiView):
    """Per tenant, model and day: tokens, LLM cost, infrastructure share, revenue and margin; cost per session."""

    content_negotiation_class = _AnyAccept

    class FilterSerializer(_RangeSerializer):
        start = serializers.DateField(help_text="First UTC day (YYYY-MM-DD), included.")
        end = serializers.DateField(help_text="Last UTC day (YYYY-MM-DD), included.")
        group_by = serializers.CharField(required=False, default=",".join(selectors.FINANCE_DIMENSIONS),
                                         help_text="Comma-separated subset of tenant, model, day.")
        format = serializers.ChoiceField(choices=["json", "csv"], default="json")
        report = serializers.ChoiceField(choices=["margin", "sessions"], default="margin", help_text=(
            "csv only: margin (the rows above) or sessions (cost per session per tenant and day)."))

    @extend_schema(operation_id="platform_finance_report", parameters=[FilterSerializer],
                   responses={(200, "application/json"): OpenApiTypes.OBJECT,
                              (200, "text/csv"): OpenApiTypes.STR}, tags=["platform"])
    def get(self, request: Request) -> HttpResponse:
        filters = validated(self.FilterSerializer, request.query_params)
        group_by = _dimensions(filters["group_by"], selectors.FINANCE_DIMENSIONS, "group_by")
        report = selectors.finance_report(
            start=filters["start"], end=filters["end"], group_by=group_by,
            infrastructure_usd_per_month=Decimal(settings.FINANCE_INFRASTRUCTURE_USD_PER_MONTH))
        if filters["format"] == "csv":
            return finance_csv_response(report, sessions=filters["report"] == "sessions")
        return Response(finance_json(report))


def finance_columns(report: selectors.FinanceReport) -> tuple[str, ...]:
    dimensions = tuple(report.group_by) + (("tier",) if "tenant" in report.group_by else ())
    return dimensions + selectors.METRIC_COLUMNS


def finance_json(report: selectors.FinanceReport) -> dict[str, Any]:
    return {
        "start": report.start.isoformat(), "end": report.end.isoformat(), "group_by": list(report.group_by),
        "revenue_source": report.revenue_source,
        "infrastructure_usd_per_month": str(report.infrastructure_usd_per_month),
        "infrastructure_driver": "llm_calls",
        "rows": [{name: _plain(value) for name, value in row.items()} for row in report.rows],
        "totals": {name: _plain(value) for name, value in report.totals.items()},
        "sessions": [{name: _plain(value) for name, value in row.items()} for row in report.sessions],
    }


def finance_csv(report: selectors.FinanceReport, *, sessions: bool = False) -> str:
    if sessions:
        return "".join(_csv(report.sessions, selectors.SESSION_COLUMNS))
    return "".join(_csv(report.rows, finance_columns(report)))


def finance_csv_response(report: selectors.FinanceReport, *, sessions: bool) -> HttpResponse:
    response = HttpResponse(finance_csv(report, sessions=sessions), content_type="text/csv; charset=utf-8")
    name = "finance-sessions" if sessions else "finance"
    response["Content-Disposition"] = \
        f'attachment; filename="{name}-{report.start.isoformat()}-{report.end.isoformat()}.csv"'
    response["Cache-Control"] = "no-store"
    return response


