"""Rows as the data plane leaves them (a run and its effect journal), to collect usage from. Call inside the
tenant's schema."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from data_plane.models import Agent, AgentVersion, EffectRecordRow, Run


def agent_version(name: str = "writer") -> AgentVersion:
    agent, _ = Agent.objects.get_or_create(name=name)
    version, _ = AgentVersion.objects.get_or_create(agent=agent, version=1, defaults={"spec": {"instructions": ""}})
    return version


def finished_run(*, agent: str = "writer", finished_at: datetime, status: str = "completed", parent: Run | None = None,
                 started_at: datetime | None = None, end_user: str = "", step: int = 3, input_tokens: int = 0,
                 output_tokens: int = 0, cost_usd: str = "0") -> Run:
    return Run.objects.create(agent_version=agent_version(agent), input="go", status=status, parent_run=parent,
                              parent_key=f"sub:{finished_at.isoformat()}" if parent else "", end_user=end_user,
                              step=step, input_tokens=input_tokens, output_tokens=output_tokens,
                              cost_usd=Decimal(cost_usd), started_at=started_at, finished_at=finished_at)


def journal(run: Run, *, step: int, key: str, finished_at: datetime | None, kind: str = "model",
            name: str = "openai/gpt-4o-mini", status: str = "succeeded", attempts: int = 1, input_tokens: int = 0,
            output_tokens: int = 0, cached_input_tokens: int = 0, cost_usd: str = "0", latency_ms: float = 10.0,
            reused_from: int | None = None, request: dict[str, Any] | None = None,
            is_error: bool = False) -> EffectRecordRow:
    """One journal row: a model call's result carries its usage (cached tokens only there), a tool's its content."""
    if kind == "model":
        result: dict[str, Any] = {"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop",
                                  "usage": {"model": name, "input_tokens": input_tokens,
                                            "output_tokens": output_tokens, "cached_input_tokens": cached_input_tokens,
                                            "cost_usd": float(cost_usd), "latency_ms": latency_ms, "attempts": 1}}
    else:
        result = {"content": "2", "is_error": is_error}
    if reused_from is not None:  # a replay copies the source's result, and pays nothing
        input_tokens = output_tokens = 0
        cost_usd = "0"
    return EffectRecordRow.objects.create(
        run=run, step=step, key=key, kind=kind, idempotency_key=f"{run.id}:{step}:{key}", digest="0" * 64, name=name,
        request=request or {}, result=None if status == "started" else result, status=status, attempts=attempts,
        latency_ms=None if status == "started" else latency_ms, input_tokens=input_tokens,
        output_tokens=output_tokens, cost_usd=Decimal(cost_usd), reused_from=reused_from,
        finished_at=None if status == "started" else finished_at)
