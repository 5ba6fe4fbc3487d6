"""Deterministic assignment of runs to variants: pure, table-driven (data_plane/experiment_assignment.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from data_plane.experiment_assignment import BUCKETS, assignment_bucket, bucket_bounds, bucket_counts, variant_index
from tests.processes import REPO

KEYS = [f"user-{i}" for i in range(10_000)]


def _expected_bucket(salt: str, key: str) -> int:
    """The documented rule, written out again: sha256(salt:key), first 8 bytes big-endian, modulo 10 000."""
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:16], 16) % 10_000


@pytest.mark.parametrize(("weights", "bounds", "counts"), [
    ([1, 1], [5000, 10000], [5000, 5000]),
    ([1, 3], [2500, 10000], [2500, 7500]),
    ([50, 30, 20], [5000, 8000, 10000], [5000, 3000, 2000]),
    ([1, 1, 1], [3333, 6667, 10000], [3333, 3334, 3333]),
    ([0.5, 0.25, 0.25], [5000, 7500, 10000], [5000, 2500, 2500]),
    ([0.00001, 1], [0, 10000], [0, 10000]),  # too small to own a bucket: the service refuses it
])
def test_bucket_bounds_split_the_ten_thousand_buckets_by_cumulative_weight(weights, bounds, counts):
    assert bucket_bounds(weights) == bounds
    assert bucket_counts(weights) == counts


@pytest.mark.parametrize("weights", [[], [1, 0], [1, -2], [float("nan"), 1]])
def test_weights_that_are_not_all_positive_are_refused(weights):
    with pytest.raises(ValueError):
        bucket_bounds(weights)


def test_the_bucket_is_the_documented_hash():
    assert [assignment_bucket(salt="fixed-salt", key=key) for key in ("alice", "bob")] == [
        _expected_bucket("fixed-salt", "alice"), _expected_bucket("fixed-salt", "bob")]
    assert assignment_bucket(salt="fixed-salt", key="alice") == 3511  # pinned: changing the rule reshuffles users
    assert all(0 <= assignment_bucket(salt="s", key=key) < BUCKETS for key in KEYS[:1000])


def test_the_same_key_gets_the_same_variant_every_time_and_another_salt_reshuffles():
    # when
    first = [variant_index(salt="fixed-salt", key=key, weights=[1, 1]) for key in KEYS[:500]]
    again = [variant_index(salt="fixed-salt", key=key, weights=[1, 1]) for key in KEYS[:500]]
    other = [variant_index(salt="other-salt", key=key, weights=[1, 1]) for key in KEYS[:500]]
    # then
    assert first == again
    assert first != other
    assert [variant_index(salt="fixed-salt", key=key, weights=[1, 1])
            for key in ("alice", "bob", "carol", "dave", "erin", "frank")] == [0, 0, 1, 1, 0, 1]


@pytest.mark.parametrize(("weights", "counts"), [
    ([1, 3], [2489, 7511]),
    ([50, 30, 20], [4963, 3028, 2009]),
])
def test_ten_thousand_keys_split_as_their_buckets_say(weights, counts):
    # given: the expected count of each variant, computed from the hash and the bounds independently
    bounds = bucket_bounds(weights)
    expected = Counter(next(i for i, upper in enumerate(bounds) if _expected_bucket("fixed-salt", key) < upper)
                       for key in KEYS)
    # when
    assigned = Counter(variant_index(salt="fixed-salt", key=key, weights=weights) for key in KEYS)
    # then: exactly those counts (and they are close to the weights)
    assert [assigned[i] for i in range(len(weights))] == [expected[i] for i in range(len(weights))] == counts


def test_another_process_with_another_hash_seed_assigns_the_same_variants():
    # given
    script = ("import json, sys; from data_plane.experiment_assignment import variant_index; "
              "print(json.dumps([variant_index(salt='fixed-salt', key=f'user-{i}', weights=[50, 30, 20]) "
              "for i in range(2000)]))")
    # when
    output = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    # then
    assert json.loads(output) == [variant_index(salt="fixed-salt", key=key, weights=[50, 30, 20])
                                  for key in KEYS[:2000]]
