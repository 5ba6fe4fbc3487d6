"""The LLM gateway: the ChatModel port on litellm, with retries, backoff and model fallback.

The one module of the data plane that imports litellm. Every vendor exception is translated here into
ProviderUnavailable (transient, after retries and fallbacks) or ProviderRejected (terminal, at once).
Calls always stream. A retried attempt streams again from the start, so ``on_delta`` may see the same
text twice across attempts; ``on_retry`` (optional) is told before each retry so a UI can reset.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import httpx
import litellm
import openai

from data_plane.runtime.adapters.media import AttachmentRefused, Capabilities, ModelCapabilities, Transcriber, \
    render_messages
from data_plane.runtime.adapters.openai_format import openai_message, openai_tool
from data_plane.runtime.core.context import attachment_tokens
from data_plane.runtime.core.media import EXTENSIONS
from data_plane.runtime.core.messages import Message, ToolCall, ToolDefinition, Usage
from data_plane.runtime.core.ports import DeltaCallback, MediaSource, ModelReply, ModelRequest, ProviderRejected, \
    ProviderUnavailable, RetryCallback, RetryNotice, with_fallback

logger = logging.getLogger(__name__)

# litellm prints a "Give Feedback / Get Help" banner to stdout with every exception it maps.
litellm.suppress_debug_info = True

# Prices for the scripted local models (gpt-4o-mini's list prices), in dollars per million tokens.
LOCAL_INPUT_PER_MILLION = 0.15
LOCAL_OUTPUT_PER_MILLION = 0.60
LOCAL_CACHED_INPUT_PER_MILLION = 0.075

# Statuses worth another attempt: timeout, conflict, rate limit; every 5xx is too.
_TRANSIENT_STATUSES = frozenset({408, 409, 429})
# What a provider call can raise: litellm's exceptions all subclass the openai SDK's; the rest are transports.
_PROVIDER_ERRORS: tuple[type[BaseException], ...] = (openai.OpenAIError, httpx.HTTPError, aiohttp.ClientError,
                                                     TimeoutError, ConnectionError)

# litellm prefixes provider messages with "litellm.RateLimitError: RateLimitError: OpenAIException - "
_LITELLM_PREFIX = re.compile(r"^(?:(?:litellm\.)?\w+(?:Error|Exception)(?::| -)\s*)+")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class _Failure:
    is_transient: bool
    description: str


class LiteLLMChatModel:
    """The ChatModel port on ``litellm.acompletion``: streamed, retried with jittered backoff, then falls back."""

    def __init__(self, *, api_base: str | None = None, api_key: str | None = None, max_retries: int = 3,
                 backoff_base_seconds: float = 0.2, backoff_max_seconds: float = 5.0,
                 rng: random.Random | None = None, sleep: Sleep = asyncio.sleep,
                 capabilities: Capabilities | None = None) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.capabilities = capabilities if capabilities is not None else Capabilities(lookup=litellm_capabilities)
        self.transcriber: Transcriber | None = LiteLLMTranscriber(
            model=self.capabilities.transcription_model, api_base=api_base, api_key=api_key) \
            if self.capabilities.transcription_model else None
        self.api_base = api_base
        self.api_key = api_key
        self.max_retries = max_retries
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.rng = rng if rng is not None else random.Random()
        self.sleep = sleep

    def backoff_seconds(self, retry: int) -> float:
        """Full jitter: uniform(0, min(max, base * 2**retry)), ``retry`` counting from 0."""
        return self.rng.uniform(0.0, min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** retry))

    async def complete(self, request: ModelRequest, *, on_delta: DeltaCallback | None = None,
                       on_retry: RetryCallback | None = None, media: MediaSource | None = None) -> ModelReply:
        """Stream one reply, retrying transient failures per model, then the next model of ``request.models``.

        Attachments are rendered for each model as it takes them (``adapters.media``), reading ``media``.
        Raises ProviderUnavailable when every model is exhausted, ProviderRejected at once on a terminal error
        (an attachment the model cannot take is one). Deltas may repeat across attempts: a retried stream
        starts over (``on_retry`` is called first).
        """
        if not request.models:
            raise ProviderRejected("The model request names no models; give at least one in the agent's policy.")
        started = time.perf_counter()
        arguments = self._arguments(request)
        attempts = 0
        failure = _Failure(is_transient=True, description="no attempt made")
        errors: list[str] = []
        for position, model in enumerate(request.models):
            if any(message.attachments for message in request.messages):
                arguments = {**arguments, "messages": await self._messages_for(model, request, media)}
            for retry in range(self.max_retries + 1):
                attempts += 1
                stream = _Stream()
                outcome = await self._attempt(model, arguments, on_delta, stream)
                if outcome is None:
                    reply = stream.reply(model=model, attempts=attempts,
                                         latency_ms=(time.perf_counter() - started) * 1000)
                    return with_fallback(reply, request.models, errors)
                failure = outcome
                errors.append(f"{model}: {failure.description}")
                if not failure.is_transient:
                    raise ProviderRejected(f"Model {model} rejected the request: {failure.description.rstrip('.')}. "
                                           "Fix the request or the agent's model policy; retrying will not help.")
                is_last_try = retry == self.max_retries
                if is_last_try and position == len(request.models) - 1:
                    break
                delay = 0.0 if is_last_try else self.backoff_seconds(retry)
                next_model = request.models[position + 1] if is_last_try else model
                logger.warning("LLM attempt %d on %s failed (%s); retrying on %s in %.3f s", attempts, model,
                               failure.description, next_model, delay)
                if on_retry is not None:
                    await on_retry(RetryNotice(model=model, attempt=attempts, error=failure.description,
                                               next_model=next_model, delay_seconds=delay,
                                               deltas_emitted=len(stream.parts) if on_delta is not None else 0))
                if not is_last_try:
                    await self.sleep(delay)
        plural = "s" if attempts > 1 else ""
        raise ProviderUnavailable(f"Models {', '.join(request.models)} are unavailable after {attempts} "
                                  f"attempt{plural}; last error: {failure.description.rstrip('.')}. "
                                  "Retry later or add a fallback model.")

    async def _messages_for(self, model: str, request: ModelRequest, media: MediaSource | None) -> list[dict[str, Any]]:
        try:
            return await render_messages(request.messages, model=model, capabilities=self.capabilities, media=media,
                                         transcriber=self.transcriber)
        except AttachmentRefused as exc:
            raise ProviderRejected(f"Model {model} cannot be given this conversation: {exc}.") from None

    def _arguments(self, request: ModelRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "messages": [] if any(m.attachments for m in request.messages) else [
                openai_message(m) for m in request.messages], "stream": True,
            "stream_options": {"include_usage": True}, "timeout": request.timeout_seconds,
            # the openai SDK would retry on its own (twice by default); the retries are ours
            "max_retries": 0, "api_base": self.api_base, "api_key": self.api_key}
        if request.tools:
            arguments["tools"] = [openai_tool(t) for t in request.tools]
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        if request.max_output_tokens is not None:
            arguments["max_tokens"] = request.max_output_tokens
        user = request.metadata.get("user")
        if isinstance(user, str) and user:
            arguments["user"] = user  # OpenAI's end-user id for abuse monitoring
        return arguments

    async def _attempt(self, model: str, arguments: dict[str, Any], on_delta: DeltaCallback | None,
                       stream: _Stream) -> _Failure | None:
        """One streamed call into ``stream``; the provider's failure, translated, or None when it completed."""
        try:
            chunks = await litellm.acompletion(model=model, **arguments)
        except _PROVIDER_ERRORS as exc:
            return _failure(exc)
        iterator = chunks.__aiter__()
        is_exhausted = False
        try:
            while True:
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    is_exhausted = True
                    return None
                except _PROVIDER_ERRORS as exc:
                    is_exhausted = True
                    return _failure(exc)
                text = stream.add(chunk)
                if text and on_delta is not None:  # outside the try: the caller's errors are not the provider's
                    await on_delta(text)
        finally:
            if not is_exhausted:  # cancelled, or the caller's callback raised: release the connection
                await chunks.aclose()


