"""Envelope encryption of tenants' data: keyrings, sealing, rotation (docs/security-encryption.md).

Each tenant has versioned data keys (``TenantDataKey``), stored only wrapped by a master key (a
``common.crypto.KeyWrapper``: the environment's master keys, or a KMS). ``tenant_cipher`` gives the tenant's
``TenantCipher``: it seals new values with the current version and opens every version still active (and v1
values, sealed before data keys existed). Unwrapped keys are kept in this process for
ENCRYPTION_CACHE_SECONDS at most, for at most ENCRYPTION_CACHE_TENANTS tenants (least recently used go).

Rotation never stops reads or writes:
- master key: ``master_key_rotate`` rewraps every data key under the current master key; values are not
  touched, and both master keys unwrap meanwhile. The old master key can go once no data key names it.
- data key: ``tenant_data_key_rotate`` adds a version that new writes use at once (other processes within
  ENCRYPTION_CACHE_SECONDS), re-seals every sealed value of the tenant in batches, waits out the caches,
  re-seals what was written meanwhile with an older version, then retires the older versions (their key
  material is erased). Until then they still open.

Where the sealed values are is told by the contexts that store them (``sealed_location_register``, from their
AppConfig.ready), so this context imports none of them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from common.actors import Actor
from common.crypto import (
    V2_PREFIX,
    DataKeyCipher,
    KeyWrapper,
    LocalKeyWrapper,
    SecretBox,
    SecretUnreadable,
    WrappedKey,
    data_key_new,
    master_keys_parse,
    sealed_version,
)
from common.locks import advisory_key
from control_plane.audit.services import audit_event_record
from control_plane.encryption.errors import EncryptionConfigurationError, RotationInProgress
from control_plane.encryption.models import TenantDataKey, TenantKeyring
from tenants.selectors import tenant_get_by_schema

logger = logging.getLogger(__name__)

KEYRING_ACTOR = Actor(kind="system", id="keyring")
ENCRYPTED_BY_DEFAULT_TIERS = frozenset({"enterprise"})

_LOCK = threading.Lock()
_WRAPPERS: dict[tuple[str, str], KeyWrapper] = {}
_CIPHERS: TTLCache[str, TenantCipher] | None = None


# --- master keys -------------------------------------------------------------------------------------


def key_wrapper() -> KeyWrapper:
    """The master keys of this deployment (MASTER_KEYS, MASTER_KEY_CURRENT). A KMS-backed KeyWrapper would be
    chosen here (docs/security-encryption.md, "A KMS instead of MASTER_KEYS")."""
    config = (settings.MASTER_KEYS, settings.MASTER_KEY_CURRENT)
    with _LOCK:
        wrapper = _WRAPPERS.get(config)
    if wrapper is None:
        try:
            wrapper = LocalKeyWrapper(master_keys_parse(config[0]), current=config[1])
        except ValueError as exc:
            raise EncryptionConfigurationError(f"The master keys are misconfigured: {exc}") from None
        with _LOCK:
            _WRAPPERS[config] = wrapper
    return wrapper


def _wrap_context(tenant_id: Any, version: int) -> str:
    return f"tenant-data-key|{tenant_id}|{version}"


def _data_key_create(*, tenant_id: Any, version: int) -> TenantDataKey:
    wrapped = key_wrapper().wrap(data_key_new(), context=_wrap_context(tenant_id, version))
    return TenantDataKey.objects.create(tenant_id=tenant_id, version=version, master_key_id=wrapped.master_key_id,
                                        wrapped_key=wrapped.wrapped)


def _data_key_unwrap(key: TenantDataKey) -> bytes:
    return key_wrapper().unwrap(WrappedKey(master_key_id=key.master_key_id, wrapped=bytes(key.wrapped_key)),
                                context=_wrap_context(key.tenant_id, key.version))


# --- keyrings and ciphers ----------------------------------------------------------------------------


def tenant_keyring_ensure(*, tenant: Any, encrypts_payloads: bool | None = None) -> TenantKeyring:
    """The tenant's keyring, created with data key version 1 when it has none (at provisioning, or lazily for
    a tenant provisioned before keyrings). Payloads are encrypted by default for the tiers in
    ENCRYPTED_BY_DEFAULT_TIERS. Idempotent; safe when two processes race (one row wins)."""
    found = TenantKeyring.objects.filter(tenant_id=tenant.id).first()
    if found is not None:
        return found
    encrypts = tenant.sla_tier in ENCRYPTED_BY_DEFAULT_TIERS if encrypts_payloads is None else encrypts_payloads
    try:
        with transaction.atomic():
            keyring = TenantKeyring.objects.create(tenant_id=tenant.id, current_version=1, encrypts_payloads=encrypts,
                                                   updated_by=str(KEYRING_ACTOR))
            key = _data_key_create(tenant_id=tenant.id, version=1)
    except IntegrityError:  # another process created it first
        return TenantKeyring.objects.get(tenant_id=tenant.id)
    audit_event_record(tenant=tenant, actor=KEYRING_ACTOR, action="encryption.keyring_create",
                       target_type="tenant_data_key", target_id="1",
                       data={"version": 1, "master_key_id": key.master_key_id, "encrypts_payloads": encrypts})
    return keyring


class TenantCipher:
    """One tenant's sealing. Secrets are always sealed; payloads (checkpoints, memories) when
    ``encrypts_payloads``. Opens v1 values and every active version; a version it does not know yet (another
    process rotated) makes it read the tenant's keys again once."""

    def __init__(self, *, tenant_id: Any, tenant_schema: str, encrypts_payloads: bool, cipher: DataKeyCipher,
                 reload: Callable[[], DataKeyCipher]) -> None:
        self.tenant_id = tenant_id
        self.tenant_schema = tenant_schema
        self.encrypts_payloads = encrypts_payloads
        self._cipher = cipher
        self._reload = reload

    @property
    def current_version(self) -> int:
        return self._cipher.current_version

    def seal_text(self, text: str, *, bound_to: str) -> str:
        return self._cipher.seal_text(text, bound_to=bound_to)

    def open_text(self, sealed: str, *, bound_to: str) -> str:
        version = sealed_version(sealed)
        if version is not None and version not in self._cipher.versions:
            self._cipher = self._reload()
        return self._cipher.open_text(sealed, bound_to=bound_to)

    def seal(self, value: Any, *, bound_to: str) -> str:
        """A JSON value (a dict of credentials, a string), sealed for ``bound_to``."""
        return self._cipher.seal(value, bound_to=bound_to)

    def open(self, sealed: str, *, bound_to: str) -> Any:
        return json.loads(self.open_text(sealed, bound_to=bound_to))


