"""Public-schema models: the tenant registry, domains, and the index of hashed credentials."""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


class Tenant(TenantMixin):
    class SlaTier(models.TextChoices):
        STANDARD = "standard"
        PROFESSIONAL = "professional"
        ENTERPRISE = "enterprise"

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"
        DELETED = "deleted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=48, unique=True)
    sla_tier = models.CharField(max_length=16, choices=SlaTier.choices, default=SlaTier.STANDARD)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    status_reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Schemas are created and dropped by tenants.services explicitly, never as a side effect of save().
    auto_create_schema = False
    auto_drop_schema = False

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.slug


class Domain(DomainMixin):
    """A hostname that resolves to a tenant (for the portal); the API resolves tenants by credential."""


class TenantLifecycleEvent(models.Model):
    """Append-only history of a tenant's status, kept in the public schema so it outlives the tenant."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="lifecycle_events")
    action = models.CharField(max_length=32)
    from_status = models.CharField(max_length=16, blank=True, default="")
    to_status = models.CharField(max_length=16)
    reason = models.CharField(max_length=500, blank=True, default="")
    actor = models.CharField(max_length=100)
    occurred_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["occurred_at"]


class HashedKey(models.Model):
    """A credential we store only as an HMAC of its secret (see common.keys)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    lookup_id = models.CharField(max_length=12, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class ApiKey(HashedKey):
    """A tenant's API key. Lives in the public schema so a request can be resolved to its tenant."""

    PREFIX = "agp"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    scopes = ArrayField(models.CharField(max_length=64), default=list)
    created_by_key = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["tenant", "created_at"])]


class OperatorKey(HashedKey):
    """A platform operator's key: provisions, suspends and deletes tenants; reads no tenant data."""

    PREFIX = "agpop"

    class Meta:
        ordering = ["created_at"]
