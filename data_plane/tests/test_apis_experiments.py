"""The A/B test API: create, list, read, results, stop, promote; scopes, errors, and the runs' experiment fields."""

from __future__ import annotations

import json

from django_tenants.utils import schema_context

from conftest import bearer
from data_plane.models import AgentVersion, Experiment
from tenants.tests.factories import ApiKeyFactory

SPEC = {"instructions": "Be exact.", "models": ["openai/strong"]}
BODY = {"name": "cheaper", "description": "Is the mini model good enough?", "variants": [
    {"name": "control", "weight": 70, "is_control": True},
    {"name": "mini", "weight": 30, "overrides": {"models": ["openai/mini"]}}]}


def post(client, path, body, key):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def agent_id(client, key) -> str:
    response = post(client, "/v1/agents", {"name": "helper", "spec": SPEC}, key)
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def test_create_list_get_stop_and_promote(client, tenant_a):
    # given
    agent = agent_id(client, tenant_a.key)
    # when
    created = post(client, f"/v1/agents/{agent}/experiments", BODY, tenant_a.key)
    # then
    assert created.status_code == 201, created.json()
    experiment = created.json()
    assert {k: experiment[k] for k in ("agent_id", "name", "description", "status", "promoted_variant",
                                       "promoted_version", "stopped_at", "promoted_at")} == {
        "agent_id": agent, "name": "cheaper", "description": "Is the mini model good enough?", "status": "running",
        "promoted_variant": None, "promoted_version": None, "stopped_at": None, "promoted_at": None}
    assert [{k: v[k] for k in ("name", "weight", "traffic_share", "is_control", "overrides", "agent_version")}
            for v in experiment["variants"]] == [
        {"name": "control", "weight": 70.0, "traffic_share": 0.7, "is_control": True, "overrides": {},
         "agent_version": 1},
        {"name": "mini", "weight": 30.0, "traffic_share": 0.3, "is_control": False,
         "overrides": {"models": ["openai/mini"]}, "agent_version": 2}]
    listed = client.get(f"/v1/agents/{agent}/experiments", **bearer(tenant_a.key)).json()
    assert [e["id"] for e in listed["results"]] == [experiment["id"]]
    assert client.get(f"/v1/experiments/{experiment['id']}", **bearer(tenant_a.key)).json() == experiment
    versions = client.get(f"/v1/agents/{agent}/versions", **bearer(tenant_a.key)).json()["results"]
    assert [(v["version"], v["is_variant"]) for v in versions] == [(2, True), (1, False)]
    assert client.get(f"/v1/agents/{agent}", **bearer(tenant_a.key)).json()["latest_version"] == 1
    # a run names its experiment and variant
    run = post(client, "/v1/runs", {"agent_id": agent, "input": "hi", "assignment_key": "user-7"}, tenant_a.key)
    assert run.status_code == 202
    assert run.json()["experiment_id"] == experiment["id"]
    assert run.json()["assignment_key"] == "user-7"
    assert run.json()["experiment_variant"] in ("control", "mini")
    assert run.json()["agent_version"] == {"control": 1, "mini": 2}[run.json()["experiment_variant"]]
    again = client.get(f"/v1/runs/{run.json()['id']}", **bearer(tenant_a.key)).json()
    assert (again["experiment_variant"], again["experiment_id"]) == (run.json()["experiment_variant"],
                                                                     experiment["id"])
    # promote
    promoted = post(client, f"/v1/experiments/{experiment['id']}/promote", {"variant": "mini"}, tenant_a.key)
    assert promoted.status_code == 200, promoted.json()
    assert (promoted.json()["status"], promoted.json()["promoted_variant"], promoted.json()["promoted_version"]) == (
        "promoted", "mini", 3)
    assert client.get(f"/v1/agents/{agent}", **bearer(tenant_a.key)).json()["latest_version"] == 3
    plain = post(client, "/v1/runs", {"agent_id": agent, "input": "hi", "assignment_key": "user-7"}, tenant_a.key)
    assert (plain.json()["experiment_id"], plain.json()["experiment_variant"], plain.json()["agent_version"]) == (
        None, None, 3)
    stop = post(client, f"/v1/experiments/{experiment['id']}/stop", {}, tenant_a.key)
    assert (stop.status_code, stop.json()["code"]) == (409, "experiment_not_running")
    assert stop.json()["detail"] == (f"Experiment {experiment['id']} is promoted; only a running experiment can be "
                                     "stopped.")


