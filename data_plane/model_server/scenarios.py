"""Scripted scenarios: what the model server answers, chosen statelessly from each request.

A scenario is JSON: ``{"name": ..., "turns": [turn, ...], "repeat_last": bool}``. The turn played for a
request is the number of assistant messages in it, so a retried or replayed conversation gets the same
answer. A turn is ``{"content": "..."}`` and/or ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``,
A scenario may also have ``"branches": [{"if_system_contains": "text", "if_user_contains": "text", "turns":
[...], "repeat_last": bool}]``: the first branch whose conditions all hold (a system message contains the
one text, the latest user message the other) is played instead (a model that answers differently with a
lesson, a memory or a marker such as ``[purpose:lesson]`` in its context). With optional ``first_token_delay_ms``, ``chunk_delay_ms``, ``cached_tokens``, ``omit_usage`` (a server
that ignores ``stream_options.include_usage``) and
``fail: {"status": 429, "times": 2, "message": ..., "code": ..., "after_chunks": N}`` (without ``times``
the turn fails every time; with ``after_chunks`` the stream is cut after N chunks instead of answering
with an error status). ``{{last_user}}`` and ``{{last_tool}}`` in content are replaced from the request, and
so are what the request's user messages carry besides text: ``{{images}}`` (how many ``image_url`` parts),
``{{image_types}}`` (their media types, from their data URLs, comma-separated), ``{{audio}}`` (how many
``input_audio`` parts) and ``{{audio_formats}}``. A part that is malformed (a data URL that is not base64, an
``input_audio`` in a format the chat API does not take) is refused with a 400, as OpenAI refuses it.

Transcription (``/v1/audio/transcriptions``) is deterministic: the text registered for the audio's SHA-256
(``register_transcript``), else one derived from the audio's size and digest.

The runtime's summarising calls (a system message starting with ``[agentplane:summarise]``, see
data_plane/runtime/core/context.py) are answered by the ``summary`` scenario, whatever the model name:
a deterministic summary, one point per summarised message, within the request's ``max_tokens``. A request
whose system message carries a summary counts the replies it summarises among its turns, so a scenario
goes on where the summarised conversation was.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_plane.runtime.core.context import NEW_MESSAGES, SUMMARY_HEADING_PATTERN, SUMMARY_MARKER

BUILTIN_DIR = Path(__file__).with_name("scenarios")
DEFAULT_SCENARIO = "echo"
SCENARIO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
SYSTEM_MARKER = re.compile(r"\[scenario:([A-Za-z0-9][A-Za-z0-9_.\-]*)\]")
MODEL_PREFIX = "scripted/"
USER_PREFIX = "scenario:"
SUMMARY_SCENARIO = "summary"
SUMMARY_POINT_CHARACTERS = 80


class InvalidScenario(ValueError):
    """A scenario document that does not follow the format in this module's docstring."""


class UnknownScenario(LookupError):
    """A request named a scenario (prefix, marker or ``user``) that is not registered."""


class InvalidRequest(ValueError):
    """A request the chat API refuses (a malformed content part): a 400."""


@dataclass(frozen=True)
class ScriptedToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class InjectedFailure:
    status: int
    times: int | None = None  # None: every request fails
    message: str | None = None
    code: str | None = None
    after_chunks: int | None = None  # cut the stream after this many chunks instead of an error status


@dataclass(frozen=True)
class Turn:
    content: str | None = None
    tool_calls: tuple[ScriptedToolCall, ...] = ()
    first_token_delay_ms: int = 0
    chunk_delay_ms: int = 0
    cached_tokens: int = 0
    omit_usage: bool = False
    fail: InjectedFailure | None = None


@dataclass(frozen=True)
class Branch:
    if_system_contains: str
    if_user_contains: str
    scenario: Scenario

    def holds(self, system: str, user: str) -> bool:
        return self.if_system_contains in system and self.if_user_contains in user