def _data_key_cipher(tenant: Any, keyring: TenantKeyring) -> DataKeyCipher:
    keys = {key.version: _data_key_unwrap(key)
            for key in TenantDataKey.objects.filter(tenant_id=tenant.id, state=TenantDataKey.State.ACTIVE)}
    return DataKeyCipher(tenant_id=str(tenant.id), keys=keys, current_version=keyring.current_version,
                         legacy=SecretBox(settings.SECRETS_KEY))


def _cipher_build(tenant: Any) -> TenantCipher:
    keyring = tenant_keyring_ensure(tenant=tenant)

    def reload() -> DataKeyCipher:
        return _data_key_cipher(tenant, TenantKeyring.objects.get(tenant_id=tenant.id))

    return TenantCipher(tenant_id=tenant.id, tenant_schema=tenant.schema_name,
                        encrypts_payloads=keyring.encrypts_payloads, cipher=_data_key_cipher(tenant, keyring),
                        reload=reload)


def _cache() -> TTLCache[str, TenantCipher]:
    global _CIPHERS
    if _CIPHERS is None or _CIPHERS.ttl != settings.ENCRYPTION_CACHE_SECONDS:
        _CIPHERS = TTLCache(maxsize=settings.ENCRYPTION_CACHE_TENANTS, ttl=settings.ENCRYPTION_CACHE_SECONDS)
    return _CIPHERS


