"""Learning from runs against the real database: facts extracted when a run completes, lessons written when it
fails or is scored low (by a user or the agent's evaluator), each once, and recalled by later runs."""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from django.db import connections
from django_tenants.utils import schema_context

from common.locks import advisory_key
from conftest import TEST_ACTOR, bearer, destroy_tenant, provision_for_test
from control_plane.audit.models import AuditEvent
from data_plane import services
from data_plane.executor import RunStepper
from data_plane.models import Memory, Run, RunFeedback
from data_plane.recall import TenantMemoryRecall
from data_plane.runtime.core.messages import Message
from data_plane.runtime.loop import run_coroutine
from data_plane.services.learning import EXTRACT_PURPOSE, LESSON_PURPOSE
from data_plane.tests.fakes import FakeChatModel
from data_plane.tools import BuiltinToolRunner

LESSON = "When converting currencies, look up today's rate first instead of guessing it."
FACTS = ["Dana lives in Porto.", "Dana prefers answers in euros."]


def reply(request):
    system = request.messages[0].content if request.messages[0].role == "system" else ""
    if LESSON_PURPOSE in system:
        return Message(role="assistant", content=LESSON)
    if EXTRACT_PURPOSE in system:
        return Message(role="assistant", content="Here they are:\n" + json.dumps(FACTS))
    return Message(role="assistant", content="About 92 euros. DONE")


@pytest.fixture
def tenant(committed, settings):
    # This test drives steps and learning itself: what the services dispatch goes to queues no worker consumes
    # (a worker started by other tests in the session would take them otherwise).
    settings.RUN_STEP_QUEUE = f"agentplane-unconsumed-{uuid.uuid4().hex[:8]}"
    settings.LEARN_QUEUE = f"agentplane-unconsumed-{uuid.uuid4().hex[:8]}"
    provisioned = provision_for_test("learn")
    yield provisioned
    destroy_tenant(provisioned.tenant)
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(settings.RUN_STEP_QUEUE, settings.LEARN_QUEUE)


def finished_run(tenant, *, memory: dict, graph: dict | None = None, values: dict | None = None) -> Run:
    """A run of a one-call agent, stepped to its end in this process."""
    spec = {"instructions": "Convert currencies.", "models": ["openai/x"], "memory": memory,
            "graph": graph or {"entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"},
                                                           {"id": "end", "kind": "end"}]}}
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name=f"fx-{uuid.uuid4().hex[:6]}", description="",
                                      spec=spec, actor=TEST_ACTOR)
        run = services.run_start(tenant=tenant.tenant, agent_id=agent.id, input="100 USD in EUR?", actor=TEST_ACTOR,
                                 end_user="dana", task_kind="currency", values=values)
    finished = []
    stepper = RunStepper(tenant_schema=tenant.schema, chat_model=FakeChatModel(reply),
                         tool_runner_factory=lambda run_id: BuiltinToolRunner(tenant_schema=tenant.schema, run_id=run_id),
                         dispatch=lambda run_id, step: None, tenant=tenant.tenant, steps_per_task=10, owner="test",
                         on_finished=lambda run_id, status, spec: finished.append((run_id, status)))
    stepper.run_step(run.id, 0)
    with schema_context(tenant.schema):
        run = Run.objects.select_related("agent_version__agent").get(id=run.id)
    assert finished == [(run.id, run.status)]
    return run


def learn(tenant, run, feedback_id=None):
    with schema_context(tenant.schema):
        return services.run_learn(tenant=tenant.tenant, run_id=run.id, chat_model=FakeChatModel(reply),
                                  feedback_id=feedback_id)


def test_a_completed_run_leaves_its_end_users_facts_once(tenant):
    # given
    run = finished_run(tenant, memory={"extract": True})
    # when
    learned = learn(tenant, run)
    again = learn(tenant, run)  # a redelivered task
    # then
    assert len(learned.facts) == 2 and again.facts == [] and learned.lesson is None
    with schema_context(tenant.schema):
        facts = list(Memory.objects.order_by("text").values_list("text", "end_user", "agent", "source", "source_run_id"))
        assert facts == [(text, "dana", run.agent_version.agent.name, "extraction", run.id) for text in sorted(FACTS)]
        assert Run.objects.get(id=run.id).cost_usd > run.cost_usd  # the extraction's call is the run's cost


def test_a_failed_run_teaches_its_agent_a_lesson_tagged_with_the_task_kind(tenant):
    # given: a graph whose only route fails the run (an approval rejected is simplest: a step limit here)
    run = finished_run(tenant, memory={"reflect": True}, graph={
        "entry": "answer", "max_steps": 1, "nodes": [
            {"id": "answer", "kind": "llm", "next": "again"}, {"id": "again", "kind": "llm", "next": "end"},
            {"id": "end", "kind": "end"}]})
    assert run.status == "failed"
    # when
    learned = learn(tenant, run)
    assert learn(tenant, run).lesson == learned.lesson  # once
    # then
    with schema_context(tenant.schema):
        lesson = Memory.objects.get(id=learned.lesson)
        assert (lesson.kind, lesson.text, lesson.tags, lesson.agent, lesson.end_user, lesson.source) == (
            "lesson", LESSON, ["currency"], run.agent_version.agent.name, "", "reflection")
        assert AuditEvent.objects.filter(action="run.lesson", target_id=str(run.id)).count() == 1


