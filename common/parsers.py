"""The JSON body parser of every API view: DRF's, refusing what Postgres or our code cannot take.

Found by fuzzing the API (tests/test_api_fuzz.py, docs/security-fuzzing.md): each of these was a 500.
"""

from __future__ import annotations

import math
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 64  # far deeper than any body we take; deeper would exhaust recursion in json or in our validators


class StrictJSONParser(JSONParser):
    """Refuses, with a 400 naming where: text with NUL characters or unpaired surrogates (no Postgres text or
    jsonb column stores them), numbers too large for a float (JSON's 1e400 is infinity, which jsonb refuses)
    and nesting deeper than MAX_DEPTH."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - the body is nested too deeply; keep it under {MAX_DEPTH} "
                             "levels.") from None
        problem = unstorable(data)
        if problem:
            raise ParseError(f"JSON parse error - {problem}")
        return data


def unstorable(data: Any) -> str | None:
    """What in a parsed JSON document cannot be stored or handled, with its path ($.a[0].b); None if nothing."""
    pending: list[tuple[str, Any, int]] = [("$", data, 1)]
    while pending:
        path, value, depth = pending.pop()
        if depth > MAX_DEPTH:
            return f"the body is nested deeper than {MAX_DEPTH} levels at {path}; flatten it."
        if isinstance(value, dict):
            for key, item in value.items():
                problem = _text_problem(key)
                if problem:
                    return f"the key {key!r} in {path} {problem}"
                pending.append((f"{path}.{key}", item, depth + 1))
        elif isinstance(value, list):
            pending.extend((f"{path}[{index}]", item, depth + 1) for index, item in enumerate(value))
        elif isinstance(value, str):
            problem = _text_problem(value)
            if problem:
                return f"the text at {path} {problem}"
        elif isinstance(value, float) and not math.isfinite(value):
            return f"the number at {path} is too large; send a number within the range of a double."
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored; remove it."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (\\ud800-\\udfff), which is not valid Unicode; send valid UTF-8."
    return None