def tenant_cipher(*, tenant_schema: str) -> TenantCipher:
    """The tenant's cipher, kept in this process for ENCRYPTION_CACHE_SECONDS. Creates the tenant's keyring
    when it has none. Raises TenantNotFound for a schema no tenant owns."""
    with _LOCK:
        cipher = _cache().get(tenant_schema)
    if cipher is not None:
        return cipher
    cipher = _cipher_build(tenant_get_by_schema(tenant_schema=tenant_schema))
    with _LOCK:
        _cache()[tenant_schema] = cipher
    return cipher


def tenant_cipher_forget(*, tenant_schema: str | None = None) -> None:
    """Read the tenant's keys and policy again at next use (every tenant's when None). Other processes see a
    change within ENCRYPTION_CACHE_SECONDS."""
    with _LOCK:
        if tenant_schema is None:
            _cache().clear()
        else:
            _cache().pop(tenant_schema, None)


def secret_seal(*, tenant_schema: str, value: Any, bound_to: str) -> str:
    """Seal a tenant's secret (a JSON value: a webhook signing secret, a provider key, credentials) for storage
    in one place, which ``bound_to`` names (for example ``f"webhook-endpoint:{tenant_schema}:{endpoint_id}"``):
    the result opens only there, for that tenant. Store it in a text column and register that column with
    ``sealed_location_register`` so key rotation re-seals it."""
    return tenant_cipher(tenant_schema=tenant_schema).seal(value, bound_to=bound_to)


def secret_open(*, tenant_schema: str, sealed: str, bound_to: str) -> Any:
    """The secret ``secret_seal`` sealed for ``bound_to``. Raises SecretUnreadable (moved, tampered, retired)."""
    return tenant_cipher(tenant_schema=tenant_schema).open(sealed, bound_to=bound_to)


def tenant_payload_encryption_set(*, tenant: Any, encrypts_payloads: bool, actor: Actor) -> TenantKeyring:
    """Turn the encryption of the tenant's checkpoint and memory payloads on or off, for new writes (what is
    stored stays as it is and reads back either way). Audited. Idempotent."""
    tenant_keyring_ensure(tenant=tenant)
    with transaction.atomic():
        keyring = TenantKeyring.objects.select_for_update().get(tenant_id=tenant.id)
        before = keyring.encrypts_payloads
        keyring.encrypts_payloads = encrypts_payloads
        keyring.updated_by = str(actor)
        keyring.save(update_fields=["encrypts_payloads", "updated_by", "updated_at"])
        audit_event_record(tenant=tenant, actor=actor, action="encryption.payload_policy_update",
                           target_type="tenant_keyring", target_id=str(tenant.id),
                           data={"before": {"encrypts_payloads": before},
                                 "after": {"encrypts_payloads": encrypts_payloads}})
        transaction.on_commit(lambda: tenant_cipher_forget(tenant_schema=tenant.schema_name))
    tenant_cipher_forget(tenant_schema=tenant.schema_name)
    return keyring


# --- where sealed values are, and re-sealing them ----------------------------------------------------


@dataclass(frozen=True)
class SealedLocation:
    """A column (or a part of one) of a tenant table that holds sealed values, for re-sealing.

    ``sealed_sql`` is an SQL expression of the row giving its sealed text (NULL or '' when it holds none);
    ``assign_sql`` writes ``%(sealed)s`` back; ``key_sql`` selects what ``bound_to`` needs, from the row. Rows
    are walked in ``id`` order. All SQL is run in the tenant's schema (its name is put in front of ``table``).

    A column that holds several sealed values as JSON strings (a JSON array or object) also gives ``parts``: the
    column's sealed values by their place in it (an array's index, an object's key), which ``bound_to`` gets
    after the key columns; ``assemble``, the column with some of them replaced; and ``part_sql_re``, a regular
    expression of what comes right before a sealed value's opening quote (after which its prefix follows), for
    finding the rows that hold a stale one.
    """

    name: str
    table: str
    key_sql: str
    sealed_sql: str
    assign_sql: str
    bound_to: Callable[[str, tuple[Any, ...]], str]  # (tenant schema, key columns[, part]) -> bound_to
    parts: Callable[[str], dict[Any, str]] | None = None
    assemble: Callable[[str, dict[Any, str]], str] | None = None
    part_sql_re: str = ""