class LiteLLMTranscriber:
    """Speech to text through ``litellm.atranscription`` (OpenAI's /audio/transcriptions and its likes)."""

    def __init__(self, *, model: str, api_base: str | None = None, api_key: str | None = None,
                 timeout_seconds: float = 120.0) -> None:
        self.model = model
        self.api_base = api_base
        self.api_key = api_key
        self.timeout_seconds = timeout_seconds

    async def transcribe(self, audio: bytes, *, media_type: str) -> str:
        """The text spoken in ``audio``. Raises ProviderUnavailable (transient) or ProviderRejected."""
        name = f"audio.{EXTENSIONS.get(media_type, 'bin')}"
        try:
            response = await litellm.atranscription(model=self.model, file=(name, audio, media_type),
                                                    api_base=self.api_base, api_key=self.api_key,
                                                    timeout=self.timeout_seconds, max_retries=0)
        except _PROVIDER_ERRORS as exc:
            failure = _failure(exc)
            if failure.is_transient:
                raise ProviderUnavailable(f"Transcription model {self.model} is unavailable: "
                                          f"{failure.description.rstrip('.')}. The step is retried later.") from None
            raise ProviderRejected(f"Transcription model {self.model} rejected the audio: "
                                   f"{failure.description.rstrip('.')}. Send the audio in another format, or the "
                                   "text instead.") from None
        return str(getattr(response, "text", "") or "")


