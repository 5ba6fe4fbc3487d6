"""The API's JSON parser refuses, with where, what Postgres or our code cannot take (the API-level cases, each a
former 500, are in tests/test_unstorable_json_bodies.py)."""

from __future__ import annotations

import io

import pytest
from rest_framework.exceptions import ParseError

from common.parsers import MAX_DEPTH, StrictJSONParser, unstorable


@pytest.mark.parametrize("body, expected", [
    ('{"spec": {"instructions": "a\\u0000b"}}', "the text at $.spec.instructions contains a NUL character"),
    ('{"metadata": {"\\u0000": 1}}', "the key '\\x00' in $.metadata contains a NUL character"),
    ('{"items": ["ok", "\\ud800"]}', "the text at $.items[1] contains an unpaired surrogate"),
    ('{"limits": {"max_cost_usd": 1e400}}', "the number at $.limits.max_cost_usd is too large"),
    ('{"a": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}", f"nested deeper than {MAX_DEPTH} levels"),
    ("[" * 100_000 + "]" * 100_000, "the body is nested too deeply"),
])
def test_the_parser_refuses_what_cannot_be_stored_and_says_where(body, expected):
    # when
    with pytest.raises(ParseError) as refused:
        StrictJSONParser().parse(io.BytesIO(body.encode()))
    # then
    assert expected in str(refused.value.detail)


def test_an_ordinary_body_passes():
    body = {"a": [1, 2.5, "ünïcode ✓ 😀", {"b": None, "c": True}], "d": "x" * 10_000,
            "deep": [[[[[[[[[[["ten levels"]]]]]]]]]]]}
    assert unstorable(body) is None
    assert StrictJSONParser().parse(io.BytesIO(b'{"a": [1, 2.5]}')) == {"a": [1, 2.5]}