def test_results_shape_for_an_experiment_without_finished_runs(client, tenant_a):
    agent = agent_id(client, tenant_a.key)
    experiment = post(client, f"/v1/agents/{agent}/experiments", BODY, tenant_a.key).json()
    post(client, "/v1/runs", {"agent_id": agent, "input": "hi", "end_user": "u1"}, tenant_a.key)
    # when
    response = client.get(f"/v1/experiments/{experiment['id']}/results", **bearer(tenant_a.key))
    # then
    assert response.status_code == 200
    body = response.json()
    assert (body["experiment_id"], body["status"], body["confidence_level"], body["alpha"],
            body["min_sample_size"]) == (experiment["id"], "running", 0.95, 0.05, 30)
    assert [(v["variant"], v["is_control"], v["agent_version"], v["traffic_share"], v["finished"], v["completed"])
            for v in body["variants"]] == [("control", True, 1, 0.7, 0, 0), ("mini", False, 2, 0.3, 0, 0)]
    assert sum(v["runs"] for v in body["variants"]) == sum(v["active"] for v in body["variants"]) == 1
    control, mini = body["variants"]
    assert control["vs_control"] is None
    assert control["completion_rate"] == {"successes": 0, "trials": 0, "rate": None, "ci_low": None, "ci_high": None}
    assert mini["vs_control"]["completion_rate"] == {
        "test": "two_proportion_z", "difference": None, "statistic": None, "p_value": None, "significant": False,
        "caveats": ["no finished runs in one of the groups"]}
    assert mini["cost_usd"] == {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    assert mini["latency_p50_seconds"] == {"n": 0, "median": None, "ci_low": None, "ci_high": None}
    assert body["caveats"] == ["Runs still active are counted in 'runs' and 'active' only, not in the rates or means."]


def test_bad_input_is_a_400_that_says_what_to_fix_and_changes_nothing(client, tenant_a):
    agent = agent_id(client, tenant_a.key)
    cases = [
        ({**BODY, "variants": [{"name": "a", "weight": 0, "is_control": True}, {"name": "b", "weight": 1}]},
         "invalid", "weight"),
        ({**BODY, "variants": [{"name": "a", "weight": 1, "is_control": True}]}, "invalid", "variants"),
        ({**BODY, "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}, "experiment_invalid",
         "Mark exactly one variant as the control"),
        ({**BODY, "variants": [{"name": "a", "weight": 1, "is_control": True},
                               {"name": "b", "weight": 1, "overrides": {"models": "gpt"}}]},
         "experiment_invalid", "models must be a non-empty list"),
    ]
    for body, code, mentions in cases:
        response = post(client, f"/v1/agents/{agent}/experiments", body, tenant_a.key)
        assert (response.status_code, response.json()["code"]) == (400, code), response.json()
        assert mentions in json.dumps(response.json())
    with schema_context(tenant_a.schema):
        assert Experiment.objects.count() == 0 and AgentVersion.objects.count() == 1
    created = post(client, f"/v1/agents/{agent}/experiments", BODY, tenant_a.key).json()
    twice = post(client, f"/v1/agents/{agent}/experiments", {**BODY, "name": "other"}, tenant_a.key)
    assert (twice.status_code, twice.json()["code"]) == (409, "experiment_already_running")
    unknown = post(client, f"/v1/experiments/{created['id']}/promote", {"variant": "nope"}, tenant_a.key)
    assert (unknown.status_code, unknown.json()["code"]) == (400, "experiment_invalid")
    assert unknown.json()["detail"] == "Experiment 'cheaper' has no variant 'nope'; its variants: control, mini."
    missing = client.get("/v1/experiments/00000000-0000-0000-0000-000000000000", **bearer(tenant_a.key))
    assert (missing.status_code, missing.json()["code"]) == (404, "experiment_not_found")
    with schema_context(tenant_a.schema):
        assert list(Experiment.objects.values_list("name", "status")) == [("cheaper", "running")]


def test_scopes_read_with_agents_read_write_with_agents_write(client, tenant_a):
    agent = agent_id(client, tenant_a.key)
    experiment = post(client, f"/v1/agents/{agent}/experiments", BODY, tenant_a.key).json()
    reader = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["agents:read"]).plaintext
    runner = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:read", "runs:write"]).plaintext
    assert client.get(f"/v1/experiments/{experiment['id']}/results", **bearer(reader)).status_code == 200
    assert client.get(f"/v1/agents/{agent}/experiments", **bearer(reader)).status_code == 200
    for path, body in [(f"/v1/experiments/{experiment['id']}/stop", {}),
                       (f"/v1/experiments/{experiment['id']}/promote", {"variant": "mini"}),
                       (f"/v1/agents/{agent}/experiments", {**BODY, "name": "x"})]:
        response = post(client, path, body, reader)
        assert (response.status_code, response.json()["code"]) == (403, "missing_scope")
    assert client.get(f"/v1/experiments/{experiment['id']}", **bearer(runner)).status_code == 403
    with schema_context(tenant_a.schema):
        assert list(Experiment.objects.values_list("status", flat=True)) == ["running"]