def test_low_feedback_through_the_api_asks_for_a_lesson_and_links_it(client, tenant):
    # given
    run = finished_run(tenant, memory={"reflect": True, "reflect_below": 0.6})
    # when
    high = client.post(f"/v1/runs/{run.id}/feedback", json.dumps({"score": 0.9}), content_type="application/json",
                       **bearer(tenant.key))
    low = client.post(f"/v1/runs/{run.id}/feedback", json.dumps({"score": 0.2, "comment": "The rate was made up."}),
                      content_type="application/json", **bearer(tenant.key))
    # then
    assert high.status_code == 201 and high.json()["lesson_requested"] is False
    assert low.status_code == 201 and low.json()["lesson_requested"] is True
    learned = learn(tenant, run, feedback_id=uuid.UUID(low.json()["id"]))
    listed = client.get(f"/v1/runs/{run.id}/feedback", **bearer(tenant.key)).json()
    assert {item["score"]: item["lesson_id"] for item in listed} == {0.9: None, 0.2: str(learned.lesson)}
    bad = client.post(f"/v1/runs/{run.id}/feedback", json.dumps({"score": 3}), content_type="application/json",
                      **bearer(tenant.key))
    assert bad.status_code == 400 and "score" in bad.json()["errors"]


def test_feedback_is_for_finished_runs(client, tenant):
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name="waiting", description="", actor=TEST_ACTOR, spec={
            "instructions": "", "models": ["openai/x"], "graph": {"entry": "gate", "nodes": [
                {"id": "gate", "kind": "approval", "prompt": "ok?", "next": "end"}, {"id": "end", "kind": "end"}]}})
        run = services.run_start(tenant=tenant.tenant, agent_id=agent.id, input="x", actor=TEST_ACTOR)
    response = client.post(f"/v1/runs/{run.id}/feedback", json.dumps({"score": 0.1}),
                           content_type="application/json", **bearer(tenant.key))
    assert response.status_code == 409 and response.json()["code"] == "illegal_transition"


def test_an_evaluator_steps_low_score_is_recorded_and_teaches_a_lesson(tenant):
    # given: the run's values carry the evaluator's score (an llm node with output_key "score" would write it)
    run = finished_run(tenant, memory={"reflect": True}, values={"score": "3/10"})
    # when
    learned = learn(tenant, run)
    # then
    with schema_context(tenant.schema):
        feedback = RunFeedback.objects.get(run_id=run.id)
        assert (feedback.source, feedback.score, feedback.lesson_id) == ("evaluator", 0.3, learned.lesson)


def test_later_runs_recall_the_lesson_and_their_end_users_facts_only(tenant):
    # given: an agent that learned a lesson and facts about dana; a fact about someone else
    run = finished_run(tenant, memory={"reflect": True, "extract": True, "recall": True}, values={"score": 0.1})
    learn(tenant, run)
    with schema_context(tenant.schema):
        services.memory_remember(tenant=tenant.tenant, actor=TEST_ACTOR, drafts=[services.memory_draft(
            text="Eve lives in Porto and prefers dollars.", end_user="eve")])
    recall = TenantMemoryRecall(tenant_schema=tenant.schema, run_id=run.id)
    # when
    recalled = run_coroutine(recall.recall(query="How much is 250 USD in euros for me in Porto?", limit=5,
                                           max_tokens=500))
    # then
    assert recalled[0] == f"Lesson from an earlier run: {LESSON}"
    assert set(recalled[1:]) == set(FACTS)


def test_a_delivery_skips_what_another_is_learning_at_the_same_time(tenant):
    # given: a run scored low by its evaluator, and another session (another worker) learning its lesson now
    run = finished_run(tenant, memory={"reflect": True}, values={"score": 0})
    with schema_context(tenant.schema):
        assert learn(tenant, run).lesson is not None  # takes the claim, writes, releases it
        feedback = RunFeedback.objects.get(run_id=run.id)
        Memory.objects.filter(kind="lesson").delete()
    other = connections.create_connection("default")
    key = advisory_key("learn", tenant.schema, f"{run.id}:feedback:{feedback.id}")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [key])
        # when
        learned = learn(tenant, run)
        # then: no second model call, no second lesson
        assert learned.lesson is None
        with schema_context(tenant.schema):
            assert not Memory.objects.filter(kind="lesson").exists()
    finally:
        other.close()
