"""Which tools an LLM call is offered when an agent has more than it should send at once.

An agent can be given hundreds of tools (a few MCP servers' worth); sending every definition with every
call costs tokens and confuses models. Above ``limit`` tools, a call is offered the ``limit`` most relevant
ones: tools the run has already called stay (the conversation refers to them), then the best matches of
the conversation's recent text (the latest message weighing most) against each tool's name and description
(word overlap weighted by how rare the word is among the tools), ties broken by name. Deterministic: the same
state gives the same selection, so a replayed step sends the same request.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from data_plane.runtime.core.messages import Message, ToolDefinition

_WORD = re.compile(r"[a-z0-9]+")
_RECENT_MESSAGES = 6


def _words(text: str) -> list[str]:
    # "toolbox__get_weather" and "getWeather" both give get, weather
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text).replace("_", " ")
    return [word for word in _WORD.findall(spaced.lower()) if len(word) > 1]


def select_tools(tools: Sequence[ToolDefinition], messages: Sequence[Message], *, limit: int
                 ) -> tuple[ToolDefinition, ...]:
    """At most ``limit`` of ``tools``, in their original order; all of them when there are no more."""
    if limit <= 0 or len(tools) <= limit:
        return tuple(tools)
    used = {call.name for message in messages for call in message.tool_calls}
    # the recent conversation, the latest message counting most (the task at hand right now)
    recent = [m for m in messages[-_RECENT_MESSAGES:] if m.role in ("user", "assistant") and m.content]
    query: Counter[str] = Counter()
    for position, message in enumerate(recent):
        weight = 3 if position == len(recent) - 1 else 1
        for word in set(_words(message.content)):
            query[word] += weight
    documents = {tool.name: Counter(_words(f"{tool.name} {tool.description}")) for tool in tools}
    frequency = Counter(word for document in documents.values() for word in document)
    count = len(tools)

    def score(tool: ToolDefinition) -> float:
        document = documents[tool.name]
        return sum(query[word] * math.log(1 + count / frequency[word]) for word in document if word in query)

    ranked = sorted(tools, key=lambda tool: (tool.name not in used, -score(tool), tool.name))
    chosen = {tool.name for tool in ranked[:limit]}
    return tuple(tool for tool in tools if tool.name in chosen)
