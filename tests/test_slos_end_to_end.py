"""SLOs of real runs: a Celery worker runs agents against our scripted model server, then the API reports them."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from django_tenants.utils import schema_context

from conftest import bearer, destroy_tenant, provision_for_test, unique_slug
from billing.slo_selectors import merge_latencies
from data_plane.models import EffectRecord, Run
from data_plane.slo_selectors import LatencyMeasure
from data_plane.tools import BUILTIN_TOOLS
from tenants import services as tenant_services
from tests.processes import wait_for

pytestmark = pytest.mark.worker

APPROVAL_WAIT_SECONDS = 2.5


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("e2e-slos")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def _status(schema: str, run_id, statuses: tuple[str, ...]) -> Run | None:
    with schema_context(schema):
        run = Run.objects.get(id=run_id)
    return run if run.status in statuses else None


def _start(client: Client, headers: dict, agent_id: str) -> str:
    started = client.post("/v1/runs", {"agent_id": agent_id, "input": "What is 6*7?"},
                          content_type="application/json", **headers)
    assert started.status_code == 202, started.content
    return started.json()["id"]


def _agent_start_ms(schema: str, run_id: str) -> float:
    """What the run's record says: creation → its first effect began (a call journalled once answered began
    latency_ms before it was written)."""
    with schema_context(schema):
        run = Run.objects.get(id=run_id)
        began = min(min(effect.started_at, (effect.finished_at or effect.started_at)
                        - timedelta(milliseconds=effect.latency_ms or 0))
                    for effect in EffectRecord.objects.filter(run_id=run_id))
    return (began - run.created_at).total_seconds() * 1000


def test_real_runs_make_sensible_slos(worker_process, model_server, tenant):
    client, headers = Client(), bearer(tenant.key)
    calculator = BUILTIN_TOOLS["calculator"].to_json()
    agents = {}
    for name, spec in {
        "calc": {"instructions": "Be exact.", "models": ["openai/plan-act-reflect"], "tools": [calculator]},
        "gated": {"instructions": "Be exact.", "models": ["openai/plan-act-reflect"],
                  "tools": [{**calculator, "requires_approval": True}]},
        "refused": {"instructions": "x", "models": ["openai/reject"]},
    }.items():
        created = client.post("/v1/agents", {"name": name, "spec": spec}, content_type="application/json", **headers)
        assert created.status_code == 201, created.content
        agents[name] = created.json()["id"]
    # a first run warms the worker up (its first task loads the runtime: seconds, which the agent start SLI
    # rightly shows); the SLOs below are read over a window that begins after it
    warm_up = _start(client, headers, agents["calc"])
    wait_for(lambda: _status(tenant.schema, warm_up, ("completed",)), timeout=90, what="the warm-up run")
    since = timezone.now()
    # given three runs by a real worker: one completes, one waits 2.5 s for a human and then completes, and one
    # is refused by the provider (the tenant's request: not the platform's failure)
    runs = {name: _start(client, headers, agent_id) for name, agent_id in agents.items()}
    waiting = wait_for(lambda: _status(tenant.schema, runs["gated"], ("waiting_approval", "failed")), timeout=60,
                       what="the gated run to wait for its approval")
    assert waiting.status == "waiting_approval", waiting.error
    time.sleep(APPROVAL_WAIT_SECONDS)
    approval = client.get("/v1/approvals", {"run_id": runs["gated"]}, **headers).json()["results"][0]
    decided = client.post(f"/v1/approvals/{approval['id']}/decide", {"approved": True},
                          content_type="application/json", **headers)
    assert decided.status_code == 200, decided.content
    done = {name: wait_for(lambda: _status(tenant.schema, run_id, ("completed", "failed", "cancelled")), timeout=60,
                           what=f"run {name} to finish") for name, run_id in runs.items()}
    assert {name: run.status for name, run in done.items()} == {"calc": "completed", "gated": "completed",
                                                               "refused": "failed"}
    assert done["refused"].error["code"] == "model_rejected"
    with schema_context(tenant.schema):
        tool_calls = EffectRecord.objects.filter(kind="tool", run_id__in=runs.values()).count()
    starts = merge_latencies([LatencyMeasure(count=3, p50_ms=None, p99_ms=None, values_ms=tuple(sorted(
        _agent_start_ms(tenant.schema, run_id) for run_id in runs.values())))])
    # when
    response = client.get("/v1/slos", {"since": since.isoformat()}, **headers)
    # then
    assert response.status_code == 200, response.content
    slos = {slo["name"]: slo for slo in response.json()["slos"]}
    # every run started; the percentiles are those of the runs' records
    assert slos["agent_start_latency_p50"]["events"] == 3
    assert slos["agent_start_latency_p50"]["value"] == pytest.approx(starts.p50_ms, abs=0.002)
    assert slos["agent_start_latency_p99"]["value"] == pytest.approx(starts.p99_ms, abs=0.002)
    # two completed turns; the 2.5 s spent waiting for the human is not in the platform's latency
    walls = {name: (run.finished_at - run.created_at).total_seconds() * 1000 for name, run in done.items()}
    assert slos["turn_latency_p99"]["events"] == 2
    assert 0 < slos["turn_latency_p99"]["value"] <= max(walls["calc"], walls["gated"] - APPROVAL_WAIT_SECONDS * 1000)
    # three turns ended, none failed for the platform's reasons; both calculator calls answered
    assert (slos["error_rate"]["value"], slos["error_rate"]["events"], slos["error_rate"]["is_met"]) == (0.0, 3, True)
    assert slos["error_rate"]["error_budget"]["left_fraction"] == 1.0
    assert tool_calls == 2
    assert (slos["tool_call_success_rate"]["value"], slos["tool_call_success_rate"]["events"]) == (1.0, 2)
    assert (slos["availability"]["value"], response.json()["sla"]["is_met"]) == (1.0, True)
    # and the operator sees the same figures for this tenant
    operator = tenant_services.operator_key_create(name=unique_slug("e2e-slos-operator"))
    try:
        platform = client.get("/v1/platform/slos", {"since": since.isoformat()}, **bearer(operator.plaintext))
    finally:
        operator.key.delete()
    assert platform.status_code == 200, platform.content
    [ours] = [report for report in platform.json()["tenants"] if report["scope"] == tenant.tenant.slug]
    assert [(slo["name"], slo["value"], slo["events"]) for slo in ours["slos"] if slo["name"] != "availability"] == [
        (slo["name"], slo["value"], slo["events"]) for slo in response.json()["slos"] if slo["name"] != "availability"]