_LOCATIONS: dict[str, SealedLocation] = {}


def sealed_location_register(location: SealedLocation) -> None:
    """Tell rotation where sealed values are kept (called from a context's AppConfig.ready)."""
    _LOCATIONS[location.name] = location


def sealed_locations() -> list[SealedLocation]:
    return list(_LOCATIONS.values())


@dataclass
class ResealReport:
    resealed: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.resealed.values())

    def add(self, other: ResealReport) -> None:
        for name, count in other.resealed.items():
            self.resealed[name] = self.resealed.get(name, 0) + count
        for name, count in other.unreadable.items():
            self.unreadable[name] = self.unreadable.get(name, 0) + count


def _stale_filter(location: SealedLocation) -> str:
    # v1 values, and v2 values of another version than the current one
    if location.parts is not None:  # a sealed part of the column is: v1, or v2 not followed by the version
        return (f"(({location.sealed_sql}) ~ ('{location.part_sql_re}\"(v1:|v2:(?!' || "
                f"split_part(%(current)s, ':', 2) || ':))'))")
    return (f"(({location.sealed_sql}) LIKE 'v1:%%' OR (({location.sealed_sql}) LIKE 'v2:%%' "
            f"AND ({location.sealed_sql}) NOT LIKE %(current)s))")


def _is_stale(sealed: str, current: str) -> bool:
    return sealed.startswith("v1:") or (sealed.startswith("v2:") and not sealed.startswith(current[:-1]))


def _reseal_location(*, cipher: DataKeyCipher, tenant_schema: str, location: SealedLocation, batch: int
                     ) -> tuple[int, int]:
    """Re-seal the location's stale values with the current version, ``batch`` rows per transaction. Each row is
    written only if it still holds the value read (a concurrent writer wins). Returns (resealed, unreadable)."""
    table = f'"{tenant_schema}".{location.table}'
    current = f"{V2_PREFIX}{cipher.current_version}:%"
    resealed = unreadable = 0
    after: Any = None
    while True:
        where = _stale_filter(location) + (" AND id > %(after)s" if after is not None else "")
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SELECT id, {location.sealed_sql}, {location.key_sql} FROM {table} WHERE {where} "
                           f"ORDER BY id LIMIT %(n)s", {"current": current, "after": after, "n": batch})
            rows = cursor.fetchall()
            for row in rows:
                row_id, old = row[0], row[1]
                if location.parts is None:
                    stale = {None: old}
                else:
                    stale = {part: sealed for part, sealed in location.parts(old).items() if _is_stale(sealed, current)}
                fresh = {}
                for part, sealed in stale.items():
                    bound_to = location.bound_to(tenant_schema, tuple(row[2:]) + ((part,) if location.parts else ()))
                    try:
                        fresh[part] = cipher.seal_text(cipher.open_text(sealed, bound_to=bound_to), bound_to=bound_to)
                    except SecretUnreadable:
                        logger.error("Sealed value %s %s%s of %s does not open; left as it is", location.name, row_id,
                                     f" [{part}]" if location.parts else "", tenant_schema)
                        unreadable += 1
                if not fresh:
                    continue
                new = fresh[None] if location.parts is None else location.assemble(old, fresh)  # type: ignore[misc]
                cursor.execute(f"UPDATE {table} SET {location.assign_sql} WHERE id = %(id)s AND {location.sealed_sql} "
                               f"= %(old)s", {"sealed": new, "id": row_id, "old": old})
                resealed += len(fresh) if cursor.rowcount else 0
        if len(rows) < batch:
            return resealed, unreadable
        after = rows[-1][0]


