"""The OpenAPI schema documents the errors every operation can answer, as problem documents, and what a
path parameter takes (both found missing by the API fuzzer, tests/test_api_fuzz.py)."""

from __future__ import annotations

import pytest

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


@pytest.fixture
def openapi(client, db) -> dict:
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_every_operation_documents_its_problem_documents(openapi):
    # given the operations and what each takes
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            takes_input = "requestBody" in operation or bool(operation.get("parameters"))
            names_something = "{" in path
            # then
            takes_credential = bool(operation.get("security"))
            expected = {"4XX"} | ({"400"} if takes_input else set()) | (
                {"401", "403"} if takes_credential else set()) | ({"404"} if names_something else set())
            documented = {status for status in operation["responses"] if status.startswith("4")}
            assert documented == expected, f"{method.upper()} {path}: {documented}"
            assert all(operation["responses"][status]["content"] == PROBLEM for status in expected)


def test_the_problem_schema_matches_a_real_problem_document(client, openapi):
    # given a real problem document: a call without a credential
    body = client.get("/v1/agents").json()
    # then it has every required field of the documented schema, with the documented types
    schema = openapi["components"]["schemas"]["Problem"]
    assert set(schema["required"]) <= set(body)
    types = {"string": str, "integer": int}
    assert all(isinstance(body[name], types[schema["properties"][name]["type"]]) for name in schema["required"])


def test_a_slug_in_a_path_documents_the_characters_it_takes(openapi):
    parameters = openapi["paths"]["/v1/platform/tenants/{slug}"]["get"]["parameters"]
    assert parameters == [{"in": "path", "name": "slug", "required": True,
                           "schema": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$"}}]
