"""A zero-latency ChatModel played in this process: the scripted model server's scenarios without HTTP.

``ScriptedChatModel`` answers a request exactly as the gateway (litellm) does when it talks to our model
server (data_plane/model_server), but with no server, no socket and no litellm: the same scenario book
(``ScenarioBook``: registry, turn = number of assistant messages, ``{{last_user}}``/``{{last_tool}}``,
injected failures), the same content chunks to ``on_delta``, the same tool call ids and token estimates.
``wiring.chat_model()`` returns it when ``LLM_API_BASE`` is ``"inprocess"``: benchmarks and offline runs.

The scenario is chosen as on the server: the provider prefix ``openai/`` is what litellm strips before it
sends the model name, so ``openai/<scenario>`` selects ``<scenario>``; then a ``[scenario:x]`` system
marker, then ``metadata["user"] = "scenario:x"``, then ``echo``. Attachments are rendered as the gateway renders
them (``adapters.media``, with the ``capabilities`` given: patterns only, no litellm), and audio is transcribed
by the book as the server's ``/v1/audio/transcriptions`` does. Scenario delays
(``first_token_delay_ms``, ``chunk_delay_ms``) are slept; the built-in ones have none. A failing turn
fails like the server's answer through the gateway: a transient status (408, 409, 429, 5xx) or a cut
stream is retried (``max_retries`` per model, without backoff: nothing remote to spare), then the next
model; any other status, or an unknown scenario, raises ProviderRejected at once. Usage carries the
server's token estimates and costs 0.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from data_plane.model_server.app import deltas
from data_plane.model_server.scenarios import InjectedFailure, InvalidRequest, Plan, ScenarioBook, UnknownScenario, \
    builtin_book
from data_plane.runtime.adapters.media import AttachmentRefused, Capabilities, render_messages
from data_plane.runtime.adapters.openai_format import openai_message, openai_tool
from data_plane.runtime.core.messages import Message, ToolCall, Usage
from data_plane.runtime.core.ports import DeltaCallback, MediaSource, ModelReply, ModelRequest, ProviderRejected, \
    ProviderUnavailable, RetryCallback, RetryNotice, with_fallback

# The provider prefix litellm removes from the model name before it calls an OpenAI-compatible server.
PROVIDER_PREFIX = "openai/"
_TRANSIENT_STATUSES = frozenset({408, 409, 429})


class ScriptedChatModel:
    """The ChatModel port on a ScenarioBook, in process. Safe to share between threads and event loops."""

    def __init__(self, *, book: ScenarioBook | None = None, max_retries: int = 3,
                 capabilities: Capabilities | None = None) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.book = book if book is not None else builtin_book()
        self.max_retries = max_retries
        self.capabilities = capabilities if capabilities is not None else Capabilities()
        self.transcriber = _BookTranscriber(self) if self.capabilities.transcription_model else None
        self._lock = threading.Lock()  # the book's failure counters and request counts

    async def complete(self, request: ModelRequest, *, on_delta: DeltaCallback | None = None,
                       on_retry: RetryCallback | None = None, media: MediaSource | None = None) -> ModelReply:
        if not request.models:
            raise ProviderRejected("The model request names no models; give at least one in the agent's policy.")
        started = time.perf_counter()
        attempts = 0
        description = "no attempt made"
        errors: list[str] = []
        for position, model in enumerate(request.models):
            messages = None
            if any(message.attachments for message in request.messages):
                try:
                    messages = await render_messages(request.messages, model=model, capabilities=self.capabilities,
                                                     media=media, transcriber=self.transcriber)
                except AttachmentRefused as exc:
                    raise ProviderRejected(f"Model {model} cannot be given this conversation: {exc}.") from None
            body = request_body(model, request, messages=messages)
            for retry in range(self.max_retries + 1):
                attempts += 1
                try:
                    with self._lock:
                        plan = self.book.plan(body)
                except (UnknownScenario, InvalidRequest) as exc:  # the server's 404 or 400: not retried
                    raise ProviderRejected(f"Model {model} rejected the request: {exc}. Fix the request or the "
                                           "agent's model policy; retrying will not help.") from None
                failure = plan.failure
                if failure is None or _cut_after_the_end(plan, failure):
                    reply = await _play(plan, model, on_delta, attempts=attempts, started=started)
                    return with_fallback(reply, request.models, errors)
                description, emitted = await _fail(plan, failure, on_delta)
                errors.append(f"{model}: {description}")
                if not _is_transient(failure):
                    raise ProviderRejected(f"Model {model} rejected the request: {description}. Fix the request or "
                                           "the agent's model policy; retrying will not help.")
                is_last_try = retry == self.max_retries
                if on_retry is not None and not (is_last_try and position == len(request.models) - 1):
                    next_model = request.models[position + 1] if is_last_try else model
                    await on_retry(RetryNotice(model=model, attempt=attempts, error=description,
                                               next_model=next_model, delay_seconds=0.0, deltas_emitted=emitted))
        plural = "s" if attempts > 1 else ""
        raise ProviderUnavailable(f"Models {', '.join(request.models)} are unavailable after {attempts} "
                                  f"attempt{plural}; last error: {description}. Retry later or add a fallback model.")


class _BookTranscriber:
    """Transcribes with the scenario book, as the model server's /v1/audio/transcriptions does."""

    def __init__(self, chat_model: ScriptedChatModel) -> None:
        self.chat_model = chat_model
        self.model = chat_model.capabilities.transcription_model

    async def transcribe(self, audio: bytes, *, media_type: str) -> str:
        with self.chat_model._lock:
            return self.chat_model.book.transcribe(audio)


