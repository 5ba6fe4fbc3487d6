"""Builds the runtime's adapters from settings: the one place that reads them for the data plane."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from functools import cache, partial
from typing import Any
from uuid import UUID

from django.conf import settings

from data_plane.attachment_storage import BlobStorage, LocalFolderStorage
from data_plane.executor import RunStepper
from data_plane.runtime.adapters.attachments import StoredMedia
from data_plane.runtime.adapters.media import Capabilities
from data_plane.runtime.core.media import AttachmentLimits
from data_plane.runtime.core.context import EstimatedTokens
from data_plane.runtime.core.ports import ChatModel, MemoryRecall, TokenCounter
from data_plane.runtime.core.spec import AgentSpec
from data_plane.tools import ToolRouter, release_run


# LLM_API_BASE="inprocess": benchmarks and offline runs. The model server's scripted scenarios are played
# inside this process (data_plane/runtime/adapters/scripted.py): no network, no litellm, zero latency.
INPROCESS = "inprocess"


@cache
def chat_model() -> ChatModel:
    """The process's model, shared by every step: the LLM gateway (litellm), or with LLM_API_BASE="inprocess"
    the scripted scenarios played in this process."""
    if settings.LLM_API_BASE == INPROCESS:
        from data_plane.runtime.adapters.scripted import ScriptedChatModel

        return ScriptedChatModel(max_retries=settings.LLM_MAX_RETRIES, capabilities=capabilities())
    from data_plane.runtime.adapters.llm import LiteLLMChatModel, register_local_prices

    if settings.LLM_LOCAL_PRICES:
        register_local_prices(settings.LLM_LOCAL_PRICES)
    return LiteLLMChatModel(api_base=settings.LLM_API_BASE or None, api_key=settings.LLM_API_KEY or None,
                            max_retries=settings.LLM_MAX_RETRIES, capabilities=capabilities())


@cache
def capabilities() -> Capabilities:
    """Which media each model takes: the operator's patterns, then litellm's model map (none in process)."""
    lookup = None
    if settings.LLM_API_BASE != INPROCESS:
        from data_plane.runtime.adapters.llm import litellm_capabilities

        lookup = litellm_capabilities
    return Capabilities(image_models=settings.LLM_IMAGE_MODELS, audio_models=settings.LLM_AUDIO_MODELS,
                        transcription_model=settings.LLM_TRANSCRIPTION_MODEL, lookup=lookup)


@cache
def attachment_storage() -> BlobStorage:
    """Where attachments' bytes are kept (ATTACHMENT_STORAGE; only the local folder for now)."""
    return LocalFolderStorage(settings.ATTACHMENT_STORAGE_ROOT)


def attachment_limits() -> AttachmentLimits:
    """The largest image and audio attachment (ATTACHMENT_MAX_IMAGE_BYTES, ATTACHMENT_MAX_AUDIO_BYTES)."""
    return AttachmentLimits(max_image_bytes=settings.ATTACHMENT_MAX_IMAGE_BYTES,
                            max_audio_bytes=settings.ATTACHMENT_MAX_AUDIO_BYTES)


@cache
def token_counter() -> TokenCounter:
    """How model calls' contexts are measured: litellm's tokenizer for the model; with LLM_API_BASE="inprocess"
    the scripted scenarios' estimate (four characters a token), which needs no tokenizer."""
    if settings.LLM_API_BASE == INPROCESS:
        return EstimatedTokens()
    from data_plane.runtime.adapters.llm import LiteLLMTokenCounter

    return LiteLLMTokenCounter()


def memory_recall_factory(tenant_schema: str) -> Callable[[str], MemoryRecall] | None:
    """Makes a run's MemoryRecall (from its id) on the tenant's long-term memory store, which model calls
    recall from (when the run's agent recalls: its memory policy)."""
    from data_plane.recall import TenantMemoryRecall

    return lambda run_id: TenantMemoryRecall(tenant_schema=tenant_schema, run_id=run_id)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def learn_later(tenant_schema: str, run_id: UUID, status: str, spec: AgentSpec) -> None:
    """A run finished: if its agent learns (facts, lessons), a task does it, off the run's critical path."""
    policy = spec.memory
    if policy.extract or (policy.reflect and status == "failed") or (policy.reflect and status == "completed"):
        from django.db import transaction

        from data_plane import tasks

        transaction.on_commit(partial(tasks.run_learn_task.apply_async, queue=settings.LEARN_QUEUE or None,
                                      kwargs={"tenant_schema": tenant_schema, "run_id": str(run_id)}))


def stepper_for(*, tenant: Any, dispatch: Callable[[UUID, int], None]) -> RunStepper:
    schema = tenant.schema_name
    return RunStepper(
        tenant_schema=schema, chat_model=chat_model(),
        tool_runner_factory=lambda run_id: ToolRouter(tenant_schema=schema, run_id=run_id, tenant=tenant),
        dispatch=dispatch, owner=worker_identity(), lease_seconds=settings.RUN_LEASE_SECONDS, tenant=tenant,
        steps_per_task=settings.RUN_STEPS_PER_TASK, on_stop=lambda run_id: release_run(schema, run_id),
        on_finished=partial(learn_later, schema),
        media=StoredMedia(tenant_schema=schema, storage=attachment_storage()),
        token_counter=token_counter(), memory_recall_factory=memory_recall_factory(schema),
        guard_for=partial(guard_for, schema), spend_guard=spend_guard(tenant),
    )


def spend_guard(tenant: Any) -> Any:
    """Holds each LLM call's worst case against the tenant's budgets and token quota (billing), priced like the
    calls are settled: litellm's map, or nothing for the in-process scripted models."""
    from data_plane.spending import BillingSpendGuard, FreePricing

    if settings.LLM_API_BASE == INPROCESS:
        pricing: Any = FreePricing()
    else:
        from data_plane.runtime.adapters.llm import LiteLLMPricing

        chat_model()  # registers the local prices first
        pricing = LiteLLMPricing()
    return BillingSpendGuard(tenant=tenant, counter=token_counter(), pricing=pricing,
                             default_output_tokens=settings.BUDGET_DEFAULT_OUTPUT_TOKENS,
                             hold_seconds=settings.BUDGET_HOLD_SECONDS)


def guard_for(tenant_schema: str, agent: str) -> Any:
    """The agent's guardrail pipeline (its effective policy, cached a moment per process)."""
    from guardrails.selectors import pipeline_for

    return pipeline_for(tenant_schema=tenant_schema, agent=agent)


def run_step_queue(tier: str) -> str:
    """The Celery queue of a tenant's run steps: RUN_STEP_QUEUE when set (one queue for all), else the tier's
    (billing/plans.py) with RUN_QUEUE_PREFIX."""
    from billing.plans import plan_for

    return settings.RUN_STEP_QUEUE or f"{settings.RUN_QUEUE_PREFIX}{plan_for(tier).queue}"