@functools.cache
def litellm_capabilities(model: str) -> ModelCapabilities:
    """What litellm's model map says ``model`` takes (nothing for a model it does not know)."""
    try:
        return ModelCapabilities(images=bool(litellm.supports_vision(model=model)),
                                 audio=bool(litellm.supports_audio_input(model=model)))
    except Exception:  # litellm raises several unrelated types for a model it does not know
        return ModelCapabilities()


@dataclass
class _PartialCall:
    """A tool call as its fragments arrive: the id and name first, then pieces of the JSON arguments."""

    id: str = ""
    name: str = ""
    fragments: list[str] = field(default_factory=list)


class _Stream:
    """Accumulates one streamed reply: content fragments, tool calls by index, finish reason and usage."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls: dict[int, _PartialCall] = {}
        self.finish_reason: str | None = None
        self.usage: Any = None

    def add(self, chunk: Any) -> str:
        """Take one chunk; returns its text fragment ('' if none)."""
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = usage
        if not chunk.choices:
            return ""
        choice = chunk.choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        delta = choice.delta
        if delta is None:
            return ""
        for position, call in enumerate(delta.tool_calls or ()):
            index = call.index if call.index is not None else position
            partial = self.calls.setdefault(index, _PartialCall())
            if call.id:
                partial.id = call.id
            function = call.function
            if function is not None:
                if function.name:
                    partial.name = function.name
                if function.arguments:
                    partial.fragments.append(function.arguments)
        text = delta.content
        if text:
            self.parts.append(text)
            return text
        return ""

    def reply(self, *, model: str, attempts: int, latency_ms: float) -> ModelReply:
        content = "".join(self.parts)
        calls = tuple(ToolCall(id=partial.id or f"call_{index}", name=partial.name,
                               arguments=tool_arguments("".join(partial.fragments)))
                      for index, partial in sorted(self.calls.items()))
        input_tokens, output_tokens, cached = self._token_counts()
        usage = Usage(model=model, input_tokens=input_tokens, output_tokens=output_tokens,
                      cached_input_tokens=cached, cost_usd=cost_usd(model, input_tokens, output_tokens, cached),
                      latency_ms=latency_ms, attempts=attempts)
        return ModelReply(message=Message(role="assistant", content=content, tool_calls=calls), usage=usage,
                          finish_reason=self.finish_reason or ("tool_calls" if calls else "stop"))

    def _token_counts(self) -> tuple[int, int, int]:
        """Input, output and cached input tokens. litellm fills usage in itself (with its tokenizer) when a
        provider ignores ``stream_options.include_usage``, so a stream without it is not expected."""
        if self.usage is None:
            return 0, 0, 0
        details = getattr(self.usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) or 0
        return int(self.usage.prompt_tokens or 0), int(self.usage.completion_tokens or 0), int(cached)


def tool_arguments(text: str) -> dict[str, Any]:
    """A tool call's streamed arguments as a dict. Text that is not a JSON object is kept under
    ``_raw_arguments``, so the tool's input validation reports it to the model instead of the run failing here."""
    text = text.strip()
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return {"_raw_arguments": text}
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": text}


def _failure(exc: BaseException) -> _Failure:
    """Translate a provider exception: transient (retry) or terminal, with a message naming status and cause."""
    original = exc
    for _ in range(5):  # litellm's mid-stream wrapper keeps the real cause in ``original_exception``
        inner = getattr(original, "original_exception", None)
        if not isinstance(inner, BaseException) or inner is original:
            break
        original = inner
    status = getattr(original, "status_code", None)
    description = f"{type(original).__name__}{f' (HTTP {status})' if status else ''}: {_message(original)}"
    if isinstance(original, (openai.APITimeoutError, openai.APIConnectionError, httpx.TransportError,
                             aiohttp.ClientError, TimeoutError, ConnectionError)):
        return _Failure(is_transient=True, description=description)
    if isinstance(status, int):
        return _Failure(is_transient=status in _TRANSIENT_STATUSES or status >= 500, description=description)
    # an error event inside a stream carries no status; providers send those for server-side failures
    return _Failure(is_transient=isinstance(original, openai.APIError), description=description)


