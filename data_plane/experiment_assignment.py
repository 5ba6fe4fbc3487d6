"""Deterministic assignment of runs to an experiment's variants. Pure: no Django, no clock, no randomness.

A key (the run's ``assignment_key``: by default its end user) is hashed with the experiment's salt:
``sha256(salt + ":" + key)``, its first 8 bytes read as an unsigned big-endian integer, modulo 10 000, is the
key's bucket. The variants own consecutive ranges of the 10 000 buckets in proportion to their weights (in
their order): the same key always lands in the same variant of the same experiment, in any process, and a new
experiment (a new salt) splits the keys afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

BUCKETS = 10_000


def assignment_bucket(*, salt: str, key: str) -> int:
    """The key's bucket in [0, 10 000) for this salt."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def bucket_bounds(weights: Sequence[float]) -> list[int]:
    """The exclusive upper bucket of each variant: cumulative weights scaled to 10 000 (the last is 10 000).
    Raises ValueError unless every weight is positive."""
    if not weights or any(not weight > 0 for weight in weights):
        raise ValueError("Every weight must be a positive number.")
    total = float(sum(weights))
    bounds, running = [], 0.0
    for weight in weights:
        running += weight
        bounds.append(int(round(running / total * BUCKETS)))
    bounds[-1] = BUCKETS
    return bounds


def bucket_counts(weights: Sequence[float]) -> list[int]:
    """How many of the 10 000 buckets each variant owns (its traffic share is that over 10 000)."""
    bounds = bucket_bounds(weights)
    return [upper - lower for lower, upper in zip([0, *bounds[:-1]], bounds)]


def variant_index(*, salt: str, key: str, weights: Sequence[float]) -> int:
    """The position of the variant this key is assigned to. Same salt, key and weights: same answer."""
    bucket = assignment_bucket(salt=salt, key=key)
    return next(index for index, upper in enumerate(bucket_bounds(weights)) if bucket < upper)
