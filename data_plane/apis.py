"""Data-plane endpoints. Thin: parse, call one service or selector, serialize."""

from __future__ import annotations

from uuid import UUID

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from common.pagination import paginated, paginated_response
from common.validation import validated
from data_plane import selectors, services
from data_plane.serializers import PingOutputSerializer
from tenants.api_views import TenantApiView


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
