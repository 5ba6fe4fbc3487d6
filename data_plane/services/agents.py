"""Agents and their immutable versions."""

from __future__ import annotations

import jsonschema

from typing import Any
from uuid import UUID

from django.db import IntegrityError, transaction
from django.db.models import Max, Q

from common.actors import Actor
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from data_plane.errors import AgentArchived, AgentNameTaken, AgentSpecInvalid
from data_plane.models import Agent, AgentVersion, McpServer, McpTool, ToolPermission
from data_plane.runtime.core.graph import GraphInvalid
from data_plane.runtime.core.spec import spec_from_json
from data_plane.selectors import agent_get
from data_plane.services.routing import routing_policy_names


def _with_catalogue_tools(spec: Any, *, agent_id: UUID | None) -> Any:
    """The spec with the current tools of its ``mcp_servers`` from the tenant's catalogue (replacing earlier
    copies), and ``requires_approval`` on every tool a require_approval permission names. The version keeps
    them: a run always sees the tools its version was made with."""
    if not isinstance(spec, dict):
        return spec
    names = spec.get("mcp_servers") or []
    servers = {}
    if isinstance(names, list) and all(isinstance(name, str) for name in names):
        servers = {s.name: s for s in McpServer.objects.filter(name__in=names).exclude(status=McpServer.Status.ARCHIVED)}
        missing = [name for name in names if name not in servers]
        if missing:
            known = ", ".join(McpServer.objects.exclude(status=McpServer.Status.ARCHIVED).values_list("name", flat=True))
            raise AgentSpecInvalid(f"No MCP server named {', '.join(map(repr, missing))}; registered: {known or 'none'}.",
                                   extra={"errors": {"spec": [{"path": "mcp_servers", "code": "unknown_mcp_server",
                                                               "message": f"Unknown MCP servers: {missing}."}]}})
    approvals = set(ToolPermission.objects.filter(Q(agent_id=agent_id) | Q(agent__isnull=True),
                                                  mode=ToolPermission.Mode.REQUIRE_APPROVAL)
                    .values_list("tool", flat=True))
    prefixes = tuple(f"{name}__" for name in servers)
    tools = [t for t in spec.get("tools") or [] if not (isinstance(t, dict) and prefixes
                                                        and str(t.get("name", "")).startswith(prefixes))]
    for tool in McpTool.objects.filter(server__in=servers.values(), is_active=True).order_by("name"):
        tools.append({"name": tool.name, "description": tool.description, "input_schema": tool.input_schema})
    for tool in tools:
        if isinstance(tool, dict) and (tool.get("name") in approvals
                                       or str(tool.get("name", "")).split("__")[0] + "__*" in approvals):
            tool["requires_approval"] = True
    return {**spec, "tools": tools}


def _validated_spec(spec: Any, *, own_name: str, agent_id: UUID | None = None) -> dict[str, Any]:
    known = set(Agent.objects.filter(is_archived=False).values_list("name", flat=True)) | {own_name}
    spec = _with_catalogue_tools(spec, agent_id=agent_id)
    try:
        parsed = spec_from_json(spec, known_agents=known, known_routing_policies=routing_policy_names())
        if parsed.output_schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(dict(parsed.output_schema))
            except jsonschema.SchemaError as exc:
                raise GraphInvalid([{"path": "output_schema", "code": "invalid",
                                     "message": f"Not a valid JSON schema: {exc.message}"}]) from None
        return parsed.to_json()
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
            normalized = _validated_spec(spec, own_name=agent.name, agent_id=agent.id)
            agent.latest_version = _next_version_number(agent)
            AgentVersion.objects.create(agent=agent, version=agent.latest_version, spec=normalized,
                                        created_by=str(actor))
        if description is not None:
            agent.description = description
        agent.save()
        audit_event_record(tenant=tenant, actor=actor, action="agent.update", target_type="agent",
                           target_id=str(agent.id), data={"version": agent.latest_version})
    return agent


def _next_version_number(agent: Agent) -> int:
    """The number of the agent's next version: after its latest and after every experiment variant's (whose
    versions are numbered in the same sequence but never become the latest). The caller holds the agent's lock."""
    highest = AgentVersion.objects.filter(agent=agent).aggregate(highest=Max("version"))["highest"]
    return max(highest or 0, agent.latest_version) + 1


def agent_variant_version_create(*, agent: Agent, spec: Any, actor: Actor) -> AgentVersion:
    """Add a version of the agent for an experiment's variant (validated like any spec): it is numbered like
    every version but does not become the agent's latest. The caller holds the agent's row lock. Raises
    AgentSpecInvalid."""
    normalized = _validated_spec(spec, own_name=agent.name, agent_id=agent.id)
    return AgentVersion.objects.create(agent=agent, version=_next_version_number(agent), spec=normalized,
                                       created_by=str(actor), is_variant=True)


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
