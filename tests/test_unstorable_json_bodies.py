"""JSON bodies Postgres or our code cannot take are a 400 that says where, not a 500, on every endpoint that
stores them (each case below was a 500, found by fuzzing the API: docs/security-fuzzing.md)."""

from __future__ import annotations

import pytest
from django_tenants.utils import schema_context

from common.parsers import MAX_DEPTH
from conftest import bearer
from data_plane.models import Agent, Memory, Ping

SPEC = '{"instructions": "x", "models": ["openai/gpt-4o-mini"]'


@pytest.mark.parametrize("path, body, expected_detail, model", [
    ("/v1/agents", '{"name": "nul", "spec": {"instructions": "a\\u0000b", "models": ["openai/gpt-4o-mini"]}}',
     "the text at $.spec.instructions contains a NUL character", Agent),
    ("/v1/agents", '{"name": "inf", "spec": ' + SPEC + ', "limits": {"max_cost_usd": 1e400}}}',
     "the number at $.spec.limits.max_cost_usd is too large", Agent),
    ("/v1/memories", '{"text": "he\\u0000llo"}', "the text at $.text contains a NUL character", Memory),
    ("/v1/memories", '{"text": "hello", "metadata": {"\\u0000": 1}}', "the key '\\x00' in $.metadata", Memory),
    ("/v1/memories", '{"text": "\\ud800 hello"}', "the text at $.text contains an unpaired surrogate", Memory),
    ("/v1/pings", "[" * 100_000 + "]" * 100_000, "the body is nested too deeply", Ping),
    ("/v1/pings", '{"message": "x", "deep": ' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}",
     f"the body is nested deeper than {MAX_DEPTH} levels", Ping),
])
def test_a_body_that_cannot_be_stored_is_refused_with_where(client, tenant_a, path, body, expected_detail, model):
    # when
    response = client.post(path, body, content_type="application/json", **bearer(tenant_a.key))
    # then
    assert (response.status_code, response.json()["code"]) == (400, "malformed_request"), response.content
    assert expected_detail in response.json()["detail"]
    with schema_context(tenant_a.schema):
        assert model.objects.count() == 0

