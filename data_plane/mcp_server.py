"""The platform as an MCP server: ``/v1/mcp`` (streamable HTTP) lets outside MCP clients call a tenant's
agents as tools, authenticated with the tenant's API key (``Authorization: Bearer agp_...``).

Each agent the key may see is a tool ``agent__<name>`` taking ``{"input": "..."}``; the built-in tools the
platform serves itself are there too (``builtin__calculator``, ``builtin__get_time``, ``builtin__http_fetch``,
the last reaching only the tenant's allowed hosts; ``builtin__memory_search`` searches the tenant's long-term
memory, optionally one agent's and one end user's, with ``memories:read``). Calling an agent starts a run
(``runs:write``) and answers with the run's output once it finishes, or says that the run waits for an
approval (decide it through the API) or is still working after ``timeout_seconds`` (follow it with its id).
Thin: authenticate, call the run services, shape the answer. Built on the official SDK's server (stateless
HTTP, JSON responses); its session manager is started with the first request (Daphne has no lifespan).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import uuid
from typing import Any

from channels.db import database_sync_to_async
from django.db import close_old_connections
from django_tenants.utils import schema_context
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, TextContent
from mcp_types import Tool as MCPTool

from common.errors import AppError
from common.problems import problem
from control_plane.audit.services import audit_event_record
from data_plane import selectors, services
from data_plane.runtime.core.messages import ToolCall, ToolResult
from data_plane.tools import BUILTIN_TOOLS, BuiltinToolRunner
from tenants.asgi import client_address, header, stream_principal

PATH = "/v1/mcp"
TOOL_PREFIX = "agent__"
BUILTIN_PREFIX = "builtin__"
SERVED_BUILTINS = ("calculator", "get_time", "http_fetch")  # the side-effect-free ones (no run to attach notes to)
NO_RUN = "00000000-0000-0000-0000-000000000000"
_TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")
_CALLER: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("agentplane_mcp_caller")
INPUT_SCHEMA = {"type": "object", "required": ["input"], "properties": {
    "input": {"type": "string", "description": "The task for the agent, as a user would write it."},
    "timeout_seconds": {"type": "number", "minimum": 1, "maximum": 600,
                        "description": "How long to wait for the run to finish (default 120)."}}}
FINAL = ("completed", "failed", "cancelled")


def _tool_name(agent_name: str) -> str:
    return (TOOL_PREFIX + _TOOL_NAME.sub("_", agent_name))[:64]


def _agents(caller: dict[str, Any]) -> list[tuple[str, str, str]]:
    close_old_connections()
    schema = caller["tenant_schema"]
    with schema_context(schema):
        return [(str(a.id), a.name, a.description) for a in selectors.agent_list(tenant_schema=schema)]


def _start(caller: dict[str, Any], agent_id: str, text: str) -> str:
    close_old_connections()
    with schema_context(caller["tenant_schema"]):
        run = services.run_start(tenant=caller["tenant"], agent_id=agent_id, input=text, actor=caller["actor"])
        return str(run.id)


def _status(caller: dict[str, Any], run_id: str) -> tuple[str, str, dict[str, Any] | None]:
    close_old_connections()
    schema = caller["tenant_schema"]
    with schema_context(schema):
        run = selectors.run_get(tenant_schema=schema, run_id=run_id)
        return run.status, run.output, run.error


def _text(text: str, *, error: bool = False, structured: dict[str, Any] | None = None) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=error,
                          structured_content=structured)


class AgentsAsTools(MCPServer):
    """The calling tenant's agents, as tools."""

    async def list_tools(self) -> list[MCPTool]:
        caller = _CALLER.get()
        tools: list[MCPTool] = []
        if "agents:read" in caller["scopes"]:
            agents = await database_sync_to_async(_agents)(caller)
            tools += [MCPTool(name=_tool_name(name), description=description or f"Run the agent {name!r} on a task.",
                              input_schema=INPUT_SCHEMA) for _, name, description in agents]
        if "tools:read" in caller["scopes"]:
            tools += [MCPTool(name=BUILTIN_PREFIX + name, description=BUILTIN_TOOLS[name].description,
                              input_schema=BUILTIN_TOOLS[name].input_schema) for name in SERVED_BUILTINS]
        tools.append(MCPTool(name=BUILTIN_PREFIX + "memory_search", description=MEMORY_SEARCH_DESCRIPTION,
                             input_schema=MEMORY_SEARCH_SCHEMA))
        return tools

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> CallToolResult:
        caller = _CALLER.get()
        if "runs:write" not in caller["scopes"]:
            return _text("This API key lacks the scope 'runs:write' that calling a tool or starting an agent's run "
                         "needs.", error=True)
        if name == BUILTIN_PREFIX + "memory_search":
            return await database_sync_to_async(_memory_search)(caller, arguments)
        if name.startswith(BUILTIN_PREFIX) and name[len(BUILTIN_PREFIX):] in SERVED_BUILTINS:
            return await self._builtin(caller, name[len(BUILTIN_PREFIX):], arguments)
        agents = {_tool_name(agent_name): agent_id
                  for agent_id, agent_name, _ in await database_sync_to_async(_agents)(caller)}
        text = arguments.get("input")
        if name not in agents:
            return _text(f"No agent behind the tool {name!r}; list the tools to see this tenant's agents.", error=True)
        if not isinstance(text, str) or not text.strip():
            return _text("Give the agent its task as 'input', a non-empty string.", error=True)
        timeout = float(arguments.get("timeout_seconds") or 120)
        try:
            run_id = await database_sync_to_async(_start)(caller, agents[name], text)
        except AppError as exc:
            return _text(f"{exc.code}: {exc.message}", error=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout, 1.0), 600.0)
        while True:
            status, output, error = await database_sync_to_async(_status)(caller, run_id)
            facts = {"run_id": run_id, "status": status}
            if status == "completed":
                return _text(output, structured={**facts, "output": output})
            if status in FINAL:
                reason = (error or {}).get("message", status)
                return _text(f"Run {run_id} {status}: {reason}", error=True, structured={**facts, "error": error})
            if status == "waiting_approval":
                return _text(f"Run {run_id} waits for a human's approval; decide it with POST "
                             "/v1/approvals/{id}/decide, then follow the run.", error=True, structured=facts)
            if loop.time() > deadline:
                return _text(f"Run {run_id} is still {status} after {timeout:g} s; follow it at /v1/runs/{run_id} or "
                             "its stream.", error=True, structured=facts)
            await asyncio.sleep(0.1)


    async def _builtin(self, caller: dict[str, Any], tool: str, arguments: dict[str, Any]) -> CallToolResult:
        runner = BuiltinToolRunner(tenant_schema=caller["tenant_schema"], run_id=NO_RUN)
        result = await runner.call(ToolCall(id=uuid.uuid4().hex[:12], name=tool, arguments=arguments),
                                   idempotency_key=f"mcp:{uuid.uuid4()}")
        await database_sync_to_async(_audit_builtin)(caller, tool, arguments, result)
        return _text(result.content, error=result.is_error)


