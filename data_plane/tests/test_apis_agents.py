"""The agents API: create with a validated spec, new versions on change, archive; scopes and errors."""

from __future__ import annotations

import json

import pytest
from django_tenants.utils import schema_context

from conftest import bearer
from data_plane.models import Agent, AgentVersion
from tenants.tests.factories import ApiKeyFactory

SPEC = {"instructions": "Be exact.", "models": ["openai/gpt-4o-mini"]}
NORMALIZED_SPEC = {"instructions": "Be exact.", "models": ["openai/gpt-4o-mini"], "tools": [],
                   "limits": {"max_steps": 50, "max_seconds": 600.0, "max_cost_usd": None},
                   "model_timeout_seconds": 60.0, "max_tools_per_call": 24}


def post(client, path, body, key):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def patch(client, path, body, key):
    return client.patch(path, json.dumps(body), content_type="application/json", **bearer(key))


def create_agent(client, key, name="researcher", spec=SPEC) -> dict:
    response = post(client, "/v1/agents", {"name": name, "description": "Finds things", "spec": spec}, key)
    assert response.status_code == 201, response.json()
    return response.json()


def agent_count(tenant) -> int:
    with schema_context(tenant.schema):
        return Agent.objects.count()


def test_create_agent_stores_version_1_of_the_normalized_spec(client, tenant_a):
    # when
    response = post(client, "/v1/agents", {"name": "researcher", "description": "Finds things", "spec": SPEC},
                    tenant_a.key)
    # then
    assert response.status_code == 201
    agent = response.json()
    assert {k: agent[k] for k in ("name", "description", "latest_version", "is_archived")} == {
        "name": "researcher", "description": "Finds things", "latest_version": 1, "is_archived": False}
    version = client.get(f"/v1/agents/{agent['id']}/versions/1", **bearer(tenant_a.key)).json()
    assert version["spec"] == NORMALIZED_SPEC
    assert version["agent_id"] == agent["id"]
    assert client.get(f"/v1/agents/{agent['id']}", **bearer(tenant_a.key)).json() == agent
    listed = client.get("/v1/agents", **bearer(tenant_a.key)).json()
    assert [a["id"] for a in listed["results"]] == [agent["id"]]


GRAPH_ERRORS = {
    "unknown node": (
        {"graph": {"entry": "a", "nodes": [{"id": "a", "kind": "llm", "next": "nowhere"}, {"id": "e", "kind": "end"}]}},
        # and what follows from it: the end cannot be reached any more
        [("graph.nodes.a", "unknown_node"), ("graph.nodes.e", "unreachable_node"), ("graph.nodes", "no_end")]),
    "unreachable node": (
        {"graph": {"entry": "a", "nodes": [{"id": "a", "kind": "llm", "next": "e"},
                                           {"id": "island", "kind": "llm", "next": "e"}, {"id": "e", "kind": "end"}]}},
        [("graph.nodes.island", "unreachable_node")]),
    "cycle without step limit": (
        {"limits": {"max_steps": None}, "graph": {"entry": "a", "nodes": [
            {"id": "a", "kind": "llm", "next": "r"},
            {"id": "r", "kind": "router", "routes": [{"when": {"kind": "text_contains", "text": "DONE"}, "goto": "e"}],
             "default": "a"},
            {"id": "e", "kind": "end"}]}},
        [("graph.max_steps", "cycle_without_step_limit")]),
    "missing join": (
        {"graph": {"entry": "p", "nodes": [{"id": "p", "kind": "parallel", "branches": ["x", "y"], "join": "j"},
                                           {"id": "x", "kind": "llm", "next": "e"},
                                           {"id": "y", "kind": "llm", "next": "e"}, {"id": "e", "kind": "end"}]}},
        [("graph.nodes.p", "missing_join")]),
}


@pytest.mark.parametrize("change, expected", GRAPH_ERRORS.values(), ids=GRAPH_ERRORS.keys())
def test_invalid_graph_is_400_listing_each_problem_and_creates_nothing(client, tenant_a, change, expected):
    # given
    before = agent_count(tenant_a)
    # when
    response = post(client, "/v1/agents", {"name": "broken", "spec": {**SPEC, **change}}, tenant_a.key)
    # then
    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "agent_spec_invalid"
    assert [(e["path"], e["code"]) for e in problem["errors"]["spec"]] == expected
    assert all(e["message"] in problem["detail"] for e in problem["errors"]["spec"])
    assert agent_count(tenant_a) == before


def test_every_problem_outside_the_graph_is_listed_at_once(client, tenant_a):
    spec = {"models": [], "tools": [{"description": "no name"}], "limits": {"max_cost_usd": 0}}
    response = post(client, "/v1/agents", {"name": "broken", "spec": spec}, tenant_a.key)
    assert response.status_code == 400
    assert [(e["path"], e["code"]) for e in response.json()["errors"]["spec"]] == [
        ("models", "invalid"), ("tools.0", "invalid"), ("limits.max_cost_usd", "invalid")]


def test_malformed_agent_input_gets_field_errors(client, tenant_a):
    before = agent_count(tenant_a)
    response = post(client, "/v1/agents", {"name": "Not a slug!", "spec": ["not", "an", "object"]}, tenant_a.key)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert set(response.json()["errors"]) == {"name", "spec"}
    assert agent_count(tenant_a) == before


