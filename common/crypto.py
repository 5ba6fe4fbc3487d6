"""Secrets and payloads at rest: AES-256-GCM (the `cryptography` package), envelope keys, each value bound
to where it is stored.

Two sealed formats are read:

- ``v1:<base64 nonce + ciphertext + tag>``: sealed with one process-wide key (settings.SECRETS_KEY), the
  associated data being the caller's ``bound_to``. Still opened; no longer written (``manage.py keys_reseal``
  turns every v1 value of a tenant into v2).
- ``v2:<key version>:<base64 nonce + ciphertext + tag>``: sealed with version ``<key version>`` of the
  tenant's data key; the associated data binds the tenant, the version and the caller's ``bound_to`` (for
  example the table and the row's id), so a value copied to another row or tenant does not open, and a
  rewritten version number does not either.

Data keys are random 32-byte keys, one line of versions per tenant, stored only wrapped by a master key
(``KeyWrapper``): ``LocalKeyWrapper`` holds master keys from the environment; a cloud KMS implements the
same two calls (see docs/security-encryption.md). This module is pure: no Django, no environment reads.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v1:"
V2_PREFIX = "v2:"
NONCE_BYTES = 12
KEY_BYTES = 32


class SecretUnreadable(Exception):
    """The sealed value was tampered with, moved, or sealed with another key."""


class SecretBox:
    """The v1 format: one key for every tenant. Kept to open values sealed before envelope keys."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("An AES-256 key is 32 bytes.")
        self._aead = AESGCM(key)

    def seal(self, value: Any, *, bound_to: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, json.dumps(value, separators=(",", ":")).encode(), bound_to.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open_text(self, sealed: str, *, bound_to: str) -> str:
        if not sealed.startswith(PREFIX):
            raise SecretUnreadable("Not a sealed value.")
        raw = _b64(sealed[len(PREFIX):])
        try:
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], bound_to.encode()).decode()
        except InvalidTag:
            raise SecretUnreadable("The sealed value does not open here (tampered, moved, or another key).") from None

    def open(self, sealed: str, *, bound_to: str) -> Any:
        return json.loads(self.open_text(sealed, bound_to=bound_to))


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SecretUnreadable("The sealed value is not base64.") from None


