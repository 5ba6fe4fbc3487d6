"""Tenants' tools: MCP servers (registered, discovered into the catalogue, refreshed, archived) and tool
permissions. Every change is in the tenant's audit log; credentials are sealed at rest and never logged."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import jsonschema
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from common.actors import Actor
from common.errors import InvalidInput
from common.network import private_address
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from data_plane.errors import McpServerNameTaken, McpServerNotFound, McpServerUnreachable, ToolPermissionNotFound
from data_plane.models import Agent, McpServer, McpTool, ToolPermission, ToolSettings
from data_plane.runtime.adapters.mcp import McpUnreachable, RemoteTool, ServerConfig, discover
from data_plane.runtime.loop import run_coroutine
from data_plane.sealing import cipher_for, mcp_server_bound_to
from data_plane.selectors import agent_get

SERVER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
TOOL_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,100}$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,100}$")


def _bound_to(tenant_schema: str, server_id: UUID | str) -> str:
    return mcp_server_bound_to(tenant_schema, server_id)


def server_config(*, tenant_schema: str, server: McpServer) -> ServerConfig:
    """The server's connection settings with its credentials unsealed (in memory only)."""
    secrets = cipher_for(tenant_schema).open(server.sealed_secrets, bound_to=_bound_to(tenant_schema, server.id)) \
        if server.sealed_secrets else {}
    return ServerConfig(id=str(server.id), name=server.name, transport=server.transport, url=server.url,
                        command=server.command, args=tuple(server.args), headers=secrets.get("headers", {}),
                        env=secrets.get("env", {}), timeout_seconds=server.timeout_seconds)


def catalogue_name(server_name: str, remote_name: str) -> str:
    """What models see: ``<server>__<tool>`` in the characters and length function names allow."""
    return (f"{server_name}__" + TOOL_NAME_CHARS.sub("_", remote_name))[:64]


def _check_server(*, name: str, transport: str, url: str, command: str, args: Sequence[str],
                  headers: Mapping[str, str], env: Mapping[str, str], timeout_seconds: float) -> None:
    errors: dict[str, list[str]] = {}
    if not SERVER_NAME.match(name):
        errors["name"] = ["A server name is 1-30 lowercase letters, digits or _, starting with a letter; its "
                          "tools are named <server>__<tool>."]
    if transport == McpServer.Transport.HTTP:
        if not re.match(r"^https?://", url):
            errors["url"] = ["A remote server needs its streamable HTTP endpoint, like https://host/mcp."]
        elif not settings.MCP_ALLOW_PRIVATE_NETWORKS and private_address(urlsplit(url).hostname or ""):
            errors["url"] = [f"{url[:200]!r} resolves to a private address; remote MCP servers must be public "
                             "(the platform operator can allow private networks)."]
        if command or args or env:
            errors["command"] = ["A remote (http) server takes a url and headers, not a command, args or env."]
    elif transport == McpServer.Transport.STDIO:
        allowed = settings.MCP_STDIO_ALLOWED_COMMANDS
        if not stdio_command_allowed(command, args, allowed):
            errors["command"] = [
                f"Command {' '.join([command, *args])[:200]!r} is not one the platform operator allows for local "
                "servers (" + (", ".join(allowed) if allowed else "none: register a remote server with a url") + ")."]
        if url or headers:
            errors["url"] = ["A local (stdio) server takes a command, args and env, not a url or headers."]
    else:
        errors["transport"] = ["transport is 'http' (a remote server) or 'stdio' (a local command)."]
    if any(not isinstance(arg, str) for arg in args) or len(args) > 50:
        errors["args"] = ["args is a list of at most 50 strings."]
    if any(not HEADER_NAME.match(k) or not isinstance(v, str) for k, v in headers.items()):
        errors["headers"] = ["headers maps header names (letters, digits, -) to string values."]
    if any(not ENV_NAME.match(k) or not isinstance(v, str) for k, v in env.items()):
        errors["env"] = ["env maps upper-case variable names to string values."]
    if not 0.1 <= timeout_seconds <= 300:
        errors["timeout_seconds"] = ["timeout_seconds is between 0.1 and 300."]
    if errors:
        raise InvalidInput("The MCP server's settings are invalid: " + " ".join(m for ms in errors.values()
                                                                              for m in ms), extra={"errors": errors})


def stdio_command_allowed(command: str, args: Sequence[str], allowed: Sequence[str]) -> bool:
    """Whether ``command args...`` starts with one of the operator's allowed command lines (an entry may fix
    arguments too, like ``/opt/venv/bin/python -m mcp_server_time``, so an interpreter is not a free pass)."""
    line = [command, *args]
    for entry in allowed:
        prefix = shlex.split(entry)
        if prefix and line[:len(prefix)] == prefix:
            return True
    return False


