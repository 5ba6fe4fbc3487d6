"""Tenant and platform-operator endpoints. Thin: parse, call one service or selector, serialize."""

from __future__ import annotations

from functools import partial
from uuid import UUID

from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing.stripe_tasks import billing_account_open_task
from common.pagination import paginated, paginated_response
from common.validation import validated
from tenants import selectors, services
from tenants.api_views import OperatorApiView, TenantApiView
from tenants.errors import TenantStatusConflict
from tenants.models import Tenant
from tenants.scopes import ALL_SCOPES


class TenantOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    slug = serializers.CharField()
    sla_tier = serializers.CharField()
    status = serializers.CharField()
    status_reason = serializers.CharField()
    schema_name = serializers.CharField()
    domains = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_domains(self, tenant: Tenant) -> list[str]:
        return [domain.domain for domain in tenant.domains.all()]


class ApiKeyOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.SerializerMethodField(help_text="The non-secret start of the key, to recognise it.")
    scopes = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    is_active = serializers.SerializerMethodField()

    def get_prefix(self, key) -> str:  # type: ignore[no-untyped-def]
        return f"{key.PREFIX}_{key.lookup_id}"

    def get_is_active(self, key) -> bool:  # type: ignore[no-untyped-def]
        from django.utils import timezone

        return key.revoked_at is None and (key.expires_at is None or key.expires_at > timezone.now())


class IssuedApiKeyOutputSerializer(ApiKeyOutputSerializer):
    secret = serializers.CharField(help_text="The whole key. Shown once: store it now, it cannot be read again.")


def _issued(issued: services.IssuedKey) -> dict:  # type: ignore[type-arg]
    data = dict(ApiKeyOutputSerializer(issued.key).data)
    data["secret"] = issued.plaintext
    return data


# --- The calling tenant --------------------------------------------------------------------------

class TenantSelfApi(TenantApiView):
    required_scopes = {"GET": "tenant:read"}

    @extend_schema(operation_id="tenant_get", responses=TenantOutputSerializer, tags=["tenant"])
    def get(self, request: Request) -> Response:
        return Response(TenantOutputSerializer(request.user.tenant).data)


