"""Budgeted contexts through the step executor, on the real database: the summary call is journalled like any
model call, its usage counted once even across a lost commit, and recalled memories reach the model."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from django.db import connection
from django.db.models import F
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.executor import RunStepper
from data_plane.models import Checkpoint, EffectRecord, Run, RunEvent
from data_plane.runtime.core.context import SUMMARY_KEY, SUMMARY_MARKER
from data_plane.runtime.core.ports import MemoryUnavailable, ModelRequest
from data_plane.tests.fakes import FakeChatModel, text
from data_plane.tools import BuiltinToolRunner

CHAT = {"entry": "chat", "nodes": [{"id": "chat", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}
# about 200 tokens a message by the executor's default estimate (four characters a token)
PARAGRAPH = "The March invoices and refunds, line by line. " * 17


@pytest.fixture
def tenant(committed, settings):
    settings.RUN_STEP_QUEUE = f"agentplane-unconsumed-{uuid.uuid4().hex[:8]}"  # this test drives the steps
    provisioned = provision_for_test("context")
    yield provisioned
    destroy_tenant(provisioned.tenant)
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(settings.RUN_STEP_QUEUE)


def is_summary(request: ModelRequest) -> bool:
    return request.messages[0].content.startswith(SUMMARY_MARKER)


def reply(request: ModelRequest):
    return text("- they went through the March invoices" if is_summary(request) else "Noted.")


def stepper(tenant, model, **ports) -> RunStepper:
    return RunStepper(tenant_schema=tenant.schema, chat_model=model,
                      tool_runner_factory=lambda run_id: BuiltinToolRunner(tenant_schema=tenant.schema, run_id=run_id),
                      dispatch=lambda run_id, step: None, tenant=tenant.tenant, owner="test", **ports)


def agent(tenant, name: str, context: dict) -> uuid.UUID:
    with schema_context(tenant.schema):
        return services.agent_create(tenant=tenant.tenant, name=name, description="", actor=TEST_ACTOR, spec={
            "instructions": "Be brief.", "models": ["openai/x"], "graph": CHAT, "context": context,
            "memory": {"recall": True}}).id


def drive(tenant, run_id, steps: RunStepper) -> Run:
    """Step the run until it stops working."""
    for _ in range(20):
        run = reload(tenant, run_id)
        if run.status != "running" and run.status != "queued":
            return run
        steps.run_step(run_id, run.driver_step)
    raise AssertionError("the run did not stop within 20 steps")


def reload(tenant, run_id) -> Run:
    with schema_context(tenant.schema):
        return Run.objects.get(id=run_id)


def say(tenant, run_id, words: str) -> None:
    with schema_context(tenant.schema):
        services.run_message_send(tenant=tenant.tenant, run_id=run_id, text=words, actor=TEST_ACTOR)


def test_a_summary_lost_with_its_commit_is_reused_not_paid_again(tenant):
    # given: a conversation that outgrows a 600-token context on its third turn
    agent_id = agent(tenant, "chat", {"max_input_tokens": 600, "reserve_output_tokens": 0,
                                      "summary_max_tokens": 50, "min_recent_messages": 2})
    with schema_context(tenant.schema):
        run = services.run_start(tenant=tenant.tenant, agent_id=agent_id, input=f"1. {PARAGRAPH}", actor=TEST_ACTOR)
    lose_next_summary_commit = {"on": True}

    class Model(FakeChatModel):
        async def complete(self, request, *, on_delta=None, on_retry=None):
            answer = await super().complete(request, on_delta=on_delta, on_retry=on_retry)
            if is_summary(request) and lose_next_summary_commit.pop("on", False):
                await asyncio.to_thread(take_over, run.id)  # the worker is presumed dead: its commit is fenced
            return answer

    def take_over(run_id):
        with schema_context(tenant.schema):
            Run.objects.filter(id=run_id).update(version=F("version") + 1)
        connection.close()

    model = Model(reply)
    steps = stepper(tenant, model)
    assert drive(tenant, run.id, steps).status == "completed"
    say(tenant, run.id, f"2. {PARAGRAPH}")
    assert drive(tenant, run.id, steps).status == "completed"
    say(tenant, run.id, f"3. {PARAGRAPH}")
    # when: the step with the summary call loses its commit
    fenced = steps.run_step(run.id, reload(tenant, run.id).driver_step)
    assert fenced.kind == "fenced"
    with schema_context(tenant.schema):  # the lease runs out; the redelivered task claims the run
        Run.objects.filter(id=run.id).update(lease_owner="", lease_expires_at=None)
    done = drive(tenant, run.id, steps)
    # then: one summary call was paid for, and counted once: 3 answers and 1 summary at $0.001 and 10 + 5 tokens
    assert done.status == "completed" and done.output == "Noted."
    assert [is_summary(request) for request in model.requests] == [False, False, True, False]
    assert (float(done.cost_usd), done.input_tokens, done.output_tokens) == (0.004, 40, 20)
    with schema_context(tenant.schema):
        summaries = EffectRecord.objects.filter(run=run, key=SUMMARY_KEY)
        assert [(status, float(cost)) for status, cost in summaries.values_list("status", "cost_usd")] == [
            ("succeeded", 0.001)]
        control = Checkpoint.objects.get(id=done.head_id).control
        events = {e.type: e.data for e in RunEvent.objects.filter(run=run).order_by("seq")}
    # all but the last two messages are summarised; the last call sent the summary and those two
    assert control["summary"] == {"text": "- they went through the March invoices", "message_count": 3}
    assert control["steps"] == 3  # summarising is no step of the agent
    assert events["context.summarised"]["messages_summarised"] == 3
    assert events["model.reply"]["context"]["summarised_messages"] == 3
    last = model.requests[-1]
    assert last.messages[0].content == ("Be brief.\n\nSummary of the earlier conversation (its first 3 messages, "
                                        "1 of them your replies):\n- they went through the March invoices")
    assert [m.content[:3] for m in last.messages[1:]] == ["Not", "3. "]
    assert events["model.reply"]["context"]["tokens"] <= 600


class Memories:
    """A tiny long-term memory store at the outside edge: answers every recall, or is down."""

    def __init__(self, *, is_down: bool = False) -> None:
        self.is_down = is_down
        self.asked: list[dict] = []

    async def recall(self, *, query: str, limit: int, max_tokens: int) -> list[str]:
        self.asked.append({"query": query, "limit": limit, "max_tokens": max_tokens})
        if self.is_down:
            raise MemoryUnavailable("the vector store is restarting")
        return ["The customer prefers invoices in EUR.", "Their fiscal year starts in April."]


def test_recalled_memories_reach_the_model_within_their_share(tenant):
    # given
    agent_id = agent(tenant, "remembering", {"max_input_tokens": 3000, "pinned_facts": ["Company: ACME."]})
    with schema_context(tenant.schema):
        run = services.run_start(tenant=tenant.tenant, agent_id=agent_id, input="Which currency?", actor=TEST_ACTOR)
    model, memories = FakeChatModel(reply), Memories()
    # when
    done = drive(tenant, run.id, stepper(tenant, model, memory_recall_factory=lambda run_id: memories))
    # then: asked with the latest user message, within a quarter of the budget (3000 - 1024 reserved)
    assert done.status == "completed"
    assert memories.asked == [{"query": "Which currency?", "limit": 5, "max_tokens": 494}]
    assert model.requests[0].messages[0].content == (
        "Be brief.\n\nPinned facts:\n- Company: ACME.\n\nRelevant memories:\n"
        "- The customer prefers invoices in EUR.\n- Their fiscal year starts in April.")
    with schema_context(tenant.schema):
        event = RunEvent.objects.get(run=run, type="model.reply").data
    assert event["context"]["memories"] == 2


def test_a_memory_store_that_is_down_leaves_the_call_without_memories(tenant):
    agent_id = agent(tenant, "forgetful", {"max_input_tokens": 3000})
    with schema_context(tenant.schema):
        run = services.run_start(tenant=tenant.tenant, agent_id=agent_id, input="Which currency?", actor=TEST_ACTOR)
    model = FakeChatModel(reply)
    done = drive(tenant, run.id, stepper(tenant, model, memory_recall_factory=lambda run_id: Memories(is_down=True)))
    assert done.status == "completed"
    assert model.requests[0].messages[0].content == "Be brief."