def _reseal_all(*, tenant: Any, batch: int) -> ResealReport:
    keyring = TenantKeyring.objects.get(tenant_id=tenant.id)
    cipher = _data_key_cipher(tenant, keyring)
    report = ResealReport()
    # In the tenant's schema: its database role is the one that may read and write its tables (tenants.db_roles).
    with schema_context(tenant.schema_name):
        for location in sealed_locations():
            done, bad = _reseal_location(cipher=cipher, tenant_schema=tenant.schema_name, location=location,
                                         batch=batch)
            if done:
                report.resealed[location.name] = done
            if bad:
                report.unreadable[location.name] = bad
    return report


def _stale_count(*, tenant: Any, version: int) -> int:
    current = f"{V2_PREFIX}{version}:%"
    total = 0
    with schema_context(tenant.schema_name), connection.cursor() as cursor:
        for location in sealed_locations():
            cursor.execute(f'SELECT count(*) FROM "{tenant.schema_name}".{location.table} '
                           f"WHERE {_stale_filter(location)}", {"current": current})
            total += cursor.fetchone()[0]
    return total


class _RotationLock:
    """One rotation (or re-seal) of a tenant at a time, across processes: a session advisory lock."""

    def __init__(self, tenant: Any) -> None:
        self.key = advisory_key("encryption-rotation", str(tenant.id))
        self.slug = tenant.slug

    def __enter__(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [self.key])
            if not cursor.fetchone()[0]:
                raise RotationInProgress(f"A key rotation or re-seal of tenant {self.slug!r} is running; wait for it "
                                         "to finish, then retry.")

    def __exit__(self, *exc: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [self.key])


def tenant_values_reseal(*, tenant: Any, actor: Actor, batch: int = 500) -> ResealReport:
    """Re-seal every v1 value of the tenant (and any of an older data key version) with its current data key.
    Audited (counts only). Idempotent; raises RotationInProgress when a rotation of the tenant runs."""
    tenant_keyring_ensure(tenant=tenant)
    with _RotationLock(tenant):
        report = _reseal_all(tenant=tenant, batch=batch)
    audit_event_record(tenant=tenant, actor=actor, action="encryption.reseal", target_type="tenant_keyring",
                       target_id=str(tenant.id), data={"resealed": report.resealed, "unreadable": report.unreadable})
    return report


@dataclass
class TenantRotationReport:
    from_version: int
    to_version: int
    resealed: ResealReport
    retired_versions: list[int]
    remaining: int  # values still sealed with an older version (unreadable ones); versions kept if any


def tenant_data_key_rotate(*, tenant: Any, actor: Actor, batch: int = 500, grace_seconds: float | None = None,
                           passes: int = 3) -> TenantRotationReport:
    """Add a data key version for new writes, re-seal the tenant's values with it, then retire older versions.

    Reads and writes go on meanwhile: values of an older version open until it is retired, which happens only
    once none is left. ``grace_seconds`` (ENCRYPTION_CACHE_SECONDS by default) is how long processes may keep
    sealing with the old version (their cached cipher); a last pass re-seals what they wrote. Audited at the
    start and at the end, without key material. Raises RotationInProgress.
    """
    grace = settings.ENCRYPTION_CACHE_SECONDS if grace_seconds is None else grace_seconds
    tenant_keyring_ensure(tenant=tenant)
    with _RotationLock(tenant):
        with transaction.atomic():
            keyring = TenantKeyring.objects.select_for_update().get(tenant_id=tenant.id)
            latest = TenantDataKey.objects.filter(tenant_id=tenant.id).order_by("-version").first()
            from_version = keyring.current_version
            to_version = (latest.version if latest else 0) + 1
            key = _data_key_create(tenant_id=tenant.id, version=to_version)
            keyring.current_version = to_version
            keyring.updated_by = str(actor)
            keyring.save(update_fields=["current_version", "updated_by", "updated_at"])
            audit_event_record(tenant=tenant, actor=actor, action="encryption.data_key_rotate_start",
                               target_type="tenant_data_key", target_id=str(to_version),
                               data={"from_version": from_version, "to_version": to_version,
                                     "master_key_id": key.master_key_id})
        switched_at = time.monotonic()
        tenant_cipher_forget(tenant_schema=tenant.schema_name)
        report = _reseal_all(tenant=tenant, batch=batch)
        remaining = 0
        for _ in range(passes):
            time.sleep(max(0.0, grace - (time.monotonic() - switched_at)))
            report.add(_reseal_all(tenant=tenant, batch=batch))
            remaining = _stale_count(tenant=tenant, version=to_version)
            if remaining == 0:
                break
        retired: list[int] = []
        if remaining == 0:
            with transaction.atomic():
                older = TenantDataKey.objects.select_for_update().filter(
                    tenant_id=tenant.id, state=TenantDataKey.State.ACTIVE, version__lt=to_version)
                retired = sorted(older.values_list("version", flat=True))
                older.update(state=TenantDataKey.State.RETIRED, wrapped_key=b"", master_key_id="",
                             retired_at=timezone.now())
        tenant_cipher_forget(tenant_schema=tenant.schema_name)
        audit_event_record(tenant=tenant, actor=actor, action="encryption.data_key_rotate_finish",
                           target_type="tenant_data_key", target_id=str(to_version),
                           data={"to_version": to_version, "resealed": report.resealed,
                                 "unreadable": report.unreadable, "retired_versions": retired,
                                 "remaining": remaining})
    return TenantRotationReport(from_version=from_version, to_version=to_version, resealed=report,
                                retired_versions=retired, remaining=remaining)


