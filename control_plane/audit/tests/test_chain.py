"""The canonical form: Python (chain.py) and PostgreSQL (public.audit_canonical_json, audit_event_hash) agree."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from django.db import connection

from control_plane.audit import chain

# what a tenant's code can put in an event's data, and what raw SQL can
VALUES = [
    {},
    [],
    {"b": 1, "a": 2, "aa": 3, "B": 4, "é": 5, "z": 6, "\u00e9\u0301": 7, "😀": 8, "": 9},
    {"text": "quote \" backslash \\ slash / newline \n tab \t cr \r bell \u0007 unit \u001f del \u007f ls \u2028"},
    {"unicode": "Grüße, 東京, עברית, 😀"},
    {"numbers": [0, -0, 1, -1, 10**30, 0.1, 1.5, -2.25, 1e-07, 1.5e-07, 1e+16, 1e22, 123456789.123456, -0.0,
                 3.141592653589793, 2.5e-310]},
    {"nested": {"list": [{"z": None, "a": True}, [False, [], {}]], "deep": {"deeper": {"deepest": "x"}}}},
    {"arguments": {"expression": "2+2", "n": 3}, "tool": "calculator", "server": None, "status": "ok"},
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_python_and_postgres_write_the_same_canonical_json(db, value):
    # given what Django stores (its JSONField sends json.dumps)
    stored = json.dumps(value)
    # when
    with connection.cursor() as cursor:
        cursor.execute("SELECT public.audit_canonical_json(%s::jsonb), %s::jsonb::text", [stored, stored])
        in_postgres, as_stored = cursor.fetchone()
    # then: from the value the app had, and from the JSON text the database gives back (exports, verification)
    assert chain.canonical_json(value) == in_postgres
    assert chain.canonical_json(chain.parse_json(as_stored)) == in_postgres


@pytest.mark.parametrize("literal", ["1.50", "1.0E+2", "-0.000", "12345678901234567890.123456789012345678901",
                                     "1e-20", "0E-10", "5e3"])
def test_numbers_written_by_raw_sql_canonicalise_alike(db, literal):
    with connection.cursor() as cursor:
        cursor.execute("SELECT public.audit_canonical_json(%s::jsonb), %s::jsonb::text", [literal, literal])
        in_postgres, as_stored = cursor.fetchone()
    assert chain.canonical_json(chain.parse_json(as_stored)) == in_postgres
    assert chain.canonical_json(Decimal(literal)) == in_postgres


def test_python_and_postgres_hash_an_event_alike(db):
    # given
    event = {"id": str(uuid.uuid4()), "seq": 42, "occurred_at": datetime(2026, 3, 1, 12, 0, 0, 7, tzinfo=timezone.utc),
             "actor_kind": "api_key", "actor_id": "k-1", "action": "run.start", "target_type": "run",
             "target_id": "r-1", "data": {"é": [1.5, "x"]}, "prev_hash": "ab" * 32}
    # when
    with connection.cursor() as cursor:
        cursor.execute("SELECT public.audit_event_hash(%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)",
                       [event["id"], event["seq"], event["occurred_at"], event["actor_kind"], event["actor_id"],
                        event["action"], event["target_type"], event["target_id"], json.dumps(event["data"]),
                        event["prev_hash"]])
        [in_postgres] = cursor.fetchone()
    # then
    assert chain.event_hash(event) == in_postgres
    assert chain.canonical_event(event) == (
        '{"action":"run.start","actor_id":"k-1","actor_kind":"api_key","data":{"é":[1.5,"x"]},'
        f'"id":"{event["id"]}","occurred_at":"2026-03-01T12:00:00.000007Z","prev_hash":"{"ab" * 32}","seq":42,'
        '"target_id":"r-1","target_type":"run"}')


def test_a_chain_with_each_kind_of_break_is_reported_at_the_right_place():
    # given a valid three-event chain, built in Python
    events, previous = [], chain.GENESIS_HASH
    for seq in (1, 2, 3):
        event = {"id": str(uuid.uuid4()), "seq": seq, "occurred_at": "2026-01-01T00:00:00.000000Z",
                 "actor_kind": "system", "actor_id": "t", "action": f"a.{seq}", "target_type": "", "target_id": "",
                 "data": {"n": seq}, "prev_hash": previous}
        event["hash"] = previous = chain.event_hash(event)
        events.append(event)
    head = chain.Anchor(seq=3, hash=events[2]["hash"])
    # then
    assert chain.verify_chain(events, anchor=head).ok
    assert chain.verify_chain([events[0], events[2]], anchor=head).first_failure.kind == "gap"
    assert chain.verify_chain([events[0], events[2]], anchor=head).first_failure.seq == 2
    assert chain.verify_chain([{**events[0], "data": {"n": 9}}, *events[1:]], anchor=head).first_failure.seq == 1
    assert chain.verify_chain(events[:2], anchor=head).first_failure.kind == "truncated"
    assert chain.verify_chain(events, anchor=None).first_failure.kind == "anchor_missing"
    assert chain.verify_chain(events, anchor=None, expect_anchor=False).ok
    assert chain.verify_chain(events, anchor=chain.Anchor(seq=3, hash="0" * 64)).first_failure.kind == \
        "anchor_mismatch"
