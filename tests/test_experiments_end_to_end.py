"""An A/B test over real processes: a Celery worker runs each variant's runs against our scripted model server,
and the results endpoint shows per-variant figures."""

from __future__ import annotations

import json

import httpx
import pytest
from django.test import Client
from django_tenants.utils import schema_context

from conftest import bearer, destroy_tenant, provision_for_test
from data_plane.experiment_assignment import variant_index
from data_plane.models import Experiment, Run
from tests.processes import wait_for

pytestmark = pytest.mark.worker

# One model call per run; the variant's model answers differently when its instructions ask for brevity, and
# refuses (a 400: the run fails) questions about coffee.
GRAPH = {"entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}
MINI = {"name": "ab-mini", "repeat_last": True, "turns": [{"content": "(not brief)"}], "branches": [
    {"if_user_contains": "coffee", "turns": [{"fail": {"status": 400, "message": "refused"}}], "repeat_last": True},
    {"if_system_contains": "Be brief.", "turns": [{"content": "Brief."}], "repeat_last": True}]}


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("e2e-ab")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def post(client: Client, path: str, body: dict, key: str):  # type: ignore[no-untyped-def]
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def finished(schema: str, run_ids: list[str]) -> bool:
    with schema_context(schema):
        return Run.objects.filter(id__in=run_ids, status__in=("completed", "failed")).count() == len(run_ids)


def test_two_variants_run_on_a_worker_and_the_results_show_each(worker_process, model_server, tenant):
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", json=MINI, timeout=10).raise_for_status()
    client, key = Client(), tenant.key
    # given: an agent on the priced model, and an experiment whose variant uses another model and instructions
    agent = post(client, "/v1/agents", {"name": "writer", "spec": {
        "instructions": "Be thorough.", "models": ["openai/plan-act-reflect"], "graph": GRAPH}}, key).json()
    created = post(client, f"/v1/agents/{agent['id']}/experiments", {"name": "brevity", "variants": [
        {"name": "control", "weight": 1, "is_control": True},
        {"name": "brief", "weight": 1, "overrides": {"models": ["openai/ab-mini"], "instructions": "Be brief."}}]},
        key)
    assert created.status_code == 201, created.json()
    experiment = created.json()
    with schema_context(tenant.schema):
        salt = Experiment.objects.get(id=experiment["id"]).salt
    users = [f"user-{i}" for i in range(200)]
    control_users = [u for u in users if variant_index(salt=salt, key=u, weights=[1, 1]) == 0][:3]
    brief_users = [u for u in users if variant_index(salt=salt, key=u, weights=[1, 1]) == 1][:3]
    # when: three end users of each variant start runs (one of the brief variant's is refused by its model)
    inputs = {**{u: "Tell me about tea." for u in control_users}, **{u: "Tell me about tea." for u in brief_users}}
    inputs[brief_users[2]] = "Tell me about coffee."
    runs = {user: post(client, "/v1/runs", {"agent_id": agent["id"], "input": text, "end_user": user}, key).json()
            for user, text in inputs.items()}
    assert {user: run["experiment_variant"] for user, run in runs.items()} == {
        **{u: "control" for u in control_users}, **{u: "brief" for u in brief_users}}
    run_ids = [run["id"] for run in runs.values()]
    wait_for(lambda: finished(tenant.schema, run_ids), timeout=120, what="the experiment's runs to finish")
    done = {user: client.get(f"/v1/runs/{run['id']}", **bearer(key)).json() for user, run in runs.items()}
    # then: each variant ran its own version, model and instructions
    assert {(d["experiment_variant"], d["agent_version"], d["status"], d["output"].split("\n")[0])
            for d in done.values()} == {
        ("control", 1, "completed", "Plan:"), ("brief", 2, "completed", "Brief."), ("brief", 2, "failed", "")}
    for user, score in [(control_users[0], 0.9), (control_users[1], 0.7), (brief_users[0], 0.4),
                        (brief_users[1], 0.6)]:
        assert post(client, f"/v1/runs/{runs[user]['id']}/feedback", {"score": score}, key).status_code == 201
    results = client.get(f"/v1/experiments/{experiment['id']}/results", **bearer(key))
    assert results.status_code == 200, results.json()
    control, brief = results.json()["variants"]
    assert [(v["variant"], v["runs"], v["active"], v["finished"], v["completed"], v["completion_rate"]["rate"])
            for v in (control, brief)] == [("control", 3, 0, 3, 3, 1.0), ("brief", 3, 0, 3, 2, 2 / 3)]
    assert control["cost_usd"]["n"] == 3 and control["cost_usd"]["mean"] > 0  # the priced model
    assert brief["cost_usd"] == {"n": 3, "mean": 0.0, "std": 0.0, "ci_low": 0.0, "ci_high": 0.0}  # unpriced
    assert (control["latency_seconds"]["n"], brief["latency_seconds"]["n"]) == (3, 2)
    assert control["latency_p50_seconds"]["median"] > 0
    assert (control["score"]["n"], control["score"]["mean"]) == (2, pytest.approx(0.8))
    assert (brief["score"]["n"], brief["score"]["mean"]) == (2, pytest.approx(0.5))
    assert control["vs_control"] is None
    versus = brief["vs_control"]
    assert versus["completion_rate"]["test"] == "two_proportion_z"
    assert versus["completion_rate"]["difference"] == pytest.approx(-1 / 3)
    assert versus["cost_usd"]["difference"] == pytest.approx(-control["cost_usd"]["mean"])
    assert versus["score"]["difference"] == pytest.approx(-0.3)
    assert all(comparison["significant"] is False for comparison in versus.values())  # 3 runs: too few to tell
    # and promoting the brief variant makes it the agent's latest version
    promoted = post(client, f"/v1/experiments/{experiment['id']}/promote", {"variant": "brief"}, key).json()
    assert (promoted["status"], promoted["promoted_version"]) == ("promoted", 3)
    latest = client.get(f"/v1/agents/{agent['id']}/versions/3", **bearer(key)).json()
    assert (latest["spec"]["models"], latest["spec"]["instructions"], latest["is_variant"]) == (
        ["openai/ab-mini"], "Be brief.", False)
