"""A run's state: what a checkpoint holds. Messages are append-only; everything else is small."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from data_plane.runtime.core.messages import Message, ToolCall


class Status:
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    WAITING_SUBRUN = "waiting_subrun"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class PendingApproval:
    """What a human must decide. ``calls`` are the tool calls awaiting approval (kind tool_calls)."""

    id: str
    node_id: str
    kind: str  # node | tool_calls
    prompt: str
    calls: tuple[ToolCall, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "node_id": self.node_id, "kind": self.kind, "prompt": self.prompt,
                "calls": [call.to_json() for call in self.calls]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingApproval:
        return cls(id=data["id"], node_id=data["node_id"], kind=data["kind"], prompt=data["prompt"],
                   calls=tuple(ToolCall.from_json(c) for c in data.get("calls", ())))


@dataclass(frozen=True)
class Decision:
    approval_id: str
    approved: bool
    arguments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # call id -> edited arguments
    comment: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"approval_id": self.approval_id, "approved": self.approved,
                "arguments": {k: dict(v) for k, v in self.arguments.items()}, "comment": self.comment}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        return cls(approval_id=data["approval_id"], approved=data["approved"],
                   arguments=data.get("arguments") or {}, comment=data.get("comment", ""))


@dataclass(frozen=True)
class Summary:
    """The running summary of a conversation's oldest messages: ``messages[:message_count]`` are folded into
    ``text`` (at most the agent's summary_max_tokens), and model calls send the messages after them."""

    text: str
    message_count: int

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "message_count": self.message_count}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        return cls(text=data["text"], message_count=data["message_count"])


@dataclass(frozen=True)
class RunState:
    status: str
    messages: tuple[Message, ...]
    values: Mapping[str, Any]
    frontier: tuple[str, ...]
    steps: int = 0
    started_at: float = 0.0
    join_arrivals: Mapping[str, int] = field(default_factory=dict)
    pending_approval: PendingApproval | None = None
    decisions: Mapping[str, Decision] = field(default_factory=dict)  # node id -> decision not yet consumed
    waiting_on: tuple[str, ...] = ()  # effect keys of sub-runs being waited for
    collected: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # results of unfinished nodes
    approvals_asked: int = 0  # numbers approval ids, so an approval asked again (after a retry) is a new one
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    output: str | None = None
    error: Mapping[str, str] | None = None
    summary: Summary | None = None
    held_calls: tuple[str, ...] = ()  # the last reply's tool calls held by the guardrails for a human's approval

    def evolve(self, **changes: Any) -> RunState:
        return replace(self, **changes)

    @property
    def is_terminal(self) -> bool:
        return self.status in (Status.COMPLETED, Status.FAILED)

    def control_json(self) -> dict[str, Any]:
        """Everything but messages and values: small and bounded, stored whole in each checkpoint."""
        return {
            "status": self.status, "frontier": list(self.frontier), "steps": self.steps,
            "started_at": self.started_at, "join_arrivals": dict(self.join_arrivals),
            "pending_approval": self.pending_approval.to_json() if self.pending_approval else None,
            "decisions": {k: d.to_json() for k, d in self.decisions.items()},
            "waiting_on": list(self.waiting_on), "collected": dict(self.collected), "approvals_asked": self.approvals_asked, "cost_usd": self.cost_usd, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "output": self.output,
            "error": dict(self.error) if self.error else None, "message_count": len(self.messages),
            "summary": self.summary.to_json() if self.summary else None,
            **({"held_calls": list(self.held_calls)} if self.held_calls else {}),
        }

    @classmethod
    def from_parts(cls, *, control: dict[str, Any], messages: tuple[Message, ...],
                   values: Mapping[str, Any]) -> RunState:
        approval = control.get("pending_approval")
        summary = control.get("summary")
        return cls(
            status=control["status"], messages=messages, values=dict(values), frontier=tuple(control["frontier"]),
            steps=control["steps"], started_at=control["started_at"], join_arrivals=control["join_arrivals"],
            pending_approval=PendingApproval.from_json(approval) if approval else None,
            decisions={k: Decision.from_json(d) for k, d in control["decisions"].items()},
            waiting_on=tuple(control["waiting_on"]), collected=control.get("collected", {}),
            approvals_asked=control.get("approvals_asked", 0), cost_usd=control["cost_usd"],
            input_tokens=control["input_tokens"], output_tokens=control["output_tokens"],
            output=control["output"], error=control["error"],
            summary=Summary.from_json(summary) if summary else None,
            held_calls=tuple(control.get("held_calls", ())),
        )
