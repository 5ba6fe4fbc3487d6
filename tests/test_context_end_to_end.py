"""A long conversation in a small context, run by a real Celery worker against our model server over HTTP
(litellm counts the tokens and makes the calls): older turns are summarised, the summary is checkpointed,
and a fork from a checkpoint after the summary carries on from it."""

from __future__ import annotations

import pytest
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.models import Checkpoint, Run, RunEvent
from data_plane.runtime.core.messages import Message
from tests.processes import wait_for

pytestmark = pytest.mark.worker

CHAT = {"entry": "chat", "nodes": [{"id": "chat", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}
SPEC = {"instructions": "Repeat what the user said.", "models": ["openai/echo"], "graph": CHAT,
        "context": {"max_input_tokens": 600, "reserve_output_tokens": 100, "summary_max_tokens": 80,
                    "min_recent_messages": 2, "pinned_facts": ["The user's name is Ada."]}}


def said(number: int) -> str:  # about 60 tokens; the echo scenario answers with it again
    return f"Message {number}: " + "the quarterly numbers for the northern region, reviewed line by line. " * 5


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("e2e-context")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def finished(schema: str, run_id) -> Run | None:
    with schema_context(schema):
        run = Run.objects.get(id=run_id)
    return run if run.status in ("completed", "failed", "cancelled") else None


def test_a_long_conversation_is_summarised_and_a_fork_after_the_summary_goes_on(worker_process, model_server, tenant):
    # given
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name="echo", description="", spec=SPEC, actor=TEST_ACTOR)
        run = services.run_start(tenant=tenant.tenant, agent_id=agent.id, input=said(1), actor=TEST_ACTOR)
    # when: six turns, each about 130 tokens, in a budget of 500
    for number in range(1, 7):
        if number > 1:
            with schema_context(tenant.schema):
                services.run_message_send(tenant=tenant.tenant, run_id=run.id, text=said(number), actor=TEST_ACTOR)
        done = wait_for(lambda: finished(tenant.schema, run.id), timeout=60, what=f"turn {number}")
        assert (done.status, done.output) == ("completed", f"You said: {said(number)}".strip()), done.error
    # then: the head checkpoint holds the summary; every call fitted the budget; the summaries are in the events
    with schema_context(tenant.schema):
        head = Checkpoint.objects.get(id=done.head_id)
        events = list(RunEvent.objects.filter(run=run).order_by("seq").values_list("type", "data"))
    summary = head.control["summary"]
    covered = summary["message_count"]
    assert 0 < covered <= 12 - 2
    last_summarised = [said(n) if i % 2 == 0 else f"You said: {said(n)}".strip()
                       for n in range(1, 7) for i in range(2)][covered - 1]
    role = "user" if covered % 2 == 1 else "assistant"
    # the scripted summary's last point: the last summarised message's first 80 characters
    assert summary["text"].endswith(f"- {role}: {' '.join(last_summarised.split())}"[:82].rstrip())
    summarised = [data for kind, data in events if kind == "context.summarised"]
    replies = [data for kind, data in events if kind == "model.reply"]
    assert len(replies) == 6 and summarised and summarised[-1]["messages_summarised"] == covered
    assert all(0 < reply["context"]["tokens"] <= 500 for reply in replies)
    assert replies[-1]["context"]["summarised_messages"] == covered

    # when: a fork from the head adds a message
    with schema_context(tenant.schema):
        fork = services.run_fork(tenant=tenant.tenant, run_id=run.id, checkpoint_id=head.id, actor=TEST_ACTOR,
                                 append_messages=[Message(role="user", content=said(7))])
    forked = wait_for(lambda: finished(tenant.schema, fork.id), timeout=60, what="the fork")
    # then: it answers, from the summary it inherited (or one that folded it in)
    assert (forked.status, forked.output) == ("completed", f"You said: {said(7)}".strip()), forked.error
    with schema_context(tenant.schema):
        first = Checkpoint.objects.filter(run=fork).order_by("step").first()
        fork_head = Checkpoint.objects.get(id=forked.head_id)
    assert first.control["summary"] == summary
    assert fork_head.control["summary"]["message_count"] >= covered
