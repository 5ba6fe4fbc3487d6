"""The one interface every check implements: a text in, a Verdict out.

A check is pure and deterministic (the same text gives the same verdict), holds no secret of what it found
(``message`` describes, it never quotes), and says *where* it found something in ``spans`` so that a policy
can redact it. The pipeline (guardrails/pipeline.py) times each check and turns verdicts into actions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Point = Literal["input", "output", "tool_arguments", "tool_result"]
POINTS: tuple[Point, ...] = ("input", "output", "tool_arguments", "tool_result")


@dataclass(frozen=True)
class Span:
    """Where a finding is: ``text[start:end]`` of the text the check was given. ``kind`` names what it is
    (``email``, ``payment_card``, ``aws_access_key``...), and is what a redaction shows instead."""

    start: int
    end: int
    kind: str

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "kind": self.kind}


@dataclass(frozen=True)
class Verdict:
    """One check's answer. ``score`` is how sure it is that the text violates the check (0 to 1);
    ``reasons`` are stable reason codes (``injection.instruction_override``, ``pii.email``); ``message``
    is for humans and never contains the finding itself."""

    check: str
    triggered: bool
    score: float = 0.0
    reasons: tuple[str, ...] = ()
    message: str = ""
    spans: tuple[Span, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "triggered": self.triggered, "score": round(self.score, 4),
                "reasons": list(self.reasons), "message": self.message,
                "spans": [span.to_json() for span in self.spans]}


class Check(Protocol):
    name: str

    def evaluate(self, text: str, *, point: Point) -> Verdict:
        """The verdict on ``text`` seen at ``point`` (some checks weigh points differently)."""
        ...


def without_overlaps(spans: Sequence[Span], priority: Mapping[str, int]) -> list[Span]:
    """One finding per stretch of text: of overlapping spans, the kind ranked first in ``priority`` (lower is
    better), then the longer."""
    kept: list[Span] = []
    kept_rank = (0, 0)
    for start, rank, negative_length, _, span in sorted(
            (span.start, priority[span.kind], span.start - span.end, index, span) for index, span in enumerate(spans)):
        if kept and start < kept[-1].end:
            if (rank, negative_length) < kept_rank:
                kept[-1], kept_rank = span, (rank, negative_length)
            continue
        kept.append(span)
        kept_rank = (rank, negative_length)
    return kept


def redact(text: str, spans: Sequence[Span]) -> str:
    """``text`` with every span replaced by ``[REDACTED:<KIND>]``; overlapping spans merge (first kind wins)."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = Span(last.start, max(last.end, span.end), last.kind)
        else:
            merged.append(span)
    out, position = [], 0
    for span in merged:
        out.append(text[position:span.start])
        out.append(f"[REDACTED:{span.kind.upper()}]")
        position = span.end
    out.append(text[position:])
    return "".join(out)
