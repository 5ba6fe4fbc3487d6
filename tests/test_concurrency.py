"""One worker process serves many runs at once: their waits on tools overlap on its IO loop."""

from __future__ import annotations

import httpx
import pytest
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.models import EffectRecord, Run
from data_plane.tools import BUILTIN_TOOLS
from tests.conftest import LOG_DIR, runtime_env
from tests.processes import celery_worker_args, log_tail, running, wait_for

pytestmark = pytest.mark.worker
RUNS = 24
WAIT_SECONDS = 2


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("many")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def test_one_worker_process_runs_many_waiting_runs_at_once(model_server, tenant, settings, django_db_blocker):
    queue = f"agentplane-many-{settings.CHECKOUT_ID}"
    settings.RUN_STEP_QUEUE = queue
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", timeout=10, json={"name": "waiter", "turns": [
        {"tool_calls": [{"name": "wait", "arguments": {"seconds": WAIT_SECONDS}}]}, {"content": "done"}]}
               ).raise_for_status()
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name="waiter", description="", actor=TEST_ACTOR, spec={
            "instructions": "x", "models": ["openai/waiter"], "tools": [BUILTIN_TOOLS["wait"].to_json()],
            "graph": {"entry": "act", "nodes": [
                {"id": "act", "kind": "llm", "next": "observe"}, {"id": "observe", "kind": "tools", "next": "answer"},
                {"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}})
    # one process; its threads wait for their steps while the process's IO loop does the waiting
    args = celery_worker_args(name="many", concurrency=RUNS) + ["--pool=threads", "-Q", queue]
    args.remove("--pool=prefork")
    with running(args, log_path=LOG_DIR / "many.log", env=runtime_env(model_server, RUN_STEP_QUEUE=queue)):
        wait_for(lambda: "ready." in (LOG_DIR / "many.log").read_text(errors="replace"), timeout=60,
                 what="the threads worker")
        with schema_context(tenant.schema):
            runs = [services.run_start(tenant=tenant.tenant, agent_id=agent.id, input=f"run {i}", actor=TEST_ACTOR)
                    for i in range(RUNS)]
        wait_for(lambda: _all_completed(tenant.schema, [r.id for r in runs]), timeout=60,
                 what=f"{RUNS} runs to complete; log:\n{log_tail(LOG_DIR / 'many.log')}")
    # then: the tool calls were in flight together (from the journal's own timestamps, not a stopwatch)
    with schema_context(tenant.schema):
        spans = list(EffectRecord.objects.filter(run__in=runs, name="wait").values_list("started_at", "finished_at"))
    assert len(spans) == RUNS
    most_at_once = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert most_at_once >= RUNS // 2, f"at most {most_at_once} of {RUNS} waits overlapped"


def _all_completed(schema, run_ids) -> bool:
    with schema_context(schema):
        return Run.objects.filter(id__in=run_ids, status="completed").count() == len(run_ids)
