"""Learning from runs: durable facts extracted when a run completes, and lessons (Reflexion) when it fails or
is scored low, by a user's feedback or by the agent's own evaluator step (a value named ``score``).

Each is one LLM call through the gateway with the agent's model policy; its cost is added to the run's.
What is learned goes to long-term memory (services.memory): facts for the run's end user, lessons for the
agent, tagged with the run's task kind, which later runs of the agent recall into their context. Safe to
repeat: a run's facts, and the lesson for one feedback (or for the failure), are written once.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from common.actors import Actor
from common.errors import InvalidInput
from common.locks import advisory_key
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from data_plane import tasks
from data_plane.errors import IllegalTransition
from data_plane.models import Memory, Run, RunFeedback
from data_plane.sealing import checkpoint_store
from data_plane.runtime.core.messages import Message
from data_plane.runtime.core.ports import ChatModel, ModelRequest, ProviderError
from data_plane.runtime.core.spec import AgentSpec, spec_from_json
from data_plane.runtime.loop import run_coroutine
from data_plane.selectors import run_get
from data_plane.services.memory import memory_draft, memory_remember

logger = logging.getLogger(__name__)

EXTRACT_PURPOSE = "[purpose:extract_facts]"
LESSON_PURPOSE = "[purpose:lesson]"
EXTRACT_INSTRUCTIONS = (
    f"{EXTRACT_PURPOSE} You read a finished conversation between a user and an AI agent and pick out the durable "
    "facts worth remembering for later conversations: stable preferences, circumstances and decisions of the user, "
    "and facts about the world that were established. Not the task itself, not small talk, nothing that is only "
    "true today. Answer with a JSON list of short self-contained statements (at most 10), or [] if there is none.")
LESSON_INSTRUCTIONS = (
    f"{LESSON_PURPOSE} A run of an AI agent went wrong. Write one lesson for the agent's future runs of similar "
    "tasks: what went wrong, and what to do instead. At most three sentences, general enough to apply to the next "
    "task of this kind, with no details that only concern this user. Answer with the lesson only.")
TRANSCRIPT_CHARS = 12_000
MAX_FACTS = 10
TERMINAL = ("completed", "failed", "cancelled")
ACTOR = Actor(kind="system", id="learning")


@dataclass(frozen=True)
class Learned:
    facts: list[UUID]
    lesson: UUID | None


def run_feedback_create(*, tenant: Any, run_id: UUID, score: float, comment: str, actor: Actor,
                        source: str = RunFeedback.Source.USER) -> tuple[RunFeedback, bool]:
    """Score a finished run from 0 to 1. Returns the feedback and whether the agent will learn a lesson from it
    (its memory policy reflects and the score is under its threshold). Raises RunNotFound, IllegalTransition."""
    require_schema(tenant.schema_name)
    if not 0.0 <= score <= 1.0:
        raise InvalidInput("score is from 0 (wrong) to 1 (perfect).", extra={"errors": {"score": ["From 0 to 1."]}})
    run = run_get(tenant_schema=tenant.schema_name, run_id=run_id)
    if run.status not in TERMINAL:
        raise IllegalTransition(f"Run {run_id} is {run.status}; feedback is for finished runs (completed, failed or "
                                "cancelled).")
    policy = spec_from_json(run.agent_version.spec).memory
    learns = policy.reflect and score < policy.reflect_below
    with transaction.atomic():
        feedback = RunFeedback.objects.create(run=run, score=score, comment=comment[:4000], source=source,
                                              created_by=str(actor))
        audit_event_record(tenant=tenant, actor=actor, action="run.feedback", target_type="run", target_id=str(run_id),
                           data={"feedback_id": str(feedback.id), "score": score, "source": source,
                                 "lesson_requested": learns})
        if learns:
            transaction.on_commit(partial(tasks.run_learn_task.apply_async, queue=settings.LEARN_QUEUE or None,
                                          kwargs={"tenant_schema": tenant.schema_name, "run_id": str(run_id),
                                                  "feedback_id": str(feedback.id)}))
    return feedback, learns


def run_learn(*, tenant: Any, run_id: UUID, chat_model: ChatModel, feedback_id: UUID | None = None) -> Learned:
    """Learn from a finished run: extract its facts (once, when completed and the policy extracts) and write a
    lesson when it failed, when ``feedback_id`` scored it low, or when its evaluator step did."""
    require_schema(tenant.schema_name)
    run = Run.objects.select_related("agent_version__agent").get(id=run_id)
    spec = spec_from_json(run.agent_version.spec)
    policy = spec.memory
    if run.status not in TERMINAL or not (policy.extract or policy.reflect):
        return Learned(facts=[], lesson=None)
    store = checkpoint_store(tenant.schema_name)
    state = store.load(run.head_id).state
    facts: list[UUID] = []
    if policy.extract and run.status == "completed":
        with _claim(f"{run.id}:extraction") as mine:
            if mine and not Memory.objects.filter(source_run_id=run.id, source=Memory.Source.EXTRACTION).exists():
                facts = _extract(tenant, run, spec, state.messages, chat_model)
    lesson = None
    if policy.reflect:
        why = _why_wrong(tenant, run, spec, state.values, feedback_id)
        if why is not None:
            with _claim(f"{run.id}:{why[0]}") as mine:
                if mine:
                    lesson = _reflect(tenant, run, spec, state.messages, why, chat_model)
    return Learned(facts=facts, lesson=lesson)


@contextmanager
def _claim(what: str) -> Iterator[bool]:
    """Whether this worker may learn ``what`` now: a session-level advisory lock, held without a transaction
    (the model call may take a while) and released at the end, or by Postgres if the worker dies. False
    when another worker is learning the same thing (two deliveries of one task at once)."""
    key = advisory_key("learn", connection.schema_name, what)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        mine = bool(cursor.fetchone()[0])
    try:
        yield mine
    finally:
        if mine:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def _why_wrong(tenant: Any, run: Run, spec: AgentSpec, values: Any, feedback_id: UUID | None
               ) -> tuple[str, str] | None:
    """(key, what went wrong) when the run calls for a lesson, else None. The key makes the lesson unique."""
    if feedback_id is not None:
        feedback = RunFeedback.objects.get(id=feedback_id, run=run)
        if feedback.score < spec.memory.reflect_below:
            return f"feedback:{feedback.id}", (f"A reviewer scored the result {feedback.score:.2f} out of 1"
                                                + (f" and said: {feedback.comment}" if feedback.comment else "."))
        return None
    if run.status == "failed":
        error = run.error or {}
        return "failed", f"The run failed ({error.get('code', 'error')}): {error.get('message', '')}"
    score = _score(values.get("score"))
    if run.status == "completed" and score is not None and score < spec.memory.reflect_below:
        feedback, _ = RunFeedback.objects.get_or_create(run=run, source=RunFeedback.Source.EVALUATOR,
                                                        defaults={"score": score, "created_by": "evaluator"})
        return f"feedback:{feedback.id}", f"The agent's evaluator scored the result {score:.2f} out of 1."
    return None


def _score(value: Any) -> float | None:
    """An evaluator's score: a number from 0 to 1 (or to 10, or a percentage), alone or in a short text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        found = re.search(r"-?\d+(?:\.\d+)?", value)
        value = float(found.group()) if found else None
    if not isinstance(value, (int, float)):
        return None
    for scale in (1.0, 10.0, 100.0):
        if 0 <= value <= scale:
            return value / scale
    return None


