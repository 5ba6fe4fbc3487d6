"""Reads of the public registry. Never writes."""

from __future__ import annotations

from uuid import UUID

from django.db.models import QuerySet

from tenants.errors import ApiKeyNotFound, TenantNotActive, TenantNotFound
from tenants.models import ApiKey, Tenant, TenantLifecycleEvent


def tenant_list(*, status: str | None = None) -> QuerySet[Tenant]:
    tenants = Tenant.objects.prefetch_related("domains")
    return tenants.filter(status=status) if status else tenants


def tenant_get(*, slug: str) -> Tenant:
    """The tenant with this slug, in any status. Raises TenantNotFound."""
    try:
        return Tenant.objects.prefetch_related("domains").get(slug=slug)
    except Tenant.DoesNotExist:
        raise TenantNotFound(f"Tenant {slug!r} does not exist.") from None


def tenant_get_active_by_schema(*, tenant_schema: str) -> Tenant:
    """The active tenant owning ``tenant_schema``. Raises TenantNotActive for any other state."""
    tenant = Tenant.objects.filter(schema_name=tenant_schema).first()
    if tenant is None or tenant.status != Tenant.Status.ACTIVE:
        state = "missing" if tenant is None else tenant.status
        raise TenantNotActive(f"Tenant schema {tenant_schema!r} is {state}; work addressed to it is refused.")
    return tenant


def tenant_lifecycle_list(*, tenant: Tenant) -> QuerySet[TenantLifecycleEvent]:
    return TenantLifecycleEvent.objects.filter(tenant=tenant)


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    """The tenant's keys (active, expired and revoked), oldest first."""
    return ApiKey.objects.filter(tenant=tenant)


def api_key_get(*, tenant: Tenant, key_id: UUID) -> ApiKey:
    """One of the tenant's keys. Raises ApiKeyNotFound, also for another tenant's key."""
    try:
        return ApiKey.objects.get(tenant=tenant, id=key_id)
    except ApiKey.DoesNotExist:
        raise ApiKeyNotFound(f"API key {key_id} not found.") from None


def tenant_get_by_schema(*, tenant_schema: str) -> Tenant:
    """The tenant owning ``tenant_schema``, in any status. Raises TenantNotFound."""
    tenant = Tenant.objects.filter(schema_name=tenant_schema).first()
    if tenant is None:
        raise TenantNotFound(f"No tenant owns schema {tenant_schema!r}.")
    return tenant