def test_agent_names_are_unique(client, tenant_a):
    create_agent(client, tenant_a.key, name="twin")
    response = post(client, "/v1/agents", {"name": "twin", "spec": SPEC}, tenant_a.key)
    assert response.status_code == 409
    assert response.json()["code"] == "agent_name_taken"
    assert "'twin'" in response.json()["detail"]
    assert agent_count(tenant_a) == 1


def test_patch_with_a_spec_adds_a_version_and_keeps_the_old_one(client, tenant_a):
    # given
    agent = create_agent(client, tenant_a.key)
    # when
    response = patch(client, f"/v1/agents/{agent['id']}", {"spec": {**SPEC, "instructions": "Be brief."}},
                     tenant_a.key)
    # then
    assert response.status_code == 200
    assert response.json()["latest_version"] == 2
    versions = client.get(f"/v1/agents/{agent['id']}/versions", **bearer(tenant_a.key)).json()
    assert [v["version"] for v in versions["results"]] == [2, 1]
    assert versions["count"] == 2
    first = client.get(f"/v1/agents/{agent['id']}/versions/1", **bearer(tenant_a.key)).json()
    second = client.get(f"/v1/agents/{agent['id']}/versions/2", **bearer(tenant_a.key)).json()
    assert first["spec"]["instructions"] == "Be exact."
    assert second["spec"]["instructions"] == "Be brief."


def test_patch_description_only_keeps_the_version(client, tenant_a):
    agent = create_agent(client, tenant_a.key)
    response = patch(client, f"/v1/agents/{agent['id']}", {"description": "Now with sources"}, tenant_a.key)
    assert response.status_code == 200
    assert response.json()["description"] == "Now with sources"
    assert response.json()["latest_version"] == 1


def test_patch_needs_a_change_and_a_valid_spec(client, tenant_a):
    # given
    agent = create_agent(client, tenant_a.key)
    # when
    empty = patch(client, f"/v1/agents/{agent['id']}", {}, tenant_a.key)
    invalid = patch(client, f"/v1/agents/{agent['id']}",
                    {"description": "x", "spec": {**SPEC, "limits": {"max_steps": -1}}}, tenant_a.key)
    # then
    assert empty.status_code == 400
    assert empty.json()["errors"] == {"non_field_errors": ["Send a description, a spec, or both."]}
    assert invalid.status_code == 400
    assert invalid.json()["errors"]["spec"][0]["path"] == "limits.max_steps"
    unchanged = client.get(f"/v1/agents/{agent['id']}", **bearer(tenant_a.key)).json()
    assert (unchanged["latest_version"], unchanged["description"]) == (1, "Finds things")


def test_unknown_version_is_404(client, tenant_a):
    agent = create_agent(client, tenant_a.key)
    response = client.get(f"/v1/agents/{agent['id']}/versions/7", **bearer(tenant_a.key))
    assert response.status_code == 404
    assert response.json()["code"] == "agent_not_found"
    assert "no version 7" in response.json()["detail"]


def test_archived_agent_is_hidden_frozen_and_takes_no_runs(client, tenant_a):
    # given
    agent = create_agent(client, tenant_a.key)
    # when
    archived = post(client, f"/v1/agents/{agent['id']}/archive", {}, tenant_a.key)
    # then
    assert archived.status_code == 200 and archived.json()["is_archived"] is True
    assert client.get("/v1/agents", **bearer(tenant_a.key)).json()["results"] == []
    listed = client.get("/v1/agents?include_archived=true", **bearer(tenant_a.key)).json()["results"]
    assert [a["id"] for a in listed] == [agent["id"]]
    changed = patch(client, f"/v1/agents/{agent['id']}", {"description": "x"}, tenant_a.key)
    assert changed.status_code == 409 and changed.json()["code"] == "agent_archived"
    run = post(client, "/v1/runs", {"agent_id": agent["id"], "input": "hello"}, tenant_a.key)
    assert run.status_code == 409
    assert run.json()["code"] == "agent_archived"
    assert "'researcher' is archived" in run.json()["detail"]
    assert client.get("/v1/runs", **bearer(tenant_a.key)).json()["count"] == 0
    # archiving is idempotent
    assert post(client, f"/v1/agents/{agent['id']}/archive", {}, tenant_a.key).status_code == 200


def test_agent_scopes_are_enforced(client, tenant_a):
    # given
    reader = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["agents:read"])
    runner = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:read", "runs:write"])
    agent = create_agent(client, tenant_a.key)
    # when
    created = post(client, "/v1/agents", {"name": "sneaky", "spec": SPEC}, reader.plaintext)
    changed = patch(client, f"/v1/agents/{agent['id']}", {"description": "x"}, reader.plaintext)
    archived = post(client, f"/v1/agents/{agent['id']}/archive", {}, reader.plaintext)
    read = client.get(f"/v1/agents/{agent['id']}", **bearer(runner.plaintext))
    # then
    for refused, scope in ((created, "agents:write"), (changed, "agents:write"), (archived, "agents:write"),
                           (read, "agents:read")):
        assert refused.status_code == 403
        assert refused.json()["code"] == "missing_scope"
        assert repr(scope) in refused.json()["detail"]
    assert client.get(f"/v1/agents/{agent['id']}", **bearer(reader.plaintext)).status_code == 200
    with schema_context(tenant_a.schema):
        assert list(Agent.objects.values_list("name", "description", "is_archived")) == [
            ("researcher", "Finds things", False)]
        assert AgentVersion.objects.count() == 1
