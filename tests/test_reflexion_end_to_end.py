"""Reflexion on a scripted task suite, end to end: real Celery worker, our model server through litellm, real
memory (local embeddings, pgvector). Each task kind is attempted twice by an agent that learns (reflects on
low feedback, recalls lessons) and by one that does not; the second attempt's success rate is compared.

The model is scripted, so what it "learns" is fixed: it answers a task of kind K correctly only when a
system message of its request holds the advice of K's lesson (a branch of the scenario). What is real is
everything around it: the first attempt fails, a user scores it through the API, the worker asks the model
for a lesson, the lesson is embedded and stored, and the second run's context recalls it (the right one of
five, by tag or by meaning alone) through the token-budgeted context.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, bearer, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.models import Memory, Run, RunFeedback
from tests.processes import wait_for

pytestmark = pytest.mark.worker

# kind: (a word of every task of the kind, the lesson's advice, first attempt's task, second attempt's task)
TASKS = {
    "currency": ("USD", "use today's exchange rate from the rates table",
                 "How much is 100 USD in euros?", "Convert 2,500 USD to Japanese yen."),
    "units": ("miles", "multiply miles by 1.609 to get kilometres",
              "How many kilometres are 26 miles?", "A road is 140 miles long; how long in km?"),
    "dates": ("days between", "count both the first and the last day",
              "How many days between March 3 and March 9?", "How many days between June 28 and July 2?"),
    "refunds": ("refund", "check the payment provider's status before promising a refund",
                "Can the customer get a refund for order 1182?", "Is a refund possible for a cancelled flight?"),
    "timezones": ("UTC", "convert from UTC with the city's offset and daylight saving",
                  "What time is it in Tokyo at 09:00 UTC?", "What is the time in Denver at 18:30 UTC?"),
}
SCENARIO = "reflexion-suite"


def scenario() -> dict:
    lessons = [{"if_system_contains": "[purpose:lesson]", "if_user_contains": word,
                "turns": [{"content": f"For {kind} tasks: {advice}."}]}
               for kind, (word, advice, _, _) in TASKS.items()]
    informed = [{"if_system_contains": advice, "if_user_contains": word,
                 "turns": [{"content": f"Correct {kind} answer, following the lesson. DONE"}]}
                for kind, (word, advice, _, _) in TASKS.items()]
    return {"name": SCENARIO, "turns": [{"content": "Roughly this, I guess. DONE"}], "repeat_last": True,
            "branches": lessons + informed}


def spec(memory: dict) -> dict:
    return {"instructions": "Solve the task.", "models": [f"openai/{SCENARIO}"], "memory": memory,
            "graph": {"entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"},
                                                   {"id": "end", "kind": "end"}]}}


@pytest.fixture
def tenant(committed, model_server):
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", json=scenario(), timeout=10).raise_for_status()
    provisioned = provision_for_test("reflexion")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def attempt(tenant, agent_id, task: str, kind: str | None) -> Run:
    with schema_context(tenant.schema):
        run = services.run_start(tenant=tenant.tenant, agent_id=agent_id, input=task, actor=TEST_ACTOR,
                                 task_kind=kind or "")
    return wait_for(lambda: _finished(tenant, run.id), timeout=60, what=f"the run for {task!r}")


def _finished(tenant, run_id) -> Run | None:
    with schema_context(tenant.schema):
        run = Run.objects.get(id=run_id)
    return run if run.status in ("completed", "failed", "cancelled") else None


def succeeded(run: Run, kind: str) -> bool:
    return run.status == "completed" and run.output.startswith(f"Correct {kind} answer")


def second_attempt_success(client, tenant, *, learns: bool, by_tag: bool) -> float:
    """Attempt every task kind once, score the failures low through the API, then attempt each again."""
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name=f"solver-{uuid.uuid4().hex[:6]}", description="",
                                      actor=TEST_ACTOR, spec=spec(
                                          {"recall": True, "reflect": True, "lessons_k": 1, "recall_k": 1}
                                          if learns else {}))
    for kind, (_, _, first, _) in TASKS.items():
        run = attempt(tenant, agent.id, first, kind if by_tag else None)
        assert not succeeded(run, kind)  # nobody gets it right the first time
        response = client.post(f"/v1/runs/{run.id}/feedback", json.dumps({"score": 0.1, "comment": "Wrong."}),
                               content_type="application/json", **bearer(tenant.key))
        assert response.status_code == 201 and response.json()["lesson_requested"] is learns
        if learns:
            wait_for(lambda: _lesson_of(tenant, response.json()["id"]), timeout=60, what=f"the lesson of {kind}")
    wins = {kind: succeeded(attempt(tenant, agent.id, second, kind if by_tag else None), kind)
            for kind, (_, _, _, second) in TASKS.items()}
    print(f"\nlearns={learns} by_tag={by_tag}: {wins}")
    return sum(wins.values()) / len(wins)


def _lesson_of(tenant, feedback_id) -> bool:
    with schema_context(tenant.schema):
        return RunFeedback.objects.filter(id=feedback_id, lesson__isnull=False).exists()


def test_lessons_from_failed_attempts_make_the_second_attempt_succeed(client, worker_process, tenant):
    # when
    without = second_attempt_success(client, tenant, learns=False, by_tag=True)
    with_tags = second_attempt_success(client, tenant, learns=True, by_tag=True)
    by_meaning = second_attempt_success(client, tenant, learns=True, by_tag=False)
    # then
    print(f"\nsecond-attempt success: without lessons {without:.0%}, with lessons (task kind) {with_tags:.0%}, "
          f"with lessons (recalled by meaning alone, 5 lessons competing) {by_meaning:.0%}")
    assert without == 0.0
    assert with_tags == 1.0
    assert by_meaning >= 0.8
    with schema_context(tenant.schema):
        lessons = Memory.objects.filter(kind="lesson")
        assert lessons.count() == 2 * len(TASKS) and set(lessons.values_list("source", flat=True)) == {"reflection"}