@dataclass(frozen=True)
class Scenario:
    name: str
    turns: tuple[Turn, ...]
    repeat_last: bool = False
    branches: tuple[Branch, ...] = ()

    @classmethod
    def from_json(cls, data: object) -> Scenario:
        """Parse and validate a scenario document. Raises InvalidScenario naming the bad field."""
        if not isinstance(data, dict):
            raise InvalidScenario("a scenario is a JSON object with 'name' and 'turns'")
        name = data.get("name")
        if not isinstance(name, str) or not SCENARIO_NAME.match(name):
            raise InvalidScenario(f"'name' must match {SCENARIO_NAME.pattern}, got {name!r}")
        turns = data.get("turns")
        if not isinstance(turns, list) or not turns:
            raise InvalidScenario(f"scenario {name!r}: 'turns' must be a non-empty list")
        repeat_last = data.get("repeat_last", False)
        if not isinstance(repeat_last, bool):
            raise InvalidScenario(f"scenario {name!r}: 'repeat_last' must be true or false")
        branches = []
        for index, raw in enumerate(data.get("branches") or ()):
            conditions = {key: raw.get(key, "") for key in ("if_system_contains", "if_user_contains")} \
                if isinstance(raw, dict) else {}
            if not conditions or not all(isinstance(v, str) for v in conditions.values()) \
                    or not any(conditions.values()):
                raise InvalidScenario(f"scenario {name!r}: branches.{index} needs 'if_system_contains' and/or "
                                      "'if_user_contains' (text) and 'turns'")
            branch = cls.from_json({"name": name, "turns": raw.get("turns"), "repeat_last": raw.get("repeat_last", False)})
            branches.append(Branch(scenario=branch, **conditions))
        return cls(name=name, turns=tuple(_turn(name, i, t) for i, t in enumerate(turns)), repeat_last=repeat_last,
                   branches=tuple(branches))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "repeat_last": self.repeat_last,
                                "turns": [_turn_json(t) for t in self.turns]}
        if self.branches:
            data["branches"] = [{"if_system_contains": b.if_system_contains, "if_user_contains": b.if_user_contains,
                                 "repeat_last": b.scenario.repeat_last,
                                 "turns": [_turn_json(t) for t in b.scenario.turns]} for b in self.branches]
        return data

    def for_request(self, messages: Sequence[Mapping[str, Any]]) -> Scenario:
        """This scenario, or the first branch whose text is in one of the request's system messages."""
        if not self.branches:
            return self
        system = "\n".join(message_text(m) for m in messages if m.get("role") in ("system", "developer"))
        user = last_text(messages, "user")
        return next((b.scenario for b in self.branches if b.holds(system, user)), self)

    def turn_at(self, index: int) -> Turn:
        """The turn for a request with ``index`` assistant messages; past the end, the last or a notice."""
        if index < len(self.turns):
            return self.turns[index]
        if self.repeat_last:
            return self.turns[-1]
        return Turn(content=f"(scenario {self.name} has no more turns)")


def _turn(scenario: str, index: int, data: object) -> Turn:
    where = f"scenario {scenario!r} turn {index}"
    if not isinstance(data, dict):
        raise InvalidScenario(f"{where}: a turn is a JSON object")
    unknown = set(data) - {"content", "tool_calls", "first_token_delay_ms", "chunk_delay_ms", "cached_tokens",
                           "omit_usage", "fail"}
    if unknown:
        raise InvalidScenario(f"{where}: unknown fields {sorted(unknown)}")
    content = data.get("content")
    if content is not None and not isinstance(content, str):
        raise InvalidScenario(f"{where}: 'content' must be a string")
    calls = data.get("tool_calls") or []
    if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"]
            and isinstance(c.get("arguments", {}), dict) for c in calls):
        raise InvalidScenario(f"{where}: 'tool_calls' must be a list of {{\"name\": str, \"arguments\": object}}")
    fail = data.get("fail")
    omit_usage = data.get("omit_usage", False)
    if not isinstance(omit_usage, bool):
        raise InvalidScenario(f"{where}: 'omit_usage' must be true or false")
    if content is None and not calls and fail is None:
        raise InvalidScenario(f"{where}: give 'content', 'tool_calls' or 'fail'")
    return Turn(content=content,
                tool_calls=tuple(ScriptedToolCall(name=c["name"], arguments=dict(c.get("arguments") or {}))
                                 for c in calls),
                first_token_delay_ms=_count(where, data, "first_token_delay_ms"),
                chunk_delay_ms=_count(where, data, "chunk_delay_ms"),
                cached_tokens=_count(where, data, "cached_tokens"), omit_usage=omit_usage,
                fail=None if fail is None else _failure(where, fail))


