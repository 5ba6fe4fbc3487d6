"""Conversation values exchanged with models and tools. Frozen, JSON-round-trippable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolCall:
        return cls(id=data["id"], name=data["name"], arguments=dict(data.get("arguments") or {}))


@dataclass(frozen=True)
class AttachmentPart:
    """A file a message carries (an image, an audio clip), by reference: the bytes stay in object storage and
    are fetched at the model's edge, so checkpoints stay small."""

    id: str
    media_type: str

    @property
    def kind(self) -> str:
        """``image`` or ``audio``: the first half of the media type."""
        return self.media_type.split("/", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "media_type": self.media_type}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttachmentPart:
        return cls(id=data["id"], media_type=data["media_type"])


@dataclass(frozen=True)
class Message:
    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None  # the tool's name on a tool message; the agent's name on an assistant one
    attachments: tuple[AttachmentPart, ...] = ()  # content parts after the text, on a user message

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [call.to_json() for call in self.tool_calls]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            data["name"] = self.name
        if self.attachments:  # absent, not empty: messages without parts keep the format stored before parts
            data["attachments"] = [part.to_json() for part in self.attachments]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        # Called for every message of a conversation read back: no generator unless there is something in it.
        tool_calls, attachments = data.get("tool_calls"), data.get("attachments")
        return cls(
            role=data["role"],
            content=data.get("content") or "",
            tool_calls=tuple(ToolCall.from_json(c) for c in tool_calls) if tool_calls else (),
            tool_call_id=data.get("tool_call_id"),
            name=data.get("name"),
            attachments=tuple(AttachmentPart.from_json(p) for p in attachments) if attachments else (),
        )


@dataclass(frozen=True)
class Usage:
    """What one model call cost. ``cost_usd`` uses the provider's price map, cached input priced as cached."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempts: int = 1
    # When ``model`` is not the first model asked for (it failed: rate limited, 5xx, down): that first model.
    fell_back_from: str | None = None
    errors: tuple[str, ...] = ()  # each failed attempt before the reply, "model: error", oldest first

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens, "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms, "attempts": self.attempts}
        # absent, not null or empty, when unused: usage stored before these fields reads the same
        if self.fell_back_from is not None:
            data["fell_back_from"] = self.fell_back_from
        if self.errors:
            data["errors"] = list(self.errors)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        return cls(**{**data, "errors": tuple(data.get("errors") or ())})


@dataclass(frozen=True)
class ToolDefinition:
    name: str
    description: str
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    requires_approval: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema,
                "requires_approval": self.requires_approval}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolDefinition:
        return cls(name=data["name"], description=data.get("description", ""),
                   input_schema=data.get("input_schema") or {"type": "object", "properties": {}},
                   requires_approval=bool(data.get("requires_approval", False)))


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    name: str
    content: str
    is_error: bool = False
    structured: Any = None
    latency_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "name": self.name, "content": self.content, "is_error": self.is_error,
                "structured": self.structured, "latency_ms": self.latency_ms}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolResult:
        return cls(**data)

    def as_message(self) -> Message:
        return Message(role="tool", content=self.content, tool_call_id=self.call_id, name=self.name)
