"""Secrets at rest: AES-256-GCM (the `cryptography` package), each value bound to where it is stored.

A sealed value reads ``v1:<base64 nonce + ciphertext + tag>``. The associated data (for example a tenant's
schema and the row's id) must match when opening, so a value copied to another row or tenant does not
decrypt. The key comes from the environment (settings.SECRETS_KEY, 32 bytes in base64); key rotation and
per-tenant data keys come with the security issue.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v1:"


class SecretUnreadable(Exception):
    """The sealed value was tampered with, moved, or sealed with another key."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("An AES-256 key is 32 bytes.")
        self._aead = AESGCM(key)

    def seal(self, value: Any, *, bound_to: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, json.dumps(value, separators=(",", ":")).encode(), bound_to.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, *, bound_to: str) -> Any:
        if not sealed.startswith(PREFIX):
            raise SecretUnreadable("Not a sealed value.")
        raw = base64.b64decode(sealed[len(PREFIX):])
        try:
            plain = self._aead.decrypt(raw[:12], raw[12:], bound_to.encode())
        except InvalidTag:
            raise SecretUnreadable("The sealed value does not open here (tampered, moved, or another key).") from None
        return json.loads(plain)