def _transcript(messages: Any) -> str:
    lines = []
    for message in messages:
        if message.role == "system":
            continue
        who = message.role if message.role != "tool" else f"tool {message.name}"
        calls = "; ".join(f"calls {c.name}({json.dumps(c.arguments)[:300]})" for c in message.tool_calls)
        lines.append(f"{who}: {message.content[:2000]}" + (f" [{calls}]" if calls else ""))
    text = "\n".join(lines)
    return text[-TRANSCRIPT_CHARS:]


def _ask(run: Run, spec: AgentSpec, instructions: str, prompt: str, chat_model: ChatModel, purpose: str) -> str:
    request = ModelRequest(models=spec.models, messages=(Message(role="system", content=instructions),
                                                         Message(role="user", content=prompt)),
                           temperature=0.0, timeout_seconds=spec.model_timeout_seconds,
                           metadata={"purpose": purpose, "run_id": str(run.id)})
    reply = run_coroutine(chat_model.complete(request))
    Run.objects.filter(id=run.id).update(cost_usd=F("cost_usd") + Decimal(str(reply.usage.cost_usd)),
                                         input_tokens=F("input_tokens") + reply.usage.input_tokens,
                                         output_tokens=F("output_tokens") + reply.usage.output_tokens)
    return reply.message.content.strip()


