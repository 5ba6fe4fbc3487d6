"""Who did something: recorded on every audit event and lifecycle change."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    kind: str  # api_key | operator_key | system | user
    id: str
    label: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


SYSTEM = Actor(kind="system", id="agentplane", label="Agentplane")