def _failure(where: str, data: object) -> InjectedFailure:
    if not isinstance(data, dict) or not isinstance(data.get("status"), int) or not 400 <= data["status"] <= 599:
        raise InvalidScenario(f"{where}: 'fail' must be {{\"status\": 400..599, \"times\": K}}")
    times = data.get("times")
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        raise InvalidScenario(f"{where}: 'fail.times' must be a positive integer (omit it to fail every time)")
    after = data.get("after_chunks")
    if after is not None and (not isinstance(after, int) or isinstance(after, bool) or after < 0):
        raise InvalidScenario(f"{where}: 'fail.after_chunks' must be a non-negative integer")
    for key in ("message", "code"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InvalidScenario(f"{where}: 'fail.{key}' must be a string")
    return InjectedFailure(status=data["status"], times=times, message=data.get("message"), code=data.get("code"),
                           after_chunks=after)


def _count(where: str, data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidScenario(f"{where}: '{key}' must be a non-negative integer")
    return value


def _turn_json(turn: Turn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if turn.content is not None:
        data["content"] = turn.content
    if turn.tool_calls:
        data["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in turn.tool_calls]
    for key in ("first_token_delay_ms", "chunk_delay_ms", "cached_tokens", "omit_usage"):
        if getattr(turn, key):
            data[key] = getattr(turn, key)
    if turn.fail is not None:
        data["fail"] = {k: v for k, v in vars(turn.fail).items() if v is not None}
    return data


def load_dir(directory: Path) -> list[Scenario]:
    """Every ``*.json`` scenario in ``directory``, sorted by file name. Raises InvalidScenario naming the file."""
    scenarios = []
    for path in sorted(directory.glob("*.json")):
        try:
            scenarios.append(Scenario.from_json(json.loads(path.read_text(encoding="utf-8"))))
        except (InvalidScenario, json.JSONDecodeError) as exc:
            raise InvalidScenario(f"{path}: {exc}") from exc
    return scenarios


# --- Reading a request -------------------------------------------------------------------------


def message_text(message: Mapping[str, Any]) -> str:
    """The text of an OpenAI message: a string, or the text parts of a content list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return ""


def last_text(messages: Sequence[Mapping[str, Any]], role: str) -> str:
    return next((message_text(m) for m in reversed(messages) if m.get("role") == role), "")


def turn_index(messages: Iterable[Mapping[str, Any]]) -> int:
    """The assistant messages of the conversation: those in the request, and those its summary stands for."""
    count = 0
    for message in messages:
        if message.get("role") == "assistant":
            count += 1
        elif message.get("role") in ("system", "developer"):
            summarised = SUMMARY_HEADING_PATTERN.search(message_text(message))
            count += int(summarised.group(2)) if summarised else 0
    return count


def is_summary_request(messages: Sequence[Mapping[str, Any]]) -> bool:
    return any(m.get("role") in ("system", "developer") and message_text(m).startswith(SUMMARY_MARKER)
               for m in messages)


def scripted_summary(messages: Sequence[Mapping[str, Any]], max_tokens: int | None) -> str:
    """The summary scenario's answer: the previous summary's points, then one point per new message (its
    first characters); beyond ``max_tokens`` the oldest points go first."""
    previous, _, new = last_text(messages, "user").partition(NEW_MESSAGES)
    points = [line for line in previous.splitlines() if line.startswith("- ")]
    points += [f"- {line.strip()[:SUMMARY_POINT_CHARACTERS]}" for line in new.splitlines() if line.strip()]
    while len(points) > 1 and max_tokens and estimate_tokens(len("\n".join(points))) > max_tokens:
        points.pop(0)
    return "\n".join(points) or "- (nothing to summarise)"


def conversation_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """A short stable hash of the request's messages: the identity of a conversation at one turn."""
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def estimate_tokens(characters: int) -> int:
    """About four characters a token, at least one: deterministic, like a tokenizer's order of magnitude."""
    return max(1, (characters + 3) // 4)


def prompt_characters(messages: Sequence[Mapping[str, Any]]) -> int:
    total = 0
    for message in messages:
        total += len(message_text(message))
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += len(str(function.get("name") or "")) + len(str(function.get("arguments") or ""))
    return total


INPUT_AUDIO_FORMATS = ("wav", "mp3")
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


@dataclass(frozen=True)
class MediaSeen:
    """The media parts of a request's user messages, as a model would receive them."""

    image_types: tuple[str, ...] = ()  # per image part: its data URL's media type ("url" for a link)
    audio_formats: tuple[str, ...] = ()  # per input_audio part: its format


def media_parts(messages: Sequence[Mapping[str, Any]]) -> MediaSeen:
    """Read and check the image and audio parts of the request's messages. Raises InvalidRequest."""
    images: list[str] = []
    audio: list[str] = []
    for position, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for index, part in enumerate(content):
            where = f"messages[{position}].content[{index}]"
            if not isinstance(part, dict):
                raise InvalidRequest(f"{where} must be an object with a 'type'.")
            if part.get("type") == "image_url":
                images.append(_image_type(where, part.get("image_url")))
            elif part.get("type") == "input_audio":
                audio.append(_audio_format(where, part.get("input_audio")))
    return MediaSeen(image_types=tuple(images), audio_formats=tuple(audio))


def _image_type(where: str, image: object) -> str:
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}.image_url.url is required.")
    if url.startswith(("http://", "https://")):
        return "url"
    match = _DATA_URL.match(url)
    if match is None or not match.group("type").startswith("image/"):
        raise InvalidRequest(f"{where}.image_url.url must be an http(s) URL or a data:image/...;base64, URL.")
    _decode(where, match.group("data"))
    return match.group("type")


def _audio_format(where: str, audio: object) -> str:
    if not isinstance(audio, dict) or audio.get("format") not in INPUT_AUDIO_FORMATS:
        raise InvalidRequest(f"{where}.input_audio.format must be one of {', '.join(INPUT_AUDIO_FORMATS)}.")
    _decode(where, audio.get("data"))
    return str(audio["format"])


def _decode(where: str, data: object) -> bytes:
    try:
        decoded = base64.b64decode(data if isinstance(data, str) else "", validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        raise InvalidRequest(f"{where}: the data is not valid, non-empty base64.")
    return decoded


def render(template: str, messages: Sequence[Mapping[str, Any]], media: MediaSeen | None = None) -> str:
    if "{{" not in template:
        return template
    media = media or MediaSeen()
    return (template.replace("{{last_user}}", last_text(messages, "user"))
            .replace("{{last_tool}}", last_text(messages, "tool"))
            .replace("{{images}}", str(len(media.image_types)))
            .replace("{{image_types}}", ", ".join(media.image_types) or "none")
            .replace("{{audio}}", str(len(media.audio_formats)))
            .replace("{{audio_formats}}", ", ".join(media.audio_formats) or "none"))


def derived_transcript(audio: bytes) -> str:
    """The transcript of audio nobody scripted: its size and digest, so the same audio reads the same."""
    return f"(audio of {len(audio)} bytes, sha256 {hashlib.sha256(audio).hexdigest()[:12]})"


def requested_name(body: Mapping[str, Any], known: Mapping[str, Scenario]) -> str:
    """The scenario a request asks for: model name, then a system-prompt marker, then ``user``, then echo.

    Raises UnknownScenario when the request names one explicitly (``scripted/x``, ``[scenario:x]``,
    ``user: scenario:x``) that is not registered; a plain model name that is no scenario falls through.
    """
    model = str(body.get("model") or "")
    if model.startswith(MODEL_PREFIX):
        return _known(model[len(MODEL_PREFIX):], known, f"model {model!r}")
    if model in known:
        return model
    for message in body.get("messages") or ():
        if isinstance(message, dict) and message.get("role") in ("system", "developer"):
            marker = SYSTEM_MARKER.search(message_text(message))
            if marker:
                return _known(marker.group(1), known, f"system marker [scenario:{marker.group(1)}]")
    user = body.get("user")
    if isinstance(user, str) and user.startswith(USER_PREFIX):
        return _known(user[len(USER_PREFIX):], known, f"user {user!r}")
    return DEFAULT_SCENARIO


def _known(name: str, known: Mapping[str, Scenario], source: str) -> str:
    if name not in known:
        raise UnknownScenario(f"{source} names scenario {name!r}, which is not registered; "
                              f"POST it to /admin/scenarios (registered: {', '.join(sorted(known))})")
    return name


# --- The server's memory -----------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as it goes on the wire


@dataclass(frozen=True)
class Plan:
    """What to send for one request: an injected failure, or the reply and its usage."""

    scenario: str
    turn: Turn
    conversation: str
    content: str
    tool_calls: tuple[PlannedToolCall, ...]
    prompt_tokens: int
    completion_tokens: int
    failure: InjectedFailure | None = None

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


class ScenarioBook:
    """The registered scenarios, the injected-failure counters and the request counts. One event loop owns it."""

    def __init__(self, scenarios: Iterable[Scenario] = ()) -> None:
        self.scenarios: dict[str, Scenario] = {}
        self.requests: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._failed: Counter[tuple[str, str]] = Counter()
        self.transcripts: dict[str, str] = {}  # audio's sha256 -> its scripted transcript
        self.transcriptions = 0
        for scenario in scenarios:
            self.register(scenario)

    def register(self, scenario: Scenario) -> None:
        """Add or replace a scenario; a replaced one starts with fresh failure counters."""
        self.scenarios[scenario.name] = scenario
        for key in [k for k in self._failed if k[0] == scenario.name]:
            del self._failed[key]

    def remove(self, name: str) -> bool:
        return self.scenarios.pop(name, None) is not None

    def reset_stats(self) -> None:
        self.requests.clear()
        self.failures.clear()
        self.transcriptions = 0

    def stats(self) -> dict[str, Any]:
        return {"requests_per_scenario": dict(self.requests), "failures_per_scenario": dict(self.failures),
                "total_requests": sum(self.requests.values()), "transcriptions": self.transcriptions}

    def register_transcript(self, sha256: str, text: str) -> None:
        """Script what transcribing the audio with this SHA-256 (hex) answers."""
        self.transcripts[sha256.lower()] = text

    def transcribe(self, audio: bytes) -> str:
        """The transcript of ``audio``: scripted for its digest, else derived from it. Counted."""
        self.transcriptions += 1
        return self.transcripts.get(hashlib.sha256(audio).hexdigest()) or derived_transcript(audio)

    def plan(self, body: Mapping[str, Any]) -> Plan:
        """Choose the scenario and turn for a chat request and count it. Raises UnknownScenario, InvalidRequest."""
        messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
        media = media_parts(messages)
        if is_summary_request(messages):
            return self._summary_plan(body, messages)
        name = requested_name(body, self.scenarios)
        scenario = self.scenarios.get(name) or Scenario(name=name, turns=(Turn(content="You said: {{last_user}}"),),
                                                         repeat_last=True)
        index = turn_index(messages)
        turn = scenario.for_request(messages).turn_at(index)
        conversation = conversation_key(messages)
        self.requests[name] += 1
        failure = self._failure_for(name, conversation, turn.fail)
        content = render(turn.content or "", messages, media)
        calls = tuple(PlannedToolCall(id=f"call_{index}_{i}_{conversation[:8]}", name=c.name,
                                      arguments=json.dumps(c.arguments, separators=(",", ":")))
                      for i, c in enumerate(turn.tool_calls))
        output_characters = len(content) + sum(len(c.name) + len(c.arguments) for c in calls)
        return Plan(scenario=name, turn=turn, conversation=conversation, content=content, tool_calls=calls,
                    prompt_tokens=estimate_tokens(prompt_characters(messages)),
                    completion_tokens=estimate_tokens(output_characters), failure=failure)

    def _summary_plan(self, body: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> Plan:
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        content = scripted_summary(messages, max_tokens if isinstance(max_tokens, int) else None)
        self.requests[SUMMARY_SCENARIO] += 1
        return Plan(scenario=SUMMARY_SCENARIO, turn=Turn(content=content), conversation=conversation_key(messages),
                    content=content, tool_calls=(), prompt_tokens=estimate_tokens(prompt_characters(messages)),
                    completion_tokens=estimate_tokens(len(content)))

    def _failure_for(self, name: str, conversation: str, fail: InjectedFailure | None) -> InjectedFailure | None:
        if fail is None:
            return None
        key = (name, conversation)
        if fail.times is not None and self._failed[key] >= fail.times:
            return None
        self._failed[key] += 1
        self.failures[name] += 1
        return fail


def builtin_book() -> ScenarioBook:
    """A book with the scenarios shipped in ``scenarios/*.json``."""
    return ScenarioBook(load_dir(BUILTIN_DIR))
