"""Kill -9 a Celery worker in the middle of a run: another worker finishes it, every effect exactly once."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
import redis
from django.conf import settings
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.models import Checkpoint, EffectRecord, Note, Run
from data_plane.tools import BUILTIN_TOOLS
from tests.conftest import LOG_DIR, runtime_env
from tests.processes import celery_worker_args, log_tail, running, wait_for

pytestmark = pytest.mark.worker
QUEUE = f"agentplane-crash-{settings.CHECKOUT_ID}"
SCENARIO = {"name": "crash-course", "turns": [
    {"content": "1. note one 2. wait 3. note two"},
    {"tool_calls": [{"name": "note_append", "arguments": {"text": "one"}}]},
    {"tool_calls": [{"name": "wait", "arguments": {"seconds": 4}}]},
    {"tool_calls": [{"name": "note_append", "arguments": {"text": "two"}}]},
    {"content": "Both notes are saved."},
    {"content": "Done. DONE"}]}


def crash_worker(name: str, env: dict[str, str]):
    args = celery_worker_args(name=name) + ["-Q", QUEUE]
    return running(args, log_path=LOG_DIR / f"{name}.log", env=env)


def ready(name: str) -> bool:
    log = LOG_DIR / f"{name}.log"
    return log.exists() and "ready." in log.read_text(errors="replace")


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("crash")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def test_a_run_survives_the_kill_of_its_worker(model_server, tenant, settings_queue, django_db_blocker):
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", json=SCENARIO, timeout=10).raise_for_status()
    env = runtime_env(model_server, RUN_STEP_QUEUE=QUEUE, CELERY_VISIBILITY_TIMEOUT="5",
                      CELERY_UNACKED_RESTORE_INTERVAL="1", RUN_LEASE_SECONDS="2")
    for name in ("crash-a", "crash-b"):
        (LOG_DIR / f"{name}.log").unlink(missing_ok=True)
    with crash_worker("crash-a", env) as worker_a:
        wait_for(lambda: ready("crash-a"), timeout=60, what="worker A")
        with schema_context(tenant.schema):
            agent = services.agent_create(tenant=tenant.tenant, name="crash", description="", actor=TEST_ACTOR, spec={
                "instructions": "x", "models": ["openai/crash-course"],
                "tools": [BUILTIN_TOOLS["note_append"].to_json(), BUILTIN_TOOLS["wait"].to_json()]})
            run = services.run_start(tenant=tenant.tenant, agent_id=agent.id, input="go", actor=TEST_ACTOR)
        # when: worker A is killed (the whole process group, no goodbye) in the middle of the slow tool call
        wait_for(lambda: _started(tenant.schema, run.id, "wait"), timeout=60,
                 what=f"the wait tool to start; worker A:\n{log_tail(LOG_DIR / 'crash-a.log')}")
        os.killpg(worker_a.pid, signal.SIGKILL)
        worker_a.wait(timeout=10)
    # then: worker B takes the run over from its last checkpoint and finishes it
    with crash_worker("crash-b", env):
        done = wait_for(lambda: _finished(tenant.schema, run.id), timeout=90,
                        what=f"the run to finish on worker B; log:\n{log_tail(LOG_DIR / 'crash-b.log')}")
    assert done.status == "completed", done.error
    with schema_context(tenant.schema):
        notes = list(Note.objects.order_by("id").values_list("text", flat=True))
        steps = list(Checkpoint.objects.filter(run=run).order_by("step").values_list("step", flat=True))
        effects = list(EffectRecord.objects.filter(run=run).values_list("step", "key", "name", "attempts", "status"))
    assert notes == ["one", "two"]  # every tool effect exactly once
    assert steps == list(range(done.step + 1))  # each step committed once, none twice, none lost
    keys = [(step, key) for step, key, *_ in effects]
    assert len(keys) == len(set(keys))
    assert all(status == "succeeded" for *_, status in effects)
    # only the step that was in flight ran again; every recorded result was reused
    repeated = [(name, attempts) for _, _, name, attempts, _ in effects if attempts > 1]
    assert repeated == [("wait", 2)]
    assert "crash-b@" in log_tail(LOG_DIR / "crash-b.log", 400) and "run_step_task" in log_tail(
        LOG_DIR / "crash-b.log", 400)
    stats = httpx.get(model_server.removesuffix("/v1") + "/admin/stats", timeout=10).json()
    assert _requests_for(stats, "crash-course") == 6  # one model call per model step: none paid twice


@pytest.fixture
def settings_queue(settings):
    settings.RUN_STEP_QUEUE = QUEUE
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(QUEUE)
    return QUEUE


def _started(schema, run_id, name) -> bool:
    with schema_context(schema):
        return EffectRecord.objects.filter(run_id=run_id, name=name).exists()


def _finished(schema, run_id) -> Run | None:
    with schema_context(schema):
        run = Run.objects.get(id=run_id)
    return run if run.status in ("completed", "failed", "cancelled") else None


def _requests_for(stats: dict, scenario: str) -> int:
    counts = stats.get("requests_per_scenario") or stats.get("requests") or stats
    return int(counts.get(scenario, 0))
