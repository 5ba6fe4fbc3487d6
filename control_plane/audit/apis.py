"""Audit-log endpoints. Thin: parse, call one selector, serialize."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from common.pagination import paginated, paginated_response
from common.validation import validated
from control_plane.audit.selectors import audit_event_list
from tenants.api_views import TenantApiView


class AuditEventOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    occurred_at = serializers.DateTimeField()
    actor_kind = serializers.CharField()
    actor_id = serializers.CharField()
    action = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    data = serializers.JSONField()


class AuditEventListApi(TenantApiView):
    required_scopes = {"GET": "audit:read"}

    class FilterSerializer(serializers.Serializer):
        action = serializers.CharField(required=False, max_length=64)
        target_id = serializers.CharField(required=False, max_length=64)

    @extend_schema(operation_id="audit_events_list", parameters=[FilterSerializer],
                   responses=paginated(AuditEventOutputSerializer), tags=["audit"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        events = audit_event_list(tenant_schema=request.user.tenant.schema_name, **filters)
        return paginated_response(request=request, view=self, queryset=events,
                                  serializer_class=AuditEventOutputSerializer)