@dataclass
class MasterRotationReport:
    current_master_key_id: str
    rewrapped: int
    tenants: int
    still_used: dict[str, int]  # master key id -> active data keys it still wraps (after the rotation)


def master_key_rotate(*, actor: Actor, tenant_ids: list[Any] | None = None) -> MasterRotationReport:
    """Rewrap every active data key under the current master key (MASTER_KEY_CURRENT). Values are untouched and
    every read goes on working: the old master key unwraps until this is done, then it is no longer needed.
    Each key is written only if still wrapped as read. Audited per tenant (key ids and versions only). Idempotent.
    """
    wrapper = key_wrapper()
    current = wrapper.current_key_id
    keys = TenantDataKey.objects.filter(state=TenantDataKey.State.ACTIVE).exclude(master_key_id=current)
    if tenant_ids is not None:
        keys = keys.filter(tenant_id__in=tenant_ids)
    per_tenant: dict[Any, list[tuple[int, str]]] = {}
    for key in keys.order_by("id").iterator():
        plain = _data_key_unwrap(key)
        rewrapped = wrapper.wrap(plain, context=_wrap_context(key.tenant_id, key.version))
        changed = TenantDataKey.objects.filter(id=key.id, master_key_id=key.master_key_id,
                                               state=TenantDataKey.State.ACTIVE).update(
            master_key_id=rewrapped.master_key_id, wrapped_key=rewrapped.wrapped)
        if changed:
            per_tenant.setdefault(key.tenant_id, []).append((key.version, key.master_key_id))
    for tenant_id, versions in per_tenant.items():
        tenant = TenantKeyring.objects.select_related("tenant").get(tenant_id=tenant_id).tenant
        audit_event_record(tenant=tenant, actor=actor, action="encryption.master_key_rotate",
                           target_type="tenant_keyring", target_id=str(tenant_id),
                           data={"to_master_key_id": current, "versions": [v for v, _ in versions],
                                 "from_master_key_ids": sorted({m for _, m in versions})})
    return MasterRotationReport(current_master_key_id=current, rewrapped=sum(len(v) for v in per_tenant.values()),
                                tenants=len(per_tenant), still_used=master_keys_in_use())


def master_keys_in_use() -> dict[str, int]:
    """Master key id -> how many active data keys it wraps: a master key absent here can leave MASTER_KEYS."""
    used: dict[str, int] = {}
    for master_key_id in TenantDataKey.objects.filter(state=TenantDataKey.State.ACTIVE).values_list(
            "master_key_id", flat=True):
        used[master_key_id] = used.get(master_key_id, 0) + 1
    return used
