"""Our messages and tools in the OpenAI chat format: what litellm takes (and translates for other
providers) and what our model server speaks. No litellm import here, so in-process users stay light."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from data_plane.runtime.core.messages import Message, ToolDefinition


def openai_message(message: Message, *, parts: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Our message in the OpenAI chat format litellm takes (and translates for other providers). A message's
    attachments become the content parts ``parts`` holds for them by id (adapters.media renders them): the
    text first, then each in order."""
    if message.attachments:
        if parts is None:
            raise ValueError("a message with attachments needs their rendered parts (see adapters.media)")
        content = ([{"type": "text", "text": message.content}] if message.content else []) + [
            parts[part.id] for part in message.attachments]
        return {"role": message.role, "content": content}
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {"role": "assistant", "content": message.content or None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
            for call in message.tool_calls]}
    # ``name`` is left out: OpenAI restricts it to [A-Za-z0-9_-] and our agent names are free text
    return {"role": message.role, "content": message.content}


def openai_tool(tool: ToolDefinition) -> dict[str, Any]:
    return {"type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.input_schema}}