def _message(exc: BaseException) -> str:
    """The provider's own words: litellm's ``litellm.X: X: OpenAIException - `` prefixes removed, 500 chars at most."""
    text = str(getattr(exc, "message", None) or exc or type(exc).__name__)
    text = _LITELLM_PREFIX.sub("", text).strip() or type(exc).__name__
    return text if len(text) <= 500 else text[:500] + "…"


def cost_usd(model: str, input_tokens: int, output_tokens: int, cached_input_tokens: int) -> float:
    """The call's price from litellm's price map, cached input at the cached rate; 0.0 for an unmapped model."""
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=input_tokens, completion_tokens=output_tokens,
            cache_read_input_tokens=cached_input_tokens)
    except Exception:  # litellm raises several unrelated types for a model it has no price for
        logger.debug("no price for model %s in litellm's map; cost recorded as 0", model)
        return 0.0
    return float(prompt_cost) + float(completion_cost)


def register_local_prices(models: Iterable[str] | str, *, input_per_million: float = LOCAL_INPUT_PER_MILLION,
                          output_per_million: float = LOCAL_OUTPUT_PER_MILLION,
                          cached_input_per_million: float = LOCAL_CACHED_INPUT_PER_MILLION) -> None:
    """Price the given model names (e.g. ``openai/plan-act-reflect``) in litellm's map. Process-wide, idempotent."""
    names = [models] if isinstance(models, str) else list(models)
    litellm.register_model({name: {
        "input_cost_per_token": input_per_million / 1e6, "output_cost_per_token": output_per_million / 1e6,
        "cache_read_input_token_cost": cached_input_per_million / 1e6,
        "litellm_provider": name.split("/", 1)[0] if "/" in name else "openai", "mode": "chat"} for name in names})


class LiteLLMTokenCounter:
    """The TokenCounter port on litellm: each model's tokenizer (``litellm.token_counter``, OpenAI's message
    and tool overheads included) and input limit (litellm's model map). The core counts a conversation one
    message at a time, step after step, so counts are kept (a bounded cache; messages never change)."""

    def __init__(self, *, cache_size: int = 8192) -> None:
        self.cache_size = cache_size
        self._counts: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, *, model: str, messages: Sequence[Message] = (), tools: Sequence[ToolDefinition] = ()) -> int:
        """Input tokens of a request to ``model`` with these messages and tool definitions (an attachment
        counted by the core's estimate for its kind: its bytes are not read to count)."""
        wire_messages = [openai_message(replace(m, attachments=()) if m.attachments else m) for m in messages]
        wire_tools = [openai_tool(t) for t in tools]
        # keyed by a digest: a kept count costs a few bytes however long its messages
        attached = [[part.media_type for part in m.attachments] for m in messages]
        key = (model, hashlib.sha256(json.dumps([wire_messages, wire_tools, attached], sort_keys=True,
                                                separators=(",", ":")).encode()).digest())
        with self._lock:
            cached = self._counts.get(key)
            if cached is not None:
                self._counts.move_to_end(key)
                return cached
        counted = int(litellm.token_counter(model=model, messages=wire_messages, tools=wire_tools or None))
        counted += attachment_tokens(messages)
        with self._lock:
            self._counts[key] = counted
            while len(self._counts) > self.cache_size:
                self._counts.popitem(last=False)
        return counted

    def input_limit(self, model: str) -> int | None:
        """``model``'s input limit from litellm's model map; None for a model the map does not know."""
        return _input_limit(model)


@functools.lru_cache(maxsize=256)
def _input_limit(model: str) -> int | None:
    try:
        info = litellm.get_model_info(model)
    except Exception:  # litellm raises several unrelated types for a model missing from its map
        return None
    limit = info.get("max_input_tokens") or info.get("max_tokens")
    return int(limit) if limit else None


@functools.lru_cache(maxsize=256)
def max_output_tokens(model: str) -> int | None:
    """The most output tokens ``model`` may produce, from litellm's model map; None when the map does not say."""
    try:
        info = litellm.get_model_info(model)
    except Exception:  # litellm raises several unrelated types for a model missing from its map
        return None
    limit = info.get("max_output_tokens")
    return int(limit) if limit else None


class LiteLLMPricing:
    """The Pricing port (data_plane/spending.py) on litellm's price map: the same prices ``cost_usd`` settles at."""

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        return cost_usd(model, input_tokens, output_tokens, 0)

    def max_output_tokens(self, model: str) -> int | None:
        return max_output_tokens(model)
