"""The audit chain's canonical form and its verification, in plain Python (no Django: copy this file to
verify an export offline; docs/security-audit.md shows how).

An event's hash is the lowercase hex SHA-256 of the UTF-8 bytes of its canonical form: one JSON object with
exactly these keys, sorted, no whitespace::

    {"action":…,"actor_id":…,"actor_kind":…,"data":…,"id":"<uuid>","occurred_at":"YYYY-MM-DDTHH:MM:SS.ffffffZ",
     "prev_hash":"<64 hex>","seq":<integer>,"target_id":…,"target_type":…}

Strings are JSON strings with only ``"``, ``\\`` and control characters escaped (``\\n``, ``\\t``…, others as
``\\u00xx``), everything else as UTF-8. ``data``, at any depth: object keys sorted by code point, numbers in
plain decimal notation as PostgreSQL's numeric prints them (``1e-07`` is ``0.0000001``, ``-0.0`` is ``0.0``,
``1.50`` stays ``1.50``). The first event's ``prev_hash`` is 64 zeros. The database computes the same form
in SQL (public.audit_canonical_json, public.audit_event_hash); the two must agree byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

GENESIS_HASH = "0" * 64
CHAINED_FIELDS = ("action", "actor_id", "actor_kind", "data", "id", "occurred_at", "prev_hash", "seq", "target_id",
                  "target_type")


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _number(value: int | float | Decimal) -> str:
    if isinstance(value, int):
        return str(value)
    # a float's repr is what json.dumps sent to the database, and what numeric parsed
    exact = Decimal(repr(value)) if isinstance(value, float) else value
    if not exact.is_finite():
        raise ValueError(f"{value!r} is not a JSON number")
    if exact.is_zero():
        exact = abs(exact)  # numeric has no negative zero
    return format(exact, "f")


def canonical_json(value: Any) -> str:
    """The canonical text of a JSON value (sorted keys, no whitespace, numbers in plain notation)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (int, float, Decimal)):
        return _number(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_string(key)}:{canonical_json(value[key])}" for key in sorted(value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_json(item) for item in value) + "]"
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def parse_json(text: str) -> Any:
    """Parse JSON keeping numbers exact (Decimal), as the canonical form needs them."""
    return json.loads(text, parse_float=Decimal)


def timestamp_text(value: datetime) -> str:
    """The canonical form of a timestamp: UTC, microseconds, a Z."""
    if value.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_event(event: Mapping[str, Any]) -> str:
    """The canonical form of an event given as a mapping of CHAINED_FIELDS (occurred_at a datetime or its
    canonical text; data parsed with parse_json, or any JSON value)."""
    occurred_at = event["occurred_at"]
    fields = {
        "action": _string(event["action"]),
        "actor_id": _string(event["actor_id"]),
        "actor_kind": _string(event["actor_kind"]),
        "data": canonical_json(event["data"]),
        "id": _string(str(event["id"])),
        "occurred_at": _string(occurred_at if isinstance(occurred_at, str) else timestamp_text(occurred_at)),
        "prev_hash": _string(event["prev_hash"]),
        "seq": str(int(event["seq"])),
        "target_id": _string(event["target_id"]),
        "target_type": _string(event["target_type"]),
    }
    return "{" + ",".join(f'"{name}":{fields[name]}' for name in CHAINED_FIELDS) + "}"


def event_hash(event: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_event(event).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChainFailure:
    seq: int  # the first sequence number at which the chain breaks
    kind: str  # gap | unexpected_seq | broken_link | hash_mismatch | truncated | anchor_mismatch | anchor_missing
    message: str


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int  # events walked
    head_seq: int  # the last walked event's seq (0 for an empty chain)
    head_hash: str
    first_failure: ChainFailure | None


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str


def verify_chain(events: Iterable[Mapping[str, Any]], *, anchor: Anchor | None,
                 expect_anchor: bool = True) -> ChainReport:
    """Walk events in seq order and report the first break: a gap (events deleted), an unexpected number,
    a broken link (prev_hash is not the previous event's hash), a hash mismatch (an event changed), or an end
    before the anchor (newest events deleted). ``expect_anchor``: a non-empty chain without one fails."""
    expected_seq, previous_hash, checked = 1, GENESIS_HASH, 0
    anchor_hash_at_seq: str | None = None
    failure: ChainFailure | None = None
    for event in events:
        seq = int(event["seq"])
        if seq > expected_seq:
            missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq} to {seq - 1}"
            failure = ChainFailure(seq=expected_seq, kind="gap",
                                   message=f"events {missing} are missing (deleted): seq {seq} follows "
                                           f"{expected_seq - 1}.")
        elif seq < expected_seq:
            failure = ChainFailure(seq=seq, kind="unexpected_seq",
                                   message=f"seq {seq} where {expected_seq} was expected: an event the chain "
                                           f"trigger did not number.")
        elif event["prev_hash"] != previous_hash:
            failure = ChainFailure(seq=seq, kind="broken_link",
                                   message=f"event {seq}'s prev_hash {event['prev_hash'][:16]}… is not event "
                                           f"{seq - 1}'s hash {previous_hash[:16]}… (an event before it was "
                                           f"changed and rehashed, or replaced).")
        elif (computed := event_hash(event)) != event["hash"]:
            failure = ChainFailure(seq=seq, kind="hash_mismatch",
                                   message=f"event {seq}'s content does not match its hash (changed after it was "
                                           f"written): stored {event['hash'][:16]}…, computed {computed[:16]}….")
        if failure is not None:
            return ChainReport(ok=False, checked=checked, head_seq=expected_seq - 1, head_hash=previous_hash,
                               first_failure=failure)
        checked += 1
        previous_hash = event["hash"]
        if anchor is not None and seq == anchor.seq:
            anchor_hash_at_seq = previous_hash
        expected_seq = seq + 1
    head_seq = expected_seq - 1
    if anchor is None:
        if expect_anchor and head_seq > 0:
            failure = ChainFailure(seq=head_seq, kind="anchor_missing",
                                   message=f"the chain has {head_seq} events but no anchor: truncation of its "
                                           f"newest events cannot be ruled out.")
    elif head_seq < anchor.seq:
        failure = ChainFailure(seq=head_seq + 1, kind="truncated",
                               message=f"the chain ends at seq {head_seq} but its anchor says {anchor.seq}: the "
                                       f"newest events {head_seq + 1} to {anchor.seq} are missing (deleted).")
    elif anchor.seq > 0 and anchor_hash_at_seq != anchor.hash:
        failure = ChainFailure(seq=anchor.seq, kind="anchor_mismatch",
                               message=f"event {anchor.seq}'s hash is not the anchor's {anchor.hash[:16]}…: the "
                                       f"chain was rewritten from there on.")
    return ChainReport(ok=failure is None, checked=checked, head_seq=head_seq, head_hash=previous_hash,
                       first_failure=failure)