def mcp_server_register(*, tenant, name: str, transport: str, actor: Actor, url: str = "",  # type: ignore[no-untyped-def]
                        command: str = "", args: Sequence[str] = (), headers: Mapping[str, str] | None = None,
                        env: Mapping[str, str] | None = None, timeout_seconds: float = 30.0) -> McpServer:
    """Register a server and list its tools into the catalogue. Raises InvalidInput (what to fix),
    McpServerNameTaken, McpServerUnreachable (nothing is kept: fix the settings and register again)."""
    require_schema(tenant.schema_name)
    headers, env = dict(headers or {}), dict(env or {})
    _check_server(name=name, transport=transport, url=url, command=command, args=args, headers=headers, env=env,
                  timeout_seconds=timeout_seconds)
    if McpServer.objects.filter(name=name).exists():
        raise McpServerNameTaken(f"An MCP server named {name!r} exists; choose another name or refresh it.")
    server = McpServer(name=name, transport=transport, url=url, command=command, args=list(args),
                       timeout_seconds=timeout_seconds,
                       secret_names={"headers": sorted(headers), "env": sorted(env)})
    if headers or env:
        server.sealed_secrets = cipher_for(tenant.schema_name).seal(
            {"headers": headers, "env": env}, bound_to=_bound_to(tenant.schema_name, server.id))
    tools = _discover(tenant.schema_name, server)  # before anything is written: an unreachable server is not kept
    try:
        with transaction.atomic():
            server.save(force_insert=True)
            changes = _apply_catalogue(server, tools)
            audit_event_record(tenant=tenant, actor=actor, action="mcp_server.register", target_type="mcp_server",
                               target_id=str(server.id), data={"name": name, "transport": transport,
                                                               "tools": changes["added"],
                                                               "secret_names": server.secret_names})
    except IntegrityError:
        raise McpServerNameTaken(f"An MCP server named {name!r} exists; choose another name.") from None
    return server


def mcp_server_refresh(*, tenant, server_id: UUID, actor: Actor) -> McpServer:  # type: ignore[no-untyped-def]
    """List the server's tools again: new ones join the catalogue, changed ones get a new version, missing
    ones are deactivated. A failure is recorded on the server (its tools stay). Raises McpServerNotFound,
    McpServerUnreachable."""
    require_schema(tenant.schema_name)
    server = _server(server_id)
    try:
        tools = _discover(tenant.schema_name, server)
    except McpServerUnreachable as exc:
        McpServer.objects.filter(id=server.id).update(status=McpServer.Status.ERROR, last_error=exc.message[:2000],
                                                      updated_at=timezone.now())
        raise
    with transaction.atomic():
        server = McpServer.objects.select_for_update().get(id=server.id)
        changes = _apply_catalogue(server, tools)
        audit_event_record(tenant=tenant, actor=actor, action="mcp_server.refresh", target_type="mcp_server",
                           target_id=str(server.id), data=changes)
    return server


def mcp_server_archive(*, tenant, server_id: UUID, actor: Actor) -> McpServer:  # type: ignore[no-untyped-def]
    """Stop using a server: its tools leave the catalogue and calls to them are refused. Idempotent."""
    require_schema(tenant.schema_name)
    with transaction.atomic():
        server = _server(server_id)
        server.status = McpServer.Status.ARCHIVED
        server.sealed_secrets = ""  # credentials are not kept for a server nobody uses
        server.save(update_fields=["status", "sealed_secrets", "updated_at"])
        McpTool.objects.filter(server=server).update(is_active=False)
        audit_event_record(tenant=tenant, actor=actor, action="mcp_server.archive", target_type="mcp_server",
                           target_id=str(server.id), data={"name": server.name})
    return server


def _server(server_id: UUID) -> McpServer:
    server = McpServer.objects.filter(id=server_id).exclude(status=McpServer.Status.ARCHIVED).first()
    if server is None:
        raise McpServerNotFound(f"MCP server {server_id} not found.")
    return server


def _discover(tenant_schema: str, server: McpServer) -> list[RemoteTool]:
    try:
        return run_coroutine(discover(server_config(tenant_schema=tenant_schema, server=server)))
    except McpUnreachable as exc:
        raise McpServerUnreachable(f"{exc} Check the server's url or command and credentials.") from None


