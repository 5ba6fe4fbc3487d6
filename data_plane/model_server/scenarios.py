"""Scripted scenarios: what the model server answers, chosen statelessly from each request.

A scenario is JSON: ``{"name": ..., "turns": [turn, ...], "repeat_last": bool}``. The turn played for a
request is the number of assistant messages in it, so a retried or replayed conversation gets the same
answer. A turn is ``{"content": "..."}`` and/or ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``,
with optional ``first_token_delay_ms``, ``chunk_delay_ms``, ``cached_tokens``, ``omit_usage`` (a server
that ignores ``stream_options.include_usage``) and
``fail: {"status": 429, "times": 2, "message": ..., "code": ..., "after_chunks": N}`` (without ``times``
the turn fails every time; with ``after_chunks`` the stream is cut after N chunks instead of answering
with an error status). ``{{last_user}}`` and ``{{last_tool}}`` in content are replaced from the request.

The runtime's summarising calls (a system message starting with ``[agentplane:summarise]``, see
data_plane/runtime/core/context.py) are answered by the ``summary`` scenario, whatever the model name:
a deterministic summary, one point per summarised message, within the request's ``max_tokens``. A request
whose system message carries a summary counts the replies it summarises among its turns, so a scenario
goes on where the summarised conversation was.
"""

from __future__ import annotations

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
class Scenario:
    name: str
    turns: tuple[Turn, ...]
    repeat_last: bool = False

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
        return cls(name=name, turns=tuple(_turn(name, i, t) for i, t in enumerate(turns)), repeat_last=repeat_last)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "repeat_last": self.repeat_last, "turns": [_turn_json(t) for t in self.turns]}

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


def render(template: str, messages: Sequence[Mapping[str, Any]]) -> str:
    if "{{" not in template:
        return template
    return (template.replace("{{last_user}}", last_text(messages, "user"))
            .replace("{{last_tool}}", last_text(messages, "tool")))


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

    def stats(self) -> dict[str, Any]:
        return {"requests_per_scenario": dict(self.requests), "failures_per_scenario": dict(self.failures),
                "total_requests": sum(self.requests.values())}

    def plan(self, body: Mapping[str, Any]) -> Plan:
        """Choose the scenario and turn for a chat request and count it. Raises UnknownScenario."""
        messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
        if is_summary_request(messages):
            return self._summary_plan(body, messages)
        name = requested_name(body, self.scenarios)
        scenario = self.scenarios.get(name) or Scenario(name=name, turns=(Turn(content="You said: {{last_user}}"),),
                                                         repeat_last=True)
        index = turn_index(messages)
        turn = scenario.turn_at(index)
        conversation = conversation_key(messages)
        self.requests[name] += 1
        failure = self._failure_for(name, conversation, turn.fail)
        content = render(turn.content or "", messages)
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
