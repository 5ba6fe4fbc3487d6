"""Reads of the tenant's model routing policies, and the dry run of a routing decision."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import QuerySet

from common.schemas import require_schema
from data_plane.errors import RoutingPolicyNotFound
from data_plane.models import RoutingPolicy
from data_plane.runtime.core import machine, routing
from data_plane.runtime.core.context import Meter
from data_plane.runtime.core.messages import Message
from data_plane.runtime.core.ports import TokenCounter
from data_plane.runtime.core.state import RunState, Status


def routing_policy_list(*, tenant_schema: str) -> QuerySet[RoutingPolicy]:
    require_schema(tenant_schema)
    return RoutingPolicy.objects.all()


def routing_policy_get(*, tenant_schema: str, policy_id: UUID, for_update: bool = False) -> RoutingPolicy:
    """One routing policy of the tenant. Raises RoutingPolicyNotFound (also for another tenant's id)."""
    require_schema(tenant_schema)
    policies = RoutingPolicy.objects.select_for_update() if for_update else RoutingPolicy.objects
    try:
        return policies.get(id=policy_id)
    except RoutingPolicy.DoesNotExist:
        raise RoutingPolicyNotFound(f"Routing policy {policy_id} not found.") from None


def routing_policy_explain(*, tenant_schema: str, policy_id: UUID, input: str, task_kind: str = "", tools: int = 0,
                           counter: TokenCounter) -> dict[str, Any]:
    """The decision the policy makes for a first model call with ``input`` (a run's first message), of a run of
    ``task_kind`` offering ``tools`` tools: tier, models, rule or complexity, why, and the complexity factors.
    Read-only: nothing is called or recorded. Raises RoutingPolicyNotFound."""
    stored = routing_policy_get(tenant_schema=tenant_schema, policy_id=policy_id)
    run_routing = routing.RunRouting(policy=routing.policy_from_json(stored.policy), source=f"tenant:{stored.name}",
                                     task_kind=task_kind)
    state = RunState(status=Status.RUNNING, messages=(Message(role="user", content=input),), values={}, frontier=())
    decision = machine.routing_decision(state, run_routing, tools=tools, meter=Meter(counter=counter))
    complexity = routing.estimate_complexity(input, tools=tools, depth=0)
    return {**decision.to_json(), "policy": run_routing.source, "factors": dict(complexity.factors),
            "cues": list(complexity.cues), "threshold": run_routing.policy.complexity_threshold}