def _apply_catalogue(server: McpServer, tools: list[RemoteTool]) -> dict[str, list[str]]:
    existing = {tool.remote_name: tool for tool in McpTool.objects.filter(server=server)}
    added, changed = [], []
    for remote in tools:
        tool = existing.pop(remote.name, None)
        if tool is None:
            tool = McpTool.objects.create(server=server, name=catalogue_name(server.name, remote.name),
                                          remote_name=remote.name, description=remote.description,
                                          input_schema=remote.input_schema)
            added.append(tool.name)
        elif (tool.description, tool.input_schema, tool.is_active) != (remote.description, remote.input_schema, True):
            tool.description, tool.input_schema, tool.is_active = remote.description, remote.input_schema, True
            tool.version += 1
            tool.save()
            changed.append(tool.name)
    removed = [tool.name for tool in existing.values() if tool.is_active]
    McpTool.objects.filter(id__in=[tool.id for tool in existing.values()]).update(is_active=False)
    if added or changed or removed or server.discovered_at is None:
        server.catalogue_version += 1
    server.status, server.last_error, server.discovered_at = McpServer.Status.ACTIVE, "", timezone.now()
    server.save()
    return {"added": added, "changed": changed, "removed": removed}


# --- Permissions -------------------------------------------------------------------------------------------

def tool_permission_set(*, tenant, tool: str, mode: str, actor: Actor, agent_id: UUID | None = None,  # type: ignore[no-untyped-def]
                        argument_schema: dict[str, Any] | None = None) -> ToolPermission:
    """Set (create or replace) the rule for a tool, for one agent or all. Takes effect on the next call.
    Raises InvalidInput, AgentNotFound."""
    require_schema(tenant.schema_name)
    errors: dict[str, list[str]] = {}
    if mode not in ToolPermission.Mode.values:
        errors["mode"] = [f"mode is one of {', '.join(ToolPermission.Mode.values)}."]
    if not re.match(r"^[A-Za-z0-9_-]{1,64}$|^[a-z][a-z0-9_]{0,29}__\*$", tool):
        errors["tool"] = ["tool is a tool's name (as in the catalogue) or '<server>__*' for all of a server's."]
    if argument_schema is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(argument_schema)
        except jsonschema.SchemaError as exc:
            errors["argument_schema"] = [f"argument_schema is not a valid JSON schema: {exc.message}"]
    if errors:
        raise InvalidInput("The tool permission is invalid: " + " ".join(m for ms in errors.values() for m in ms),
                           extra={"errors": errors})
    agent: Agent | None = agent_get(tenant_schema=tenant.schema_name, agent_id=agent_id) if agent_id else None
    with transaction.atomic():
        permission, created = ToolPermission.objects.update_or_create(
            agent=agent, tool=tool, defaults={"mode": mode, "argument_schema": argument_schema,
                                              "created_by": str(actor)})
        audit_event_record(tenant=tenant, actor=actor, action="tool_permission.set", target_type="tool",
                           target_id=tool, data={"agent_id": str(agent_id) if agent_id else None, "mode": mode,
                                                 "constrained": argument_schema is not None, "created": created})
    return permission


def tool_permission_delete(*, tenant, permission_id: UUID, actor: Actor) -> None:  # type: ignore[no-untyped-def]
    """Remove a rule (the tool is then allowed, unless a broader rule says otherwise). Raises
    ToolPermissionNotFound."""
    require_schema(tenant.schema_name)
    with transaction.atomic():
        permission = ToolPermission.objects.filter(id=permission_id).first()
        if permission is None:
            raise ToolPermissionNotFound(f"Tool permission {permission_id} not found.")
        permission.delete()
        audit_event_record(tenant=tenant, actor=actor, action="tool_permission.delete", target_type="tool",
                           target_id=permission.tool, data={"agent_id": str(permission.agent_id or "") or None,
                                                            "mode": permission.mode})


# --- Built-in tools' settings ---------------------------------------------------------------------------------

HOST_PATTERN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def tool_settings_update(*, tenant, http_fetch_hosts: Sequence[str], actor: Actor) -> ToolSettings:  # type: ignore[no-untyped-def]
    """Set the hosts the built-in http_fetch may reach (exact names, or ``*.domain`` for its subdomains).
    Raises InvalidInput naming each bad entry."""
    require_schema(tenant.schema_name)
    hosts = [host.strip().lower() for host in http_fetch_hosts]
    bad = [host for host in hosts if not HOST_PATTERN.match(host) or len(host) > 253]
    if bad or len(hosts) > 200:
        raise InvalidInput("http_fetch_hosts lists host names like api.example.com or *.example.org (at most 200); "
                           f"not these: {', '.join(map(repr, bad[:10]))}.",
                           extra={"errors": {"http_fetch_hosts": [f"Not a host name: {host!r}." for host in bad[:10]]
                                             or ["At most 200 hosts."]}})
    with transaction.atomic():
        current, _ = ToolSettings.objects.select_for_update().get_or_create(id=1)
        before = list(current.http_fetch_hosts)
        current.http_fetch_hosts, current.updated_by = sorted(set(hosts)), str(actor)
        current.save()
        audit_event_record(tenant=tenant, actor=actor, action="tool_settings.update", target_type="tool_settings",
                           target_id="http_fetch", data={"before": before, "after": current.http_fetch_hosts})
    return current
