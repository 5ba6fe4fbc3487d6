"""Each LLM call's context, fitted into a token budget. Pure: the shell passes the token counter in.

A model request is one system message, the tools selected for the call and the conversation's recent
messages. The system message holds, in order: the agent's instructions and the node's, the pinned facts,
the recalled memories (added by the shell with ``with_memories``, in a share of the budget kept for them)
and the summary of the earlier conversation. The budget is the model's input limit (or the agent's
``context.max_input_tokens``) minus the tokens reserved for the reply.

When the messages after the summary do not fit, the oldest of them are folded into the summary first, by a
model call of its own (``SummaryNeeded``); the run's state keeps the result (``RunState.summary``) and the
call that needed it goes ahead in the next step. The summary takes in enough that the rest fills at most
half of the room left (so the next turns do not summarise again at once), never the last
``min_recent_messages`` and never a cut between an assistant's tool calls and their results. A message too
big to fit even then is truncated with a marker saying so. When the instructions, pinned facts and tools
alone do not fit, the call is refused (``Overflow``: the run fails with ``context_overflow``) instead of
reaching the provider.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from data_plane.runtime.core.messages import Message, ToolCall, ToolDefinition
from data_plane.runtime.core.ports import ModelRequest, RecallRequest, TokenCounter
from data_plane.runtime.core.spec import DEFAULT_MAX_INPUT_TOKENS, ContextSettings
from data_plane.runtime.core.state import RunState, Summary

T = TypeVar("T")

# The key of the summarising model call among a step's commands (no graph node's key starts with "@").
SUMMARY_KEY = "@context-summary"
# Starts a summarising request's system message: the scripted model server answers those with a summary.
SUMMARY_MARKER = "[agentplane:summarise]"
SUMMARY_PROMPT = (
    SUMMARY_MARKER + " You keep the running summary of a conversation between a user and an AI agent, so that "
    "the agent can carry on when older messages leave its context. Fold the previous summary and the messages "
    "below into one updated summary: the user's goals and preferences, facts and decisions, tool results that "
    "still matter, and open questions. Write at most {tokens} tokens. Answer with the summary only.")
PREVIOUS_SUMMARY = "Previous summary:"
NEW_MESSAGES = "Messages to fold in:"
# How the summary is introduced to the model. The counts tell it how much came before; the scripted model
# server reads the number of replies to know which turn of its scenario a conversation is at.
SUMMARY_HEADING = "Summary of the earlier conversation (its first {messages} messages, {replies} of them your replies):"
SUMMARY_HEADING_PATTERN = re.compile(
    r"Summary of the earlier conversation \(its first (\d+) messages, (\d+) of them your replies\):")
PINNED_HEADING = "Pinned facts:"
MEMORIES_HEADING = "Relevant memories:"
TRUNCATED = ("[truncated by Agentplane: this message had {tokens} tokens, more than the context budget allows; "
             "only its beginning is kept]")
MEMORY_TRUNCATED = "[truncated]"
MEMORY_SHARE = 4  # recalled memories take at most a quarter of the budget
_SUMMARY_SLACK = 8  # a message's own overhead: a summary this much over its size is not cut


# What an attachment costs in a model's context, estimated (the bytes are not read to count): an image as
# OpenAI prices a high-detail 1024x1024 one, an audio clip as about a minute of speech or its transcript.
IMAGE_TOKENS = 765
AUDIO_TOKENS = 1000


def attachment_tokens(messages: Sequence[Message]) -> int:
    return sum(IMAGE_TOKENS if part.kind == "image" else AUDIO_TOKENS for m in messages for part in m.attachments)


class KeptSizes:
    """Sizes already measured, kept by the identity of what was measured (messages are immutable): a run's
    conversation is measured again at every step, and its messages stay the same objects from one step to
    the next, so each is measured once. Bounded (a table is emptied when full). A kept size holds its
    object, so an identity cannot be reused while it is kept. Dictionary operations are atomic, so threads
    may share one. Only for objects that live on anyway (a conversation's messages, their tool calls): a
    temporary one kept here would be held until the table empties."""

    def __init__(self, limit: int = 8192) -> None:
        self.limit = limit
        self._tables: dict[str, tuple[dict[int, object], dict[int, int]]] = {}

    def sizes(self, objects: Sequence[T], tag: str, measure: Callable[[T], int]) -> list[int]:
        """``measure`` of each object (``tag`` names the measure), kept from an earlier call when there is one."""
        table = self._tables.get(tag)
        if table is None:
            table = self._tables.setdefault(tag, ({}, {}))
        kept, sizes = table
        out = []
        for item in objects:
            key = id(item)
            if kept.get(key) is item:
                out.append(sizes[key])
                continue
            size = measure(item)
            if len(kept) >= self.limit:
                kept.clear()
                sizes.clear()
            sizes[key] = size
            kept[key] = item
            out.append(size)
        return out


class EstimatedTokens:
    """A TokenCounter without a tokenizer: about four characters a token plus each message's overhead (the
    scripted model server's estimate). For tests and offline runs; production counts with litellm."""

    def __init__(self) -> None:
        self._calls = KeptSizes()  # a tool call's JSON length, kept: messages share them, even when copied

    def count(self, *, model: str, messages: Sequence[Message] = (), tools: Sequence[ToolDefinition] = ()) -> int:
        characters = sum(len(m.content) for m in messages)
        for message in messages:
            if message.tool_calls:
                characters += sum(self._calls.sizes(message.tool_calls, "call", _call_characters))
        characters += sum(len(json.dumps(tool.to_json())) for tool in tools)
        return 3 + 4 * len(messages) + (characters + 3) // 4 + attachment_tokens(messages)

    def input_limit(self, model: str) -> int | None:
        return None


def _call_characters(call: ToolCall) -> int:
    return len(call.name) + len(json.dumps(call.arguments))


@dataclass(frozen=True)
class Meter:
    """What the core measures contexts with: the shell's token counter, and whether the shell adds recalled
    memories to model calls (then the core keeps them a share of the budget)."""

    counter: TokenCounter
    recalls_memories: bool = False
    # each message's and tool set's tokens, measured once (the counter is deterministic)
    sizes: KeptSizes = field(default_factory=KeptSizes, compare=False, repr=False)


ESTIMATE = Meter(counter=EstimatedTokens())


@dataclass(frozen=True)
class SummaryNeeded:
    """The call must wait for ``request``, which folds ``messages[start:upto]`` into the run's summary."""

    request: ModelRequest
    start: int
    upto: int


@dataclass(frozen=True)
class Overflow:
    """The call cannot fit its budget; the run fails with ``context_overflow`` and this message."""

    message: str


class _Sizer:
    """Token costs for one model: a request's fixed part, one message, a set of tool definitions."""

    def __init__(self, counter: TokenCounter, model: str, kept: KeptSizes | None = None) -> None:
        self.counter, self.model, self.kept = counter, model, kept
        self.empty = counter.count(model=model)

    def message(self, message: Message) -> int:
        return self.counter.count(model=self.model, messages=(message,)) - self.empty

    def conversation(self, messages: Sequence[Message]) -> list[int]:
        """Each message's tokens: a run's messages, measured once each (the counter is deterministic)."""
        if self.kept is None:
            return [self.message(m) for m in messages]
        return self.kept.sizes(messages, self.model, self.message)

    def tools(self, tools: Sequence[ToolDefinition]) -> int:
        return self.counter.count(model=self.model, tools=tools) - self.empty if tools else 0

    def system(self, text: str) -> int:
        return self.message(Message(role="system", content=text)) if text else 0


def conversation_tokens(state: RunState, *, model: str, meter: Meter) -> int:
    """The tokens of the conversation a call sends (the messages after the summary, and the summary), counted
    for ``model``: the input size a routing rule looks at. Each message is measured once (kept)."""
    start = state.summary.message_count if state.summary else 0
    size = _Sizer(meter.counter, model, meter.sizes)
    summary = size.system(_summary_section(state.summary, state.messages)) if state.summary else 0
    return size.empty + summary + sum(size.conversation(state.messages[start:]))


def input_limit(settings: ContextSettings, models: Sequence[str], counter: TokenCounter) -> int:
    """The input tokens a call may use: the agent's setting, else the smallest known limit of its models."""
    if settings.max_input_tokens is not None:
        return settings.max_input_tokens
    known = [limit for model in models if (limit := counter.input_limit(model))]
    return min(known) if known else DEFAULT_MAX_INPUT_TOKENS


def fit(draft: ModelRequest, *, state: RunState, instructions: str, settings: ContextSettings,
        meter: Meter) -> ModelRequest | SummaryNeeded | Overflow:
    """``draft`` (models, tools, options) with its messages assembled within the budget; or the summary the
    conversation needs first; or why it cannot fit. Deterministic for a deterministic counter."""
    size = _Sizer(meter.counter, draft.models[0], meter.sizes)
    limit = input_limit(settings, draft.models, meter.counter)
    budget = limit - settings.reserve_output_tokens
    base = _join(instructions, _pinned_section(settings.pinned_facts))
    fixed = size.empty + size.tools(draft.tools) + size.system(base)
    if fixed > budget:
        return Overflow(f"The instructions, pinned facts and {len(draft.tools)} tool definitions need {fixed} tokens, "
                        f"more than the context budget of {budget} ({limit} input tokens minus "
                        f"{settings.reserve_output_tokens} reserved for the reply). Shorten them, offer fewer tools "
                        "(max_tools_per_call) or raise context.max_input_tokens.")
    query, memory = "", 0
    if meter.recalls_memories and settings.memory_limit:  # looked for only when memories are recalled
        query = next((m.content for m in reversed(state.messages) if m.role == "user" and m.content), "")
        if query:
            memory = max(0, min(settings.memory_max_tokens, budget // MEMORY_SHARE, budget - fixed))
    summary = state.summary
    start = summary.message_count if summary else 0
    system = _join(base, _summary_section(summary, state.messages))
    room = budget - fixed - memory - (size.system(system) - size.system(base))
    tail = state.messages[start:]
    costs = size.conversation(tail)
    truncated = 0
    if sum(costs) > room:
        # what a new summary of at most summary_max_tokens would leave for the messages after it
        heading = _join(base, SUMMARY_HEADING.format(messages=len(state.messages), replies=len(state.messages)))
        room_after = (budget - fixed - memory - (size.system(heading) - size.system(base))
                      - settings.summary_max_tokens)
        upto = _cut(state.messages, start, costs, settings.min_recent_messages, room_after // 2)
        if upto is not None:
            return _summary_request(draft, state=state, start=start, upto=upto, settings=settings, limit=limit,
                                    size=size)
        fitted = _fit_messages(tail, room, size, costs)
        if fitted is None:
            return Overflow(f"The last {len(tail)} messages do not fit in the {room} tokens the context budget of "
                            f"{budget} leaves for them, even truncated. Raise context.max_input_tokens or lower "
                            "context.min_recent_messages.")
        cut, truncated = fitted  # the same positions: a cut message is a new one, measured (not kept)
        costs = [cost if kept is message else size.message(kept) for message, kept, cost in zip(tail, cut, costs)]
        tail = cut
    messages = ((Message(role="system", content=system),) if system else ()) + tuple(tail)
    # The request's tokens as the fitting counted them: its fixed part, the system message and each message's
    # kept size. Counting the whole request again would tokenize the whole conversation at every step (with
    # litellm's tokenizers, 21 ms for 300 messages of 2 KB, growing with the conversation). The sum can be a
    # few tokens over a count of the whole request, which shares some overheads (litellm: 4 fewer with tools
    # and a system message; the estimate rounds once instead of per message): the side a budget wants.
    context = {"tokens": size.empty + size.tools(draft.tools) + size.system(system) + sum(costs),
               "budget": budget, "summarised_messages": start, "messages": len(tail),
               "truncated_messages": truncated}
    recall = RecallRequest(query=query, limit=settings.memory_limit, max_tokens=memory, offset=len(base)) \
        if memory > 0 else None
    return replace(draft, messages=messages, metadata={**draft.metadata, "context": context}, recall=recall)


def summary_from_reply(text: str, *, upto: int, settings: ContextSettings, model: str,
                       counter: TokenCounter) -> Summary:
    """The run's new summary from the summarising call's reply, cut (visibly) to summary_max_tokens."""
    size = _Sizer(counter, model)
    message = Message(role="assistant", content=text.strip())
    tokens = size.message(message)
    if tokens > settings.summary_max_tokens + _SUMMARY_SLACK:
        message = _truncated(message, settings.summary_max_tokens, size, tokens, MEMORY_TRUNCATED)
    return Summary(text=message.content, message_count=upto)


def with_memories(request: ModelRequest, memories: Sequence[str], counter: TokenCounter) -> ModelRequest:
    """``request`` with the recalled ``memories`` as a "Relevant memories" section of its system message, as
    many as fit the share its ``recall`` kept for them (the first that does not fit is cut, the rest left)."""
    recall = request.recall
    if recall is None:
        return request
    size = _Sizer(counter, request.models[0])
    kept: list[str] = []
    for memory in memories[:recall.limit]:
        text = " ".join(memory.split())
        if not text:
            continue
        if size.system(_memories_section([*kept, text])) <= recall.max_tokens:
            kept.append(text)
            continue
        room = recall.max_tokens - size.system(_memories_section([*kept, "…"]))
        if room > 16:  # worth a beginning
            cut = _truncated(Message(role="system", content=text), room, size, size.system(text), MEMORY_TRUNCATED)
            if size.system(_memories_section([*kept, cut.content])) <= recall.max_tokens:
                kept.append(cut.content)
        break
    context = dict(request.metadata.get("context") or {})
    context["memories"] = len(kept)
    if not kept:
        return replace(request, metadata={**request.metadata, "context": context})
    messages = list(request.messages)
    section = _memories_section(kept)
    if messages and messages[0].role == "system":
        content = messages[0].content
        before, after = content[:recall.offset], content[recall.offset:]
        messages[0] = replace(messages[0], content=_join(before.rstrip(), section, after.lstrip()))
        added = size.system(messages[0].content) - size.system(content)
    else:
        messages.insert(0, Message(role="system", content=section))
        added = size.system(section)
    # fit's count (fit alone asks for recalls) plus what the memories added: the conversation is not counted again
    context["tokens"] += added
    return replace(request, messages=tuple(messages), metadata={**request.metadata, "context": context})


# --- Pieces -------------------------------------------------------------------------------------------

def _join(*parts: str) -> str:
    return "\n\n".join(part for part in parts if part)


def _pinned_section(facts: Sequence[str]) -> str:
    return PINNED_HEADING + "\n" + "\n".join(f"- {fact}" for fact in facts) if facts else ""


def _memories_section(memories: Sequence[str]) -> str:
    return MEMORIES_HEADING + "\n" + "\n".join(f"- {memory}" for memory in memories)


def _summary_section(summary: Summary | None, messages: Sequence[Message]) -> str:
    if summary is None:
        return ""
    replies = sum(1 for m in messages[:summary.message_count] if m.role == "assistant")
    return SUMMARY_HEADING.format(messages=summary.message_count, replies=replies) + "\n" + summary.text


def _cut(messages: Sequence[Message], start: int, costs: Sequence[int], min_recent: int, target: int) -> int | None:
    """Where a new summary should end: the first cut after which the rest costs at most ``target``, else the
    latest allowed one; None when nothing more may be summarised. A cut never leaves a tool result without
    the assistant message that called it, nor takes the last ``min_recent`` messages."""
    if target <= 0:
        return None
    latest = len(messages) - min_recent
    cuts = [k for k in range(start + 1, latest + 1) if messages[k].role != "tool"]
    if not cuts:
        return None
    remaining = sum(costs)
    spent = 0
    for k in range(start, latest + 1):
        if k in cuts and remaining - spent <= target:
            return k
        spent += costs[k - start]
    return cuts[-1]


def _summary_request(draft: ModelRequest, *, state: RunState, start: int, upto: int, settings: ContextSettings,
                     limit: int, size: _Sizer) -> SummaryNeeded | Overflow:
    """The call folding the previous summary and ``messages[start:upto]`` into a new summary. Its own input
    fits the model too: when the messages do not, fewer are summarised (the next summary takes the rest), and
    a first message too long on its own is truncated in the transcript."""
    prompt = Message(role="system", content=SUMMARY_PROMPT.format(tokens=settings.summary_max_tokens))
    previous = state.summary.text if state.summary else "(none yet)"
    head = f"{PREVIOUS_SUMMARY}\n{previous}\n\n{NEW_MESSAGES}\n"
    room = (limit - max(settings.reserve_output_tokens, settings.summary_max_tokens) - size.empty
            - size.message(prompt) - size.message(Message(role="user", content=head)))
    lines = [Message(role="user", content=_transcript_line(m)) for m in state.messages[start:upto]]
    costs = [size.message(line) for line in lines]
    cuts = [k for k in range(start + 1, upto + 1) if k == upto or state.messages[k].role != "tool"]
    while len(cuts) > 1 and sum(costs[:upto - start]) > room:
        cuts.pop()
        upto = cuts[-1]
    lines, costs = lines[:upto - start], costs[:upto - start]
    fitted = _fit_messages(lines, room, size, costs)
    if fitted is None:
        return Overflow(f"Messages {start} to {upto - 1} cannot be summarised within the model's {limit} input "
                        "tokens. Raise context.max_input_tokens or lower context.summary_max_tokens.")
    transcript = "\n".join(line.content for line in fitted[0])
    request = ModelRequest(models=draft.models, messages=(prompt, Message(role="user", content=head + transcript)),
                           max_output_tokens=settings.summary_max_tokens, timeout_seconds=draft.timeout_seconds,
                           metadata={"node": draft.metadata.get("node"), "step": draft.metadata.get("step"),
                                     "purpose": "summary", "summarises": [start, upto],
                                     **({"route": draft.metadata["route"]} if "route" in draft.metadata else {})})
    return SummaryNeeded(request=request, start=start, upto=upto)


def _transcript_line(message: Message) -> str:
    speaker = f"{message.role} ({message.name})" if message.name else message.role
    calls = "; ".join(f"called {call.name}({json.dumps(call.arguments, sort_keys=True)})"
                      for call in message.tool_calls)
    return f"{speaker}: " + " ".join(part for part in (" ".join(message.content.split()), calls) if part)


def _fit_messages(messages: Sequence[Message], room: int, size: _Sizer, costs: Sequence[int]
                  ) -> tuple[tuple[Message, ...], int] | None:
    """``messages`` within ``room`` tokens, the biggest truncated first (visibly), with how many were; None
    when even that cannot make them fit."""
    excess = sum(costs) - room
    out = list(messages)
    truncated = 0
    for index in sorted(range(len(out)), key=lambda i: (-costs[i], i)):
        if excess <= 0:
            break
        if not out[index].content:
            continue
        shorter = _truncated(out[index], max(costs[index] - excess, 0), size, costs[index],
                             TRUNCATED.format(tokens=costs[index]))
        saved = costs[index] - size.message(shorter)
        if saved > 0:
            out[index], excess, truncated = shorter, excess - saved, truncated + 1
    return (tuple(out), truncated) if excess <= 0 else None


def _truncated(message: Message, target: int, size: _Sizer, tokens: int, marker: str) -> Message:
    """``message`` with the beginning of its content that fits ``target`` tokens, then ``marker``; only the
    marker when nothing fits."""
    content = message.content
    characters, current = len(content), tokens
    while True:
        # shrink in proportion to the excess (a little more, so it converges in a step or two)
        characters = min(characters - 1, int(characters * target / max(current, 1) * 0.9))
        if characters <= 0:
            return replace(message, content=marker)
        candidate = replace(message, content=content[:characters].rstrip() + "\n" + marker)
        current = size.message(candidate)
        if current <= target:
            return candidate
