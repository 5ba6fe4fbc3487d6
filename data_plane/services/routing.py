"""The tenant's model routing policies, and the routing a new run is given (core/routing.py)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db import IntegrityError, transaction
from django.db.models.fields.json import KeyTextTransform

from common.actors import Actor
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from data_plane.errors import RoutingPolicyInUse, RoutingPolicyInvalid, RoutingPolicyMissing, RoutingPolicyNameTaken
from data_plane.models import Agent, AgentVersion, RoutingPolicy
from data_plane.routing_selectors import routing_policy_get
from data_plane.runtime.core import routing
from data_plane.runtime.core.spec import AgentSpec


def _normalized(policy: Any) -> dict[str, Any]:
    try:
        return routing.policy_from_json(policy).to_json()
    except routing.RoutingPolicyInvalid as invalid:
        raise RoutingPolicyInvalid(f"The routing policy is invalid: {invalid}",
                                   extra={"errors": {"policy": invalid.errors}}) from None


def _clear_default(*, keep: UUID) -> None:
    RoutingPolicy.objects.filter(is_default=True).exclude(id=keep).update(is_default=False)


def routing_policy_create(*, tenant, name: str, policy: Any, actor: Actor,  # type: ignore[no-untyped-def]
                          description: str = "", is_default: bool = False) -> RoutingPolicy:
    """Create a routing policy; ``is_default`` makes it the one agents without routing use (the previous
    default stops being it). Raises RoutingPolicyInvalid, RoutingPolicyNameTaken."""
    require_schema(tenant.schema_name)
    normalized = _normalized(policy)
    try:
        with transaction.atomic():
            if is_default:
                RoutingPolicy.objects.filter(is_default=True).update(is_default=False)
            created = RoutingPolicy.objects.create(name=name, description=description, policy=normalized,
                                                   is_default=is_default, created_by=str(actor))
            audit_event_record(tenant=tenant, actor=actor, action="routing_policy.create",
                               target_type="routing_policy", target_id=str(created.id),
                               data={"name": name, "is_default": is_default, "policy": normalized})
    except IntegrityError:
        raise RoutingPolicyNameTaken(f"A routing policy named {name!r} already exists; choose another name or "
                                     "update that one.") from None
    return created


def routing_policy_update(*, tenant, policy_id: UUID, actor: Actor, policy: Any = None,  # type: ignore[no-untyped-def]
                          description: str | None = None, is_default: bool | None = None) -> RoutingPolicy:
    """Change a policy. Runs already started keep the routing they started with; new runs use the change.
    Raises RoutingPolicyNotFound, RoutingPolicyInvalid."""
    require_schema(tenant.schema_name)
    normalized = _normalized(policy) if policy is not None else None
    with transaction.atomic():
        stored = routing_policy_get(tenant_schema=tenant.schema_name, policy_id=policy_id, for_update=True)
        changed: dict[str, Any] = {}
        if normalized is not None:
            stored.policy = changed["policy"] = normalized
        if description is not None:
            stored.description = changed["description"] = description
        if is_default is not None:
            if is_default:
                _clear_default(keep=stored.id)
            stored.is_default = changed["is_default"] = is_default
        stored.save()
        audit_event_record(tenant=tenant, actor=actor, action="routing_policy.update", target_type="routing_policy",
                           target_id=str(stored.id), data={"name": stored.name, **changed})
    return stored


def routing_policy_delete(*, tenant, policy_id: UUID, actor: Actor) -> None:  # type: ignore[no-untyped-def]
    """Delete a policy no agent names (in its latest version). Raises RoutingPolicyNotFound, RoutingPolicyInUse."""
    require_schema(tenant.schema_name)
    with transaction.atomic():
        stored = routing_policy_get(tenant_schema=tenant.schema_name, policy_id=policy_id, for_update=True)
        users = sorted(agent_names_using(stored.name))
        if users:
            raise RoutingPolicyInUse(f"Routing policy {stored.name!r} is named by agents {', '.join(users)}; give "
                                     "them another routing policy (or none) first.",
                                     extra={"agents": users})
        stored.delete()
        audit_event_record(tenant=tenant, actor=actor, action="routing_policy.delete", target_type="routing_policy",
                           target_id=str(policy_id), data={"name": stored.name})


def agent_names_using(name: str) -> list[str]:
    """The agents (not archived) whose latest version names the routing policy ``name``."""
    versions = (AgentVersion.objects.annotate(routing_policy=KeyTextTransform("routing_policy", "spec"))
                .filter(routing_policy=name, agent__is_archived=False)
                .values_list("agent_id", "version"))
    latest = dict(Agent.objects.filter(is_archived=False).values_list("id", "latest_version"))
    ids = [agent_id for agent_id, version in versions if latest.get(agent_id) == version]
    return list(Agent.objects.filter(id__in=ids).values_list("name", flat=True))


def routing_policy_names() -> set[str]:
    """The names of the current schema's routing policies (what an agent's ``routing_policy`` may name)."""
    return set(RoutingPolicy.objects.values_list("name", flat=True))


def run_routing_resolve(spec: AgentSpec, *, task_kind: str) -> dict[str, Any] | None:
    """The routing a new run of ``spec`` follows, as stored on the run: the agent's own policy, else the tenant
    policy it names, else the tenant's default policy, else none (its models, as they are). In the current
    schema. Raises RoutingPolicyMissing when the named policy was deleted."""
    if spec.routing is not None:
        return routing.RunRouting(policy=spec.routing, source="agent", task_kind=task_kind).to_json()
    if spec.routing_policy is not None:
        stored = RoutingPolicy.objects.filter(name=spec.routing_policy).first()
        if stored is None:
            raise RoutingPolicyMissing(f"The agent's routing policy {spec.routing_policy!r} no longer exists; "
                                       "create it again or update the agent.")
    else:
        stored = RoutingPolicy.objects.filter(is_default=True).first()
        if stored is None:
            return None
    source = f"tenant:{stored.name}" if spec.routing_policy is not None else f"tenant default:{stored.name}"
    return routing.RunRouting(policy=routing.policy_from_json(stored.policy), source=source,
                              task_kind=task_kind).to_json()
