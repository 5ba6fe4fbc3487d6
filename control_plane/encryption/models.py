"""Public-schema models: each tenant's data keys (stored only wrapped by a master key) and its policy."""

from __future__ import annotations

from django.db import models


class TenantKeyring(models.Model):
    """A tenant's encryption settings: which data key version seals new values, and whether its checkpoint
    and memory payloads are encrypted (secrets always are)."""

    tenant = models.OneToOneField("tenants.Tenant", on_delete=models.CASCADE, primary_key=True, related_name="+")
    current_version = models.PositiveIntegerField(default=1)
    encrypts_payloads = models.BooleanField(default=False)
    updated_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)


class TenantDataKey(models.Model):
    """One version of a tenant's data key, wrapped (AES-256-GCM) by master key ``master_key_id`` with the
    tenant, the version and the master key's id as associated data. Retired versions keep no key material."""

    class State(models.TextChoices):
        ACTIVE = "active"
        RETIRED = "retired"

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    version = models.PositiveIntegerField()
    master_key_id = models.CharField(max_length=64, blank=True, default="")
    wrapped_key = models.BinaryField(default=b"")
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["tenant", "version"]
        constraints = [models.UniqueConstraint(fields=["tenant", "version"], name="tenant_data_key_version_unique")]
