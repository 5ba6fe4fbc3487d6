"""Audit-log endpoints. Thin: parse, call one selector, serialize (or stream)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response

from common.pagination import paginated, paginated_response
from common.streaming import streamed_body
from common.validation import validated
from control_plane.audit import chain
from control_plane.audit.selectors import AuditEventFilters, audit_chain_verify, audit_event_export, audit_event_list
from tenants.api_views import TenantApiView


class AuditEventOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    seq = serializers.IntegerField(help_text="The event's place in the tenant's chain: 1, 2, 3… in commit order.")
    occurred_at = serializers.DateTimeField()
    actor_kind = serializers.CharField()
    actor_id = serializers.CharField()
    action = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    data = serializers.JSONField()
    prev_hash = serializers.CharField(help_text="The previous event's hash (64 zeros for seq 1).")
    hash = serializers.CharField(help_text="SHA-256 (hex) of the event's canonical form; docs/security-audit.md.")


class AuditEventFilterSerializer(serializers.Serializer):
    action = serializers.CharField(required=False, max_length=65, help_text=(
        "Exact action (run.start), or a prefix when it ends with '.' or '*' (run. or run.*)."))
    actor_kind = serializers.CharField(required=False, max_length=32)
    actor_id = serializers.CharField(required=False, max_length=64)
    target_type = serializers.CharField(required=False, max_length=64)
    target_id = serializers.CharField(required=False, max_length=64)
    since = serializers.DateTimeField(required=False, help_text="ISO 8601; events at or after it.")
    until = serializers.DateTimeField(required=False, help_text="ISO 8601; events before it.")
    from_seq = serializers.IntegerField(required=False, min_value=0, help_text="Events with seq >= from_seq.")
    to_seq = serializers.IntegerField(required=False, min_value=0, help_text="Events with seq <= to_seq.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "since" in attrs and "until" in attrs and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": [
                f"until ({attrs['until'].isoformat()}) must be later than since ({attrs['since'].isoformat()})."]})
        if "from_seq" in attrs and "to_seq" in attrs and attrs["from_seq"] > attrs["to_seq"]:
            raise serializers.ValidationError({"to_seq": [
                f"to_seq ({attrs['to_seq']}) must not be below from_seq ({attrs['from_seq']})."]})
        return attrs


def _filters(request: Request) -> AuditEventFilters:
    return AuditEventFilters(**validated(AuditEventFilterSerializer, request.query_params))  # type: ignore[typeddict-item]


class AuditEventListApi(TenantApiView):
    required_scopes = {"GET": "audit:read"}

    @extend_schema(operation_id="audit_events_list", parameters=[AuditEventFilterSerializer],
                   responses=paginated(AuditEventOutputSerializer), tags=["audit"])
    def get(self, request: Request) -> Response:
        events = audit_event_list(tenant_schema=request.user.tenant.schema_name, filters=_filters(request))
        return paginated_response(request=request, view=self, queryset=events,
                                  serializer_class=AuditEventOutputSerializer)


class AuditChainFailureSerializer(serializers.Serializer):
    seq = serializers.IntegerField(help_text="The first sequence number at which the chain breaks.")
    kind = serializers.ChoiceField(choices=["gap", "unexpected_seq", "broken_link", "hash_mismatch", "truncated",
                                            "anchor_mismatch", "anchor_missing"])
    message = serializers.CharField()


class AuditChainVerifyOutputSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    checked = serializers.IntegerField(help_text="Events walked and found intact.")
    head_seq = serializers.IntegerField(help_text="The last intact event's seq (0: none).")
    head_hash = serializers.CharField(help_text="Its hash: keep it to check later that nothing before it changed.")
    first_failure = AuditChainFailureSerializer(allow_null=True)


class AuditChainVerifyApi(TenantApiView):
    """Walk the tenant's whole chain now (one query per 1000 events)."""

    required_scopes = {"GET": "audit:read"}

    @extend_schema(operation_id="audit_events_verify", request=None,
                   responses=AuditChainVerifyOutputSerializer, tags=["audit"])
    def get(self, request: Request) -> Response:
        report = audit_chain_verify(tenant_schema=request.user.tenant.schema_name)
        return Response(AuditChainVerifyOutputSerializer(report).data)


class _AnyAccept(BaseContentNegotiation):
    """``?format=`` names the export's format, not a DRF renderer; errors stay JSON problems."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: str | None = None) -> Any:
        return renderers[0], renderers[0].media_type


EXPORT_COLUMNS = ("seq", "id", "occurred_at", "actor_kind", "actor_id", "action", "target_type", "target_id", "data",
                  "prev_hash", "hash")
EXPORT_MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


def _jsonl(event: dict[str, Any]) -> str:
    fields = {**event, "data": chain.canonical_json(event["data"])}
    return "{" + ",".join(
        f"{json.dumps(name)}:{fields[name] if name == 'data' else json.dumps(fields[name], ensure_ascii=False)}"
        for name in EXPORT_COLUMNS) + "}\n"


def _export_chunks(events: Iterable[dict[str, Any]], export_format: str) -> Iterator[str]:
    """One string per CHUNK events, so a streamed response makes one write (and, under ASGI, one hop to the
    database thread) per query."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if export_format == "csv":
        writer.writerow(EXPORT_COLUMNS)
    count = 0
    for event in events:
        if export_format == "csv":
            writer.writerow([chain.canonical_json(event["data"]) if name == "data" else event[name]
                             for name in EXPORT_COLUMNS])
        else:
            buffer.write(_jsonl(event))
        count += 1
        if count % 1000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()



class AuditEventExportApi(TenantApiView):
    """The filtered events, oldest first, streamed: every chained field, so the chain can be checked offline."""

    required_scopes = {"GET": "audit:read"}
    content_negotiation_class = _AnyAccept

    class FormatSerializer(serializers.Serializer):
        format = serializers.ChoiceField(choices=list(EXPORT_MEDIA_TYPES), default="jsonl", help_text=(
            "jsonl: one JSON object per line; csv: a header row, data as canonical JSON text."))

    @extend_schema(operation_id="audit_events_export", parameters=[FormatSerializer, AuditEventFilterSerializer],
                   responses={(200, media_type): OpenApiResponse(OpenApiTypes.STR, description=(
                       "Events oldest first with seq, prev_hash and hash; the canonical form that the hashes "
                       "cover is in docs/security-audit.md.")) for media_type in EXPORT_MEDIA_TYPES.values()},
                   tags=["audit"])
    def get(self, request: Request) -> StreamingHttpResponse:
        export_format = validated(self.FormatSerializer, {"format": request.query_params.get("format", "jsonl")})[
            "format"]
        filters = _filters(request)
        chunks = _export_chunks(audit_event_export(tenant_schema=request.user.tenant.schema_name, filters=filters),
                                export_format)
        body = streamed_body(request._request, chunks)
        response = StreamingHttpResponse(body, content_type=f"{EXPORT_MEDIA_TYPES[export_format]}; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="audit-events.{export_format}"'
        response["Cache-Control"] = "no-store"
        return response