MEMORY_SEARCH_DESCRIPTION = ("Search this tenant's long-term memory by meaning and by words; optionally only what "
                             "one agent and one end user may recall.")
MEMORY_SEARCH_SCHEMA = {"type": "object", "required": ["query"], "properties": {
    "query": {"type": "string"}, "k": {"type": "integer", "minimum": 1, "maximum": 50},
    "agent": {"type": "string", "description": "That agent's memories and every agent's."},
    "end_user": {"type": "string", "description": "That end user's memories and nobody's in particular."},
    "kind": {"type": "string", "enum": ["fact", "lesson", "note"]}}}


def _memory_search(caller: dict[str, Any], arguments: dict[str, Any]) -> CallToolResult:
    from data_plane.memory_selectors import memory_search

    close_old_connections()
    if "memories:read" not in caller["scopes"]:
        return _text("This API key lacks the scope 'memories:read' that searching memory needs.", error=True)
    query, k = arguments.get("query"), arguments.get("k") or 10
    if not isinstance(query, str) or not query.strip() or not isinstance(k, int) or not 1 <= k <= 50:
        return _text("Give a non-empty 'query' and, optionally, 'k' from 1 to 50.", error=True)
    schema = caller["tenant_schema"]
    with schema_context(schema):
        hits = memory_search(tenant_schema=schema, query=query, k=k, agent=arguments.get("agent") or None,
                             end_user=arguments.get("end_user") or None,
                             kinds=[arguments["kind"]] if arguments.get("kind") else ())
    found = [{"id": str(h.id), "text": h.text, "kind": h.kind, "agent": h.agent, "tags": h.tags,
              "similarity": h.similarity} for h in hits]
    text = "\n".join(f"{i}. [{h['kind']}] {h['text']}" for i, h in enumerate(found, 1)) or "No memories match."
    # The audit names what was asked for, not the query's words (they may be personal data).
    _audit_builtin(caller, "memory_search", {"k": k, "agent": arguments.get("agent") or "", "results": len(found)},
                   ToolResult(call_id="", name="memory_search", content=text))
    return _text(text, structured={"results": found})


def _audit_builtin(caller: dict[str, Any], tool: str, arguments: dict[str, Any], result: Any) -> None:
    close_old_connections()
    audit_event_record(tenant=caller["tenant"], actor=caller["actor"], action="tool.call", target_type="mcp",
                       target_id=BUILTIN_PREFIX + tool, data={
                           "tool": tool, "arguments": arguments, "status": "error" if result.is_error else "ok",
                           "latency_ms": result.latency_ms, "result_bytes": len(result.content.encode())})


class McpEndpoint:
    """The ASGI app served at /v1/mcp: checks the bearer API key, then hands the request to the SDK."""

    def __init__(self) -> None:
        self.server = AgentsAsTools("agentplane", instructions="This tenant's agents, each callable as a tool.")
        self.app = self.server.streamable_http_app(
            streamable_http_path=PATH, stateless_http=True, json_response=True,
            # Every request carries an API key, so a rebinding page has nothing to ride on.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        self._running: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run_session_manager(self) -> None:
        async with self.server._lowlevel_server._session_manager.run():  # type: ignore[union-attr]
            self._ready.set()
            await asyncio.Event().wait()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._running is None or self._running.done():
            self._ready = asyncio.Event()
            self._running = asyncio.create_task(self._run_session_manager())
        await self._ready.wait()
        caller = await database_sync_to_async(stream_principal)(authorization=header(scope, b"authorization"),
                                                                access_token=None, address=client_address(scope))
        error = caller.get("auth_error")
        if error is None and caller["allowed_run_id"] is not None:
            error = {"status": 403, "code": "api_key_required", "message": "The MCP endpoint takes an API key, not "
                                                                          "a stream token."}
        if error is not None:
            body = json.dumps(problem(status=error["status"], code=error["code"], detail=error["message"])).encode()
            await send({"type": "http.response.start", "status": error["status"], "headers": [
                (b"content-type", b"application/problem+json"),
                (b"www-authenticate", b'Bearer realm="agentplane"'),
                *([(b"retry-after", str(error["retry_after"]).encode())] if error.get("retry_after") else [])]})
            await send({"type": "http.response.body", "body": body})
            return
        token = _CALLER.set(caller)
        try:
            await self.app(scope, receive, send)
        finally:
            _CALLER.reset(token)
