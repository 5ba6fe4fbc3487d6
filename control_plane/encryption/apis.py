"""Operator endpoints for tenants' encryption. Thin: parse, call one service or selector, serialize."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from common.validation import validated
from control_plane.encryption import selectors, services
from tenants.api_views import OperatorApiView
from tenants.selectors import tenant_get


class DataKeyVersionOutputSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    state = serializers.CharField(help_text="active (opens values) or retired (its key material is erased).")
    master_key_id = serializers.CharField(help_text="The master key wrapping it ('' once retired).")
    created_at = serializers.DateTimeField()
    retired_at = serializers.DateTimeField(allow_null=True)


class KeyringOutputSerializer(serializers.Serializer):
    tenant_slug = serializers.CharField()
    encrypts_payloads = serializers.BooleanField(help_text="Checkpoint and memory payloads are sealed when written.")
    current_version = serializers.IntegerField(help_text="The data key version new values are sealed with.")
    versions = DataKeyVersionOutputSerializer(many=True)
    updated_by = serializers.CharField()
    updated_at = serializers.DateTimeField()


class PlatformTenantEncryptionApi(OperatorApiView):
    class InputSerializer(serializers.Serializer):
        encrypts_payloads = serializers.BooleanField(
            help_text="true: seal the tenant's checkpoint and memory payloads from now on; false: stop. What is "
                      "stored stays as it is and reads back either way.")

    @extend_schema(operation_id="platform_tenants_encryption_get", responses=KeyringOutputSerializer,
                   tags=["platform"])
    def get(self, request: Request, slug: str) -> Response:
        tenant = tenant_get(slug=slug)
        keyring = services.tenant_keyring_ensure(tenant=tenant)
        return Response(KeyringOutputSerializer(selectors.tenant_keyring_get(tenant=tenant, keyring=keyring)).data)

    @extend_schema(operation_id="platform_tenants_encryption_update", request=InputSerializer,
                   responses=KeyringOutputSerializer, tags=["platform"])
    def put(self, request: Request, slug: str) -> Response:
        data = validated(self.InputSerializer, request.data)
        tenant = tenant_get(slug=slug)
        keyring = services.tenant_payload_encryption_set(tenant=tenant, actor=request.user.actor, **data)
        return Response(KeyringOutputSerializer(selectors.tenant_keyring_get(tenant=tenant, keyring=keyring)).data)
