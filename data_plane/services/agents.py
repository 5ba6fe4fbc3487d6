"""Agents and their immutable versions."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db import IntegrityError, transaction

from common.actors import Actor
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from data_plane.errors import AgentArchived, AgentNameTaken, AgentSpecInvalid
from data_plane.models import Agent, AgentVersion
from data_plane.runtime.core.graph import GraphInvalid
from data_plane.runtime.core.spec import spec_from_json
from data_plane.selectors import agent_get


def _validated_spec(spec: Any, *, own_name: str) -> dict[str, Any]:
    known = set(Agent.objects.filter(is_archived=False).values_list("name", flat=True)) | {own_name}
    try:
        return spec_from_json(spec, known_agents=known).to_json()
    except GraphInvalid as invalid:
        raise AgentSpecInvalid(
            "The agent spec is invalid: " + " | ".join(f"{e['path']}: {e['message']}" for e in invalid.errors),
            extra={"errors": {"spec": invalid.errors}},
        ) from None


def agent_create(*, tenant, name: str, description: str, spec: Any, actor: Actor) -> Agent:  # type: ignore[no-untyped-def]
    """Create an agent with version 1 of its spec. Raises AgentSpecInvalid, AgentNameTaken."""
    require_schema(tenant.schema_name)
    normalized = _validated_spec(spec, own_name=name)
    try:
        with transaction.atomic():
            agent = Agent.objects.create(name=name, description=description, latest_version=1)
            AgentVersion.objects.create(agent=agent, version=1, spec=normalized, created_by=str(actor))
            audit_event_record(tenant=tenant, actor=actor, action="agent.create", target_type="agent",
                               target_id=str(agent.id), data={"name": name, "version": 1})
    except IntegrityError:
        raise AgentNameTaken(f"An agent named {name!r} already exists; choose another name or update it.") from None
    return agent


def agent_update(*, tenant, agent_id: UUID, actor: Actor, spec: Any = None,  # type: ignore[no-untyped-def]
                 description: str | None = None) -> Agent:
    """Change the description, and with a spec add a new version (runs keep the version they started on)."""
    require_schema(tenant.schema_name)
    with transaction.atomic():
        agent = agent_get(tenant_schema=tenant.schema_name, agent_id=agent_id, for_update=True)
        if agent.is_archived:
            raise AgentArchived(f"Agent {agent.name!r} is archived; it cannot change.")
        if spec is not None:
            normalized = _validated_spec(spec, own_name=agent.name)
            agent.latest_version += 1
            AgentVersion.objects.create(agent=agent, version=agent.latest_version, spec=normalized,
                                        created_by=str(actor))
        if description is not None:
            agent.description = description
        agent.save()
        audit_event_record(tenant=tenant, actor=actor, action="agent.update", target_type="agent",
                           target_id=str(agent.id), data={"version": agent.latest_version})
    return agent


def agent_archive(*, tenant, agent_id: UUID, actor: Actor) -> Agent:  # type: ignore[no-untyped-def]
    """Archive an agent: no new runs; existing runs and their history stay. Idempotent."""
    require_schema(tenant.schema_name)
    with transaction.atomic():
        agent = agent_get(tenant_schema=tenant.schema_name, agent_id=agent_id, for_update=True)
        if not agent.is_archived:
            agent.is_archived = True
            agent.save(update_fields=["is_archived", "updated_at"])
            audit_event_record(tenant=tenant, actor=actor, action="agent.archive", target_type="agent",
                               target_id=str(agent.id))
    return agent
