"""Postgres advisory locks: a 64-bit key for a name, so unrelated code and tenants never share a lock."""

from __future__ import annotations

import hashlib


def advisory_key(*parts: str) -> int:
    """The signed 64-bit key for a lock named by ``parts`` (name them fully: a purpose, the tenant's schema,
    the thing locked). Advisory locks span the whole database: every tenant shares their key space."""
    name = "|".join(parts)
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
