"""Reads of tenants' keyrings (never key material). Never writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from control_plane.encryption.models import TenantDataKey, TenantKeyring


@dataclass(frozen=True)
class DataKeyVersion:
    version: int
    state: str
    master_key_id: str
    created_at: datetime
    retired_at: datetime | None


@dataclass(frozen=True)
class KeyringView:
    tenant_slug: str
    encrypts_payloads: bool
    current_version: int
    versions: list[DataKeyVersion]
    updated_by: str
    updated_at: datetime


def tenant_keyring_get(*, tenant: Any, keyring: TenantKeyring | None = None) -> KeyringView:
    """The tenant's encryption policy and data key versions (ids and states only). Call
    encryption.services.tenant_keyring_ensure first for a tenant that may have no keyring yet."""
    keyring = keyring or TenantKeyring.objects.get(tenant_id=tenant.id)
    versions = [DataKeyVersion(version=k.version, state=k.state, master_key_id=k.master_key_id, created_at=k.created_at,
                               retired_at=k.retired_at)
                for k in TenantDataKey.objects.filter(tenant_id=tenant.id).defer("wrapped_key")]
    return KeyringView(tenant_slug=tenant.slug, encrypts_payloads=keyring.encrypts_payloads,
                       current_version=keyring.current_version, versions=versions, updated_by=keyring.updated_by,
                       updated_at=keyring.updated_at)