def _extract(tenant: Any, run: Run, spec: AgentSpec, messages: Any, chat_model: ChatModel) -> list[UUID]:
    try:
        answer = _ask(run, spec, EXTRACT_INSTRUCTIONS, _transcript(messages), chat_model, "extract_facts")
    except ProviderError as exc:
        logger.warning("Extracting facts from run %s failed: %s", run.id, exc)
        return []
    statements = _statements(answer)[:MAX_FACTS]
    agent = "" if spec.memory.shared else run.agent_version.agent.name
    drafts = []
    for text in statements:
        try:
            drafts.append(memory_draft(text=text, kind=Memory.Kind.FACT, agent=agent, end_user=run.end_user,
                                       tags=[run.task_kind] if run.task_kind else [],
                                       metadata={"learned_from": f"{run.id}:extraction"}))
        except InvalidInput:
            continue
    written = memory_remember(tenant=tenant, drafts=drafts, actor=ACTOR, source=Memory.Source.EXTRACTION,
                              source_run_id=run.id)
    return [w.memory.id for w in written]


def _statements(answer: str) -> list[str]:
    """A JSON list of strings, or failing that, the answer's bulleted lines."""
    found = re.search(r"\[.*\]", answer, re.DOTALL)
    if found:
        try:
            items = json.loads(found.group())
            if isinstance(items, list):
                return [item.strip() for item in items if isinstance(item, str) and item.strip()]
        except ValueError:
            pass
    return [line.strip(" -*\t") for line in answer.splitlines() if line.strip(" -*\t")]


def _reflect(tenant: Any, run: Run, spec: AgentSpec, messages: Any, why: tuple[str, str],
             chat_model: ChatModel) -> UUID | None:
    key, what = why
    learned_from = f"{run.id}:{key}"
    done = Memory.objects.filter(metadata__learned_from=learned_from).values_list("id", flat=True).first()
    if done is not None:
        return done
    prompt = f"The task: {run.input[:2000]}\n\nWhat went wrong: {what}\n\nThe run:\n{_transcript(messages)}"
    try:
        lesson = _ask(run, spec, LESSON_INSTRUCTIONS, prompt, chat_model, "lesson")
    except ProviderError as exc:
        logger.warning("Writing a lesson from run %s failed: %s", run.id, exc)
        return None
    if not lesson:
        return None
    kind = run.task_kind or "general"
    draft = memory_draft(text=lesson[:2000], kind=Memory.Kind.LESSON,
                         agent="" if spec.memory.shared else run.agent_version.agent.name,
                         tags=[kind], metadata={"learned_from": learned_from, "task_kind": kind})
    [written] = memory_remember(tenant=tenant, drafts=[draft], actor=ACTOR, source=Memory.Source.REFLECTION,
                                source_run_id=run.id)
    if key.startswith("feedback:"):
        RunFeedback.objects.filter(id=key.split(":", 1)[1]).update(lesson=written.memory)
    audit_event_record(tenant=tenant, actor=ACTOR, action="run.lesson", target_type="run", target_id=str(run.id),
                       data={"memory_id": str(written.memory.id), "reason": key.split(":", 1)[0],
                             "task_kind": kind})
    return written.memory.id
