"""Model routing through a real Celery worker and our model server over HTTP (litellm as with any provider):
a simple input goes to the cheap model, a complex one to the strong model, a model that is down is fallen back
from; each LLM call records the decision and what happened."""

from __future__ import annotations

import uuid

import httpx
import pytest
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.models import EffectRecord, Run, RunEvent
from tests.processes import wait_for

pytestmark = pytest.mark.worker

SIMPLE = "What is 2+2?"
COMPLEX = ("Explain why this Python function is slow, compare two fixes and design a step by step plan to refactor "
           "it. What are the trade-offs? How would you test it?")
ONE_CALL = {"entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("e2e-routing")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def register(model_server: str, prefix: str, turns: list[dict]) -> str:
    """A scenario under a fresh name; returns the model name that plays it (``openai/<name>``)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", json={"name": name, "turns": turns,
                                                                            "repeat_last": True},
               timeout=10).raise_for_status()
    return f"openai/{name}"


def run_to_the_end(tenant, agent_id, text: str) -> Run:
    with schema_context(tenant.schema):
        run = services.run_start(tenant=tenant.tenant, agent_id=agent_id, input=text, actor=TEST_ACTOR)

    def finished() -> Run | None:
        with schema_context(tenant.schema):
            current = Run.objects.get(id=run.id)
        return current if current.status in ("completed", "failed", "cancelled") else None

    return wait_for(finished, timeout=60, what=f"run {run.id} to finish")


def recorded_call(tenant, run: Run) -> tuple[EffectRecord, dict]:
    with schema_context(tenant.schema):
        [effect] = EffectRecord.objects.filter(run=run, kind="model")
        [reply] = RunEvent.objects.filter(run=run, type="model.reply")
    return effect, reply.data


def test_a_simple_input_goes_to_the_cheap_model_and_a_complex_one_to_the_strong_model(worker_process, model_server,
                                                                                      tenant):
    # given: an agent whose tenant default policy has a cheap and a strong tier
    cheap = register(model_server, "cheap", [{"content": "cheap answer"}])
    strong = register(model_server, "strong", [{"content": "strong answer"}])
    with schema_context(tenant.schema):
        services.routing_policy_create(tenant=tenant.tenant, name="house", is_default=True, actor=TEST_ACTOR,
                                       policy={"tiers": {"cheap": [cheap], "strong": [strong]}})
        agent = services.agent_create(tenant=tenant.tenant, name="routed", description="", actor=TEST_ACTOR,
                                      spec={"instructions": "Answer.", "models": [cheap], "graph": ONE_CALL})
    # when
    simple = run_to_the_end(tenant, agent.id, SIMPLE)
    complex_ = run_to_the_end(tenant, agent.id, COMPLEX)
    # then: each answered by its tier's model
    assert (simple.status, simple.output) == ("completed", "cheap answer")
    assert (complex_.status, complex_.output) == ("completed", "strong answer")
    # and each LLM call records the model and why: in the journal (for the usage collector) and in its event
    effect, reply = recorded_call(tenant, simple)
    assert effect.name == cheap
    assert effect.request["route"] == {
        "tier": "cheap", "model": cheap, "models": [cheap], "rule": None,
        "reason": "complexity 0.00 < 0.50 (no complexity factor)", "complexity": 0.001, "task_kind": "",
        "input_tokens": effect.request["route"]["input_tokens"], "tools": 0, "policy": "tenant default:house"}
    assert effect.request["route"]["input_tokens"] > 0
    assert reply["route"] == effect.request["route"]
    assert reply["usage"]["model"] == cheap and "fell_back_from" not in reply["usage"]
    effect, reply = recorded_call(tenant, complex_)
    assert effect.name == strong
    assert (effect.request["route"]["tier"], effect.request["route"]["model"], effect.request["route"]["reason"]) == (
        "strong", strong, "complexity 0.51 >= 0.50 (reasoning 0.30, code 0.15, questions 0.05, length 0.01)")
    assert reply["route"] == effect.request["route"]
    assert effect.result["usage"]["model"] == strong


def test_a_model_that_is_rate_limited_is_fallen_back_from_and_the_call_records_it(worker_process, model_server,
                                                                                 tenant):
    # given: the cheap tier's first model answers every request with 429
    limited = register(model_server, "limited", [{"content": "never", "fail": {"status": 429}}])
    backup = register(model_server, "backup", [{"content": "backup answer"}])
    strong = register(model_server, "strong", [{"content": "strong answer"}])
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name="falls-back", description="", actor=TEST_ACTOR, spec={
            "instructions": "Answer.", "models": [limited], "graph": ONE_CALL,
            "routing": {"tiers": {"cheap": [limited, backup], "strong": [strong]}}})
    # when
    run = run_to_the_end(tenant, agent.id, SIMPLE)
    # then: the run completed with the fallback's answer
    assert (run.status, run.output) == ("completed", "backup answer")
    effect, reply = recorded_call(tenant, run)
    # the call was routed to the cheap tier, first to the limited model ...
    assert (effect.request["route"]["tier"], effect.request["route"]["model"], effect.request["route"]["models"],
            effect.request["route"]["policy"]) == ("cheap", limited, [limited, backup], "agent")
    # ... and the backup answered: the journal and the event say so, with the errors
    assert effect.name == backup
    usage = effect.result["usage"]
    assert (usage["model"], usage["fell_back_from"], usage["attempts"]) == (backup, limited, 5)
    assert len(usage["errors"]) == 4
    assert all(error.startswith(f"{limited}: RateLimitError (HTTP 429): ") for error in usage["errors"])
    assert reply["usage"] == usage and reply["route"] == effect.request["route"]
