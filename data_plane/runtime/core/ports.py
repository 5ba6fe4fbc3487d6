"""What the core needs from the outside world. Adapters implement these; the core never sees an SDK type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from data_plane.runtime.core.messages import Message, ToolCall, ToolDefinition, ToolResult, Usage


class ProviderError(Exception):
    """Base of model-provider failures, already translated from the vendor's exception."""


class ProviderUnavailable(ProviderError):
    """Transient: rate limit, 5xx, connection failure or timeout, after the gateway's own retries."""


class ProviderRejected(ProviderError):
    """Terminal: the provider refused the request (bad request, auth, context too long)."""


class ToolUnavailable(Exception):
    """Transient failure to reach a tool (transport error, circuit open); the call may be retried."""


class MemoryUnavailable(Exception):
    """The long-term memory store could not answer; the model call goes ahead without recalled memories."""


@dataclass(frozen=True)
class RecallRequest:
    """Memories to recall for one model call (see MemoryRecall): the query, how many, and their share of the
    context budget. ``offset`` is where their section goes in the system message's content."""

    query: str
    limit: int
    max_tokens: int
    offset: int


@dataclass(frozen=True)
class ModelRequest:
    """One LLM call. ``models`` is the policy's ordered list: the first, then fallbacks. ``recall``, when set,
    asks the shell to add recalled memories to the system message before the call (core/context.py)."""

    models: tuple[str, ...]
    messages: tuple[Message, ...]
    tools: tuple[ToolDefinition, ...] = ()
    temperature: float | None = None
    max_output_tokens: int | None = None
    timeout_seconds: float = 60.0
    metadata: dict[str, Any] = field(default_factory=dict)
    recall: RecallRequest | None = None


def request_has_attachments(request: ModelRequest) -> bool:
    return any(message.attachments for message in request.messages)


@dataclass(frozen=True)
class ModelReply:
    message: Message
    usage: Usage
    finish_reason: str = "stop"
    held_calls: tuple[str, ...] = ()  # ids of tool calls the guardrails hold for a human's approval


MAX_RECORDED_ERRORS = 10
MAX_RECORDED_ERROR_CHARACTERS = 300


def with_fallback(reply: ModelReply, models: Sequence[str], errors: Sequence[str]) -> ModelReply:
    """The reply with what came before it on its usage: the first model asked for, when another one answered,
    and the failed attempts' errors (the last few, each cut short)."""
    fell_back_from = models[0] if models and reply.usage.model != models[0] else None
    if fell_back_from is None and not errors:
        return reply
    kept = tuple(error if len(error) <= MAX_RECORDED_ERROR_CHARACTERS else error[:MAX_RECORDED_ERROR_CHARACTERS] + "…"
                 for error in errors[-MAX_RECORDED_ERRORS:])
    return replace(reply, usage=replace(reply.usage, fell_back_from=fell_back_from, errors=kept))


DeltaCallback = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class RetryNotice:
    """One failed attempt that the model will follow with another (same model after a delay, or the next)."""

    model: str
    attempt: int  # the failed attempt's number within this call, from 1
    error: str
    next_model: str
    delay_seconds: float  # 0.0 when falling back to the next model
    deltas_emitted: int  # text fragments this attempt had already passed to on_delta


RetryCallback = Callable[[RetryNotice], Awaitable[None]]


class MediaSource(Protocol):
    """The bytes behind the attachment parts of one tenant's messages, and the transcripts made of them."""

    async def read(self, attachment_id: str) -> bytes | None:
        """The attachment's bytes; None when it was deleted since the message referenced it."""
        ...

    async def transcript(self, attachment_id: str, *, model: str) -> str | None:
        """The transcript ``model`` made of this audio attachment before, if any."""
        ...

    async def remember_transcript(self, attachment_id: str, *, model: str, text: str) -> None:
        """Keep a transcript, so the next model call of the conversation does not pay for it again."""
        ...


class ChatModel(Protocol):
    async def complete(self, request: ModelRequest, *, on_delta: DeltaCallback | None = None,
                       on_retry: RetryCallback | None = None, media: MediaSource | None = None) -> ModelReply:
        """Run the request (streaming when ``on_delta`` is given: each text fragment as it arrives).

        A retried attempt streams again from the start; ``on_retry`` is told first, so a consumer of the
        deltas can drop the failed attempt's text. ``media`` reads the files the messages' attachment parts
        name (given whenever they name any). Raises ProviderUnavailable after retries and fallbacks are
        exhausted, ProviderRejected at once (also for an attachment the model cannot take).
        """
        ...


class ToolRunner(Protocol):
    async def call(self, call: ToolCall, *, idempotency_key: str) -> ToolResult:
        """Run one tool call. The same ``idempotency_key`` means the same call: a tool must not repeat
        its effect. A tool's own failure is a ToolResult with is_error; ToolUnavailable is transient."""
        ...


class TokenCounter(Protocol):
    """Counts tokens as a model's tokenizer does. Deterministic: the same inputs always give the same count
    (the core plans a run's context with it, and a resumed step must plan the same)."""

    def count(self, *, model: str, messages: Sequence[Message] = (), tools: Sequence[ToolDefinition] = ()) -> int:
        """Input tokens of a request to ``model`` with these messages and tool definitions."""
        ...

    def input_limit(self, model: str) -> int | None:
        """The most input tokens ``model`` accepts; None when unknown."""
        ...


class MemoryRecall(Protocol):
    async def recall(self, *, query: str, limit: int, max_tokens: int) -> list[str]:
        """Up to ``limit`` of the run's agent's long-term memories relevant to ``query`` (a recall is made per
        run, so it knows the agent and the end user), most relevant first, about ``max_tokens`` in all (the
        caller trims them to that). Read-only. Raises MemoryUnavailable."""
        ...