def request_body(model: str, request: ModelRequest, *, messages: list[dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    """The chat completion body the model server would receive for ``request`` through the gateway
    (``messages``: the request's messages already rendered, when they carry attachments)."""
    body: dict[str, Any] = {"model": model.removeprefix(PROVIDER_PREFIX),
                            "messages": messages if messages is not None else [
                                openai_message(m) for m in request.messages], "stream": True,
                            "stream_options": {"include_usage": True}}
    if request.tools:
        body["tools"] = [openai_tool(t) for t in request.tools]
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    user = request.metadata.get("user")
    if isinstance(user, str) and user:
        body["user"] = user
    return body


async def _play(plan: Plan, model: str, on_delta: DeltaCallback | None, *, attempts: int,
                started: float) -> ModelReply:
    """The reply, its content passed to ``on_delta`` in the server's chunks (with the scenario's delays)."""
    parts: list[str] = []
    for number, delta in enumerate(deltas(plan)):
        await _delay(plan, number)
        text = delta.get("content")
        if text:
            parts.append(text)
            if on_delta is not None:
                await on_delta(text)
    calls = tuple(ToolCall(id=call.id, name=call.name, arguments=json.loads(call.arguments))
                  for call in plan.tool_calls)
    cached = min(plan.turn.cached_tokens, plan.prompt_tokens)
    usage = Usage(model=model, input_tokens=plan.prompt_tokens, output_tokens=plan.completion_tokens,
                  cached_input_tokens=cached, cost_usd=0.0, latency_ms=(time.perf_counter() - started) * 1000,
                  attempts=attempts)
    return ModelReply(message=Message(role="assistant", content="".join(parts), tool_calls=calls), usage=usage,
                      finish_reason=plan.finish_reason)


async def _fail(plan: Plan, failure: InjectedFailure, on_delta: DeltaCallback | None) -> tuple[str, int]:
    """Play a failing attempt: an error status, or a stream cut after ``after_chunks`` chunks (the text of
    those reaches ``on_delta``, as it would through the gateway). Returns the error's description and how
    many deltas reached ``on_delta``."""
    if failure.after_chunks is None:
        await _delay(plan, 0)
        message = failure.message or (f"Scripted failure {failure.status} from scenario {plan.scenario!r} "
                                      f"(conversation {plan.conversation}).")
        return f"HTTP {failure.status}: {message}", 0
    emitted = 0
    for number, delta in enumerate(deltas(plan)[:failure.after_chunks]):
        await _delay(plan, number)
        if delta.get("content") and on_delta is not None:
            await on_delta(delta["content"])
            emitted += 1
    return f"the stream was cut after {failure.after_chunks} chunks", emitted


def _cut_after_the_end(plan: Plan, failure: InjectedFailure) -> bool:
    """A cut past the stream's last chunk (deltas, finish, usage) never happens: the server answers in full."""
    frames = len(deltas(plan)) + 1 + (0 if plan.turn.omit_usage else 1)
    return failure.after_chunks is not None and failure.after_chunks >= frames


def _is_transient(failure: InjectedFailure) -> bool:
    return failure.after_chunks is not None or failure.status in _TRANSIENT_STATUSES or failure.status >= 500


async def _delay(plan: Plan, chunk_number: int) -> None:
    delay_ms = plan.turn.first_token_delay_ms if chunk_number == 0 else plan.turn.chunk_delay_ms
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