class ApiKeyListCreateApi(TenantApiView):
    required_scopes = {"GET": "keys:read", "POST": "keys:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(
            child=serializers.CharField(max_length=64), allow_empty=False,
            help_text=f"Any of: {', '.join(ALL_SCOPES)}; at most the creating key's own scopes.",
        )
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    @extend_schema(operation_id="api_keys_list", responses=paginated(ApiKeyOutputSerializer), tags=["api keys"])
    def get(self, request: Request) -> Response:
        keys = selectors.api_key_list(tenant=request.user.tenant)
        return paginated_response(request=request, view=self, queryset=keys, serializer_class=ApiKeyOutputSerializer)

    @extend_schema(operation_id="api_keys_create", request=InputSerializer,
                   responses={201: IssuedApiKeyOutputSerializer}, tags=["api keys"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        issued = services.api_key_create(
            tenant=request.user.tenant, actor=request.user.actor, granting_scopes=list(request.user.scopes), **data
        )
        return Response(_issued(issued), status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(TenantApiView):
    required_scopes = {"GET": "keys:read"}

    @extend_schema(operation_id="api_keys_get", responses=ApiKeyOutputSerializer, tags=["api keys"])
    def get(self, request: Request, key_id: UUID) -> Response:
        key = selectors.api_key_get(tenant=request.user.tenant, key_id=key_id)
        return Response(ApiKeyOutputSerializer(key).data)


class ApiKeyRevokeApi(TenantApiView):
    required_scopes = {"POST": "keys:write"}

    @extend_schema(operation_id="api_keys_revoke", request=None, responses=ApiKeyOutputSerializer, tags=["api keys"])
    def post(self, request: Request, key_id: UUID) -> Response:
        key = services.api_key_revoke(tenant=request.user.tenant, key_id=key_id, actor=request.user.actor)
        return Response(ApiKeyOutputSerializer(key).data)


# --- Platform operator ---------------------------------------------------------------------------

class OwnerInvitationOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField()
    expires_at = serializers.DateTimeField()


class ProvisionedTenantOutputSerializer(serializers.Serializer):
    tenant = TenantOutputSerializer()
    admin_key = IssuedApiKeyOutputSerializer()
    owner_invitation = OwnerInvitationOutputSerializer(allow_null=True, help_text="Sent by email to owner_email.")


class PlatformTenantListCreateApi(OperatorApiView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        slug = serializers.CharField(max_length=48, help_text="3-48 of a-z, 0-9 and '-', starting with a letter.")
        sla_tier = serializers.ChoiceField(choices=Tenant.SlaTier.choices, default=Tenant.SlaTier.STANDARD)
        domains = serializers.ListField(child=serializers.CharField(max_length=253), required=False, default=list)
        owner_email = serializers.EmailField(required=False, allow_null=True, default=None,
                                             help_text="Email the tenant's first owner an invitation to the portal.")

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Tenant.Status.choices, required=False)

    @extend_schema(operation_id="platform_tenants_list", parameters=[FilterSerializer],
                   responses=paginated(TenantOutputSerializer), tags=["platform"])
    def get(self, request: Request) -> Response:
        filters = validated(self.FilterSerializer, request.query_params)
        tenants = selectors.tenant_list(**filters)
        return paginated_response(request=request, view=self, queryset=tenants,
                                  serializer_class=TenantOutputSerializer)

    @extend_schema(operation_id="platform_tenants_provision", request=InputSerializer,
                   responses={201: ProvisionedTenantOutputSerializer}, tags=["platform"])
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request.data)
        provisioned = services.tenant_provision(actor=request.user.actor, **data)
        if settings.STRIPE_ENABLED:  # its Stripe customer and subscription, by a task that retries Stripe's outages
            transaction.on_commit(partial(billing_account_open_task.delay, tenant_slug=provisioned.tenant.slug))
        invitation = provisioned.owner_invitation
        body = {"tenant": TenantOutputSerializer(provisioned.tenant).data, "admin_key": _issued(provisioned.admin_key),
                "owner_invitation": OwnerInvitationOutputSerializer(invitation.invitation).data if invitation else None}
        return Response(body, status=status.HTTP_201_CREATED)


class PlatformTenantDetailApi(OperatorApiView):
    class DeleteInputSerializer(serializers.Serializer):
        confirm = serializers.CharField(help_text="The tenant's slug, repeated: deletion drops all its data.")

    @extend_schema(operation_id="platform_tenants_get", responses=TenantOutputSerializer, tags=["platform"])
    def get(self, request: Request, slug: str) -> Response:
        return Response(TenantOutputSerializer(selectors.tenant_get(slug=slug)).data)

    class PatchInputSerializer(serializers.Serializer):
        sla_tier = serializers.ChoiceField(choices=Tenant.SlaTier.choices,
                                           help_text="The tenant's new SLA tier: quotas, rate limits and run queue "
                                                     "change with its next request (docs/quotas.md).")

    @extend_schema(operation_id="platform_tenants_update", request=PatchInputSerializer,
                   responses=TenantOutputSerializer, tags=["platform"])
    def patch(self, request: Request, slug: str) -> Response:
        from billing import stripe_selectors  # billing builds on tenants: imported where it is needed

        data = validated(self.PatchInputSerializer, request.data)
        tenant = selectors.tenant_get(slug=slug)
        account = stripe_selectors.billing_account_find(tenant=tenant)
        if account is not None and account.status in ("active", "past_due"):
            raise TenantStatusConflict(
                f"Tenant {slug!r} pays through a Stripe subscription ({account.tier}); change its tier with POST "
                f"/v1/platform/tenants/{slug}/billing/tier so the subscription's prices change with it.")
        tenant = services.tenant_tier_change(tenant=tenant, actor=request.user.actor, **data)
        return Response(TenantOutputSerializer(tenant).data)

    @extend_schema(operation_id="platform_tenants_delete", request=DeleteInputSerializer,
                   responses=TenantOutputSerializer, tags=["platform"])
    def delete(self, request: Request, slug: str) -> Response:
        data = validated(self.DeleteInputSerializer, request.data)
        tenant = selectors.tenant_get(slug=slug)
        if data["confirm"] != slug:
            raise serializers.ValidationError({"confirm": [f"Repeat the slug {slug!r} to confirm the deletion."]})
        deleted = services.tenant_delete(tenant=tenant, actor=request.user.actor)
        return Response(TenantOutputSerializer(deleted).data)


class PlatformTenantSuspendApi(OperatorApiView):
    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=500)

    @extend_schema(operation_id="platform_tenants_suspend", request=InputSerializer,
                   responses=TenantOutputSerializer, tags=["platform"])
    def post(self, request: Request, slug: str) -> Response:
        data = validated(self.InputSerializer, request.data)
        tenant = services.tenant_suspend(tenant=selectors.tenant_get(slug=slug), actor=request.user.actor, **data)
        return Response(TenantOutputSerializer(tenant).data)


class PlatformTenantApiKeyCreateApi(OperatorApiView):
    """Issue a key for a tenant: the recovery path when a tenant has lost every admin key."""

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(child=serializers.CharField(max_length=64), allow_empty=False,
                                       help_text=f"Any of: {', '.join(ALL_SCOPES)}.")
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    @extend_schema(operation_id="platform_tenants_api_keys_create", request=InputSerializer,
                   responses={201: IssuedApiKeyOutputSerializer}, tags=["platform"])
    def post(self, request: Request, slug: str) -> Response:
        data = validated(self.InputSerializer, request.data)
        tenant = selectors.tenant_get(slug=slug)
        issued = services.api_key_create(tenant=tenant, actor=request.user.actor, granting_scopes=None, **data)
        return Response(_issued(issued), status=status.HTTP_201_CREATED)


class PlatformTenantReactivateApi(OperatorApiView):
    @extend_schema(operation_id="platform_tenants_reactivate", request=None, responses=TenantOutputSerializer,
                   tags=["platform"])
    def post(self, request: Request, slug: str) -> Response:
        tenant = services.tenant_reactivate(tenant=selectors.tenant_get(slug=slug), actor=request.user.actor)
        return Response(TenantOutputSerializer(tenant).data)