# --- master keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrappedKey:
    """A data key as stored: encrypted under the master key ``master_key_id``."""

    master_key_id: str
    wrapped: bytes


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys with master keys that never leave it (a process's memory, or a KMS).

    ``context`` is authenticated with the key (the tenant, the version): a wrapped key moved to another
    tenant's row does not unwrap. A KMS implementation maps wrap to Encrypt and unwrap to Decrypt with
    ``context`` as the encryption context; ``current_key_id`` is the KMS key (or alias) new wraps use.
    """

    @property
    def current_key_id(self) -> str: ...

    def wrap(self, data_key: bytes, *, context: str) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, *, context: str) -> bytes: ...

    def has_key(self, master_key_id: str) -> bool: ...


class MasterKeyMissing(SecretUnreadable):
    """A data key is wrapped by a master key this process does not hold."""


class LocalKeyWrapper:
    """Master keys held in this process (from the environment): AES-256-GCM key wrapping."""

    def __init__(self, keys: dict[str, bytes], *, current: str) -> None:
        if current not in keys:
            raise ValueError(f"The current master key {current!r} is not among the master keys "
                             f"({', '.join(sorted(keys)) or 'none'}).")
        for key_id, key in keys.items():
            if len(key) != KEY_BYTES:
                raise ValueError(f"Master key {key_id!r} is {len(key)} bytes; an AES-256 key is 32.")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._current = current

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def has_key(self, master_key_id: str) -> bool:
        return master_key_id in self._keys

    def wrap(self, data_key: bytes, *, context: str) -> WrappedKey:
        nonce = os.urandom(NONCE_BYTES)
        aad = f"{self._current}|{context}".encode()
        return WrappedKey(master_key_id=self._current,
                          wrapped=nonce + self._keys[self._current].encrypt(nonce, data_key, aad))

    def unwrap(self, wrapped: WrappedKey, *, context: str) -> bytes:
        master = self._keys.get(wrapped.master_key_id)
        if master is None:
            raise MasterKeyMissing(f"Master key {wrapped.master_key_id!r} is not configured in MASTER_KEYS; add it "
                                   "back until `manage.py keys_rotate_master` has rewrapped every data key.")
        aad = f"{wrapped.master_key_id}|{context}".encode()
        try:
            return master.decrypt(wrapped.wrapped[:NONCE_BYTES], wrapped.wrapped[NONCE_BYTES:], aad)
        except InvalidTag:
            raise SecretUnreadable(f"The data key does not unwrap with master key {wrapped.master_key_id!r} "
                                   "(tampered, or wrapped for another tenant or version).") from None


def master_keys_parse(spec: str) -> dict[str, bytes]:
    """``id1:base64key,id2:base64key`` as {id: key}. Raises ValueError saying which entry is wrong."""
    keys: dict[str, bytes] = {}
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id or not key_id.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"MASTER_KEYS entry {entry[:24]!r}… is not <id>:<base64 of 32 bytes> (ids are letters, "
                             "digits, '-' and '_').")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"MASTER_KEYS entry {key_id!r} is not valid base64.") from None
        if len(key) != KEY_BYTES:
            raise ValueError(f"MASTER_KEYS entry {key_id!r} is {len(key)} bytes; it must be 32 (AES-256).")
        if key_id in keys:
            raise ValueError(f"MASTER_KEYS names {key_id!r} twice.")
        keys[key_id] = key
    return keys


def data_key_new() -> bytes:
    return AESGCM.generate_key(bit_length=256)


# --- data keys ---------------------------------------------------------------------------------------


def sealed_version(sealed: str) -> int | None:
    """The data key version of a v2 value; None for v1 (or anything else)."""
    if not sealed.startswith(V2_PREFIX):
        return None
    version, sep, _ = sealed[len(V2_PREFIX):].partition(":")
    if not sep or not version.isdigit():
        raise SecretUnreadable("A v2 sealed value reads v2:<key version>:<base64>.")
    return int(version)


class DataKeyCipher:
    """Seals and opens one tenant's v2 values with its data keys (all versions given, one current)."""

    def __init__(self, *, tenant_id: str, keys: dict[int, bytes], current_version: int,
                 legacy: SecretBox | None = None) -> None:
        self.tenant_id = tenant_id
        self.current_version = current_version
        self._aeads = {version: AESGCM(key) for version, key in keys.items()}
        self._legacy = legacy
        if current_version not in self._aeads:
            raise ValueError(f"Data key version {current_version} is not among the given ones.")

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(self._aeads)

    def _aad(self, version: int, bound_to: str) -> bytes:
        return f"v2|{self.tenant_id}|{version}|{bound_to}".encode()

    def seal_text(self, text: str, *, bound_to: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        version = self.current_version
        body = self._aeads[version].encrypt(nonce, text.encode(), self._aad(version, bound_to))
        return f"{V2_PREFIX}{version}:{base64.b64encode(nonce + body).decode()}"

    def open_text(self, sealed: str, *, bound_to: str) -> str:
        if sealed.startswith(PREFIX):
            if self._legacy is None:
                raise SecretUnreadable("A v1 value, and no v1 key to open it.")
            return self._legacy.open_text(sealed, bound_to=bound_to)
        version = sealed_version(sealed)
        if version is None:
            raise SecretUnreadable("Not a sealed value.")
        aead = self._aeads.get(version)
        if aead is None:
            raise SecretUnreadable(f"Data key version {version} of this tenant is retired or unknown.")
        raw = _b64(sealed[len(V2_PREFIX) + len(str(version)) + 1:])
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], self._aad(version, bound_to)).decode()
        except InvalidTag:
            raise SecretUnreadable("The sealed value does not open here (tampered, moved, or another key).") from None

    def seal(self, value: Any, *, bound_to: str) -> str:
        """A JSON value, sealed."""
        return self.seal_text(json.dumps(value, separators=(",", ":")), bound_to=bound_to)

    def open(self, sealed: str, *, bound_to: str) -> Any:
        return json.loads(self.open_text(sealed, bound_to=bound_to))


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX) or value.startswith(V2_PREFIX)
