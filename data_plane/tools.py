"""Tools: the built-in ones the platform runs itself, and the router every call of a run goes through
(permissions, then a built-in tool or a tenant's MCP server).

Every tool takes the call's idempotency key: the same key never repeats an effect (MCP servers receive it
in the call's ``_meta`` as ``io.agentplane/idempotency-key``).
"""

from __future__ import annotations

import ast
import asyncio
import logging
import operator
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import jsonschema
from django.conf import settings
from django.db import IntegrityError, close_old_connections
from django_tenants.utils import schema_context

from common.actors import Actor
from common.errors import InvalidInput
from common.network import private_address
from control_plane.audit.services import audit_event_record
from data_plane.models import AgentVersion, McpTool, Note, Run, ToolPermission, ToolSettings
from data_plane.runtime.adapters.embeddings import EmbeddingUnavailable
from data_plane.runtime.adapters.mcp import McpSessions, ServerConfig
from data_plane.runtime.core.messages import ToolCall, ToolDefinition, ToolResult
from data_plane.runtime.loop import spawn
from data_plane.selectors import tool_permission_effective

logger = logging.getLogger(__name__)

BUILTIN_TOOLS: dict[str, ToolDefinition] = {
    "calculator": ToolDefinition(
        name="calculator", description="Evaluate an arithmetic expression (+ - * / ** %, parentheses).",
        input_schema={"type": "object", "properties": {"expression": {"type": "string"}},
                      "required": ["expression"]}),
    "get_time": ToolDefinition(
        name="get_time", description="The current date and time in UTC (ISO 8601).",
        input_schema={"type": "object", "properties": {}}),
    "wait": ToolDefinition(
        name="wait", description="Wait a number of seconds (at most 300), then answer 'waited'.",
        input_schema={"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]}),
    "note_append": ToolDefinition(
        name="note_append", description="Append a note to the tenant's notebook; returns the note's number.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
    "http_fetch": ToolDefinition(
        name="http_fetch", description="GET a web page or API over http(s) from a host the tenant allows; returns "
                                       "the status and the body's text (at most 100 kB).",
        input_schema={"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}),
    "memory_search": ToolDefinition(
        name="memory_search", description="Search this agent's long-term memory (facts, notes and lessons from "
                                          "earlier runs, about this end user or anyone) by meaning and by words.",
        input_schema={"type": "object", "properties": {
            "query": {"type": "string", "description": "What to look for."},
            "k": {"type": "integer", "minimum": 1, "maximum": 20, "description": "How many (default 5)."},
            "kind": {"type": "string", "enum": ["fact", "lesson", "note"]}}, "required": ["query"]}),
    "memory_write": ToolDefinition(
        name="memory_write", description="Remember a durable fact or note for later runs (about this run's end "
                                         "user when there is one). A near-duplicate updates the existing memory.",
        input_schema={"type": "object", "properties": {
            "text": {"type": "string", "description": "One self-contained statement."},
            "kind": {"type": "string", "enum": ["fact", "note"]},
            "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["text"]}),
}
FETCH_LIMIT_BYTES = 100_000
FETCH_TIMEOUT_SECONDS = 15.0

_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv, ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


class CalculatorError(ValueError):
    pass


def calculate(expression: str) -> float | int:
    """Evaluate arithmetic safely (no names, calls or attributes; bounded exponents)."""

    def evaluate(node: ast.AST) -> Any:
        match node:
            case ast.Expression(body=body):
                return evaluate(body)
            case ast.Constant(value=value) if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _OPERATORS:
                a, b = evaluate(left), evaluate(right)
                if isinstance(op, ast.Pow) and abs(b) > 100:
                    raise CalculatorError("exponent too large (at most 100)")
                return _OPERATORS[type(op)](a, b)
            case ast.UnaryOp(op=op, operand=operand) if type(op) in _OPERATORS:
                return _OPERATORS[type(op)](evaluate(operand))
        raise CalculatorError(f"unsupported expression element: {type(node).__name__}")

    if len(expression) > 500:
        raise CalculatorError("expression too long (at most 500 characters)")
    try:
        return evaluate(ast.parse(expression, mode="eval"))
    except (SyntaxError, ZeroDivisionError) as exc:
        raise CalculatorError(str(exc)) from None


class BuiltinToolRunner:
    """Runs the built-in tools for one tenant schema and run."""

    def __init__(self, *, tenant_schema: str, run_id: str, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.tenant_schema = tenant_schema
        self.run_id = run_id
        self.clock = clock
        self.sleep = sleep

    async def call(self, call: ToolCall, *, idempotency_key: str) -> ToolResult:
        started = time.perf_counter()
        try:
            content, structured = await self._dispatch(call, idempotency_key)
            is_error = False
        except (CalculatorError, TypeError, ValueError, KeyError) as exc:
            content, structured, is_error = f"Error: {exc}", None, True
        except (InvalidInput, EmbeddingUnavailable) as exc:
            content, structured, is_error = f"Error: {exc}", None, True
        return ToolResult(call_id=call.id, name=call.name, content=content, is_error=is_error, structured=structured,
                          latency_ms=round((time.perf_counter() - started) * 1000, 3))

    async def _dispatch(self, call: ToolCall, idempotency_key: str) -> tuple[str, Any]:
        args = call.arguments
        match call.name:
            case "calculator":
                value = calculate(str(args["expression"]))
                return str(value), value
            case "get_time":
                now = datetime.fromtimestamp(self.clock(), tz=timezone.utc).isoformat(timespec="seconds")
                return now, now
            case "wait":
                seconds = float(args["seconds"])
                if not 0 <= seconds <= 300:
                    raise ValueError("seconds must be between 0 and 300")
                await self.sleep(seconds)
                return "waited", seconds
            case "note_append":
                number = await asyncio.to_thread(self._note_append, str(args["text"]), idempotency_key)
                return f"note #{number} saved", number
            case "http_fetch":
                return await self._http_fetch(str(args["url"]))
            case "memory_search":
                return await asyncio.to_thread(self._memory_search, args)
            case "memory_write":
                return await asyncio.to_thread(self._memory_write, args, idempotency_key)
        raise KeyError(f"tool {call.name!r} is not available to this agent")

    async def _http_fetch(self, url: str) -> tuple[str, Any]:
        hosts = await asyncio.to_thread(self._fetch_hosts)
        current = url
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False) as client:
            for _ in range(4):  # each redirect is checked like the first request
                await fetch_check(current, hosts)
                async with client.stream("GET", current, headers={"User-Agent": "agentplane-http-fetch"}) as response:
                    if response.is_redirect and "location" in response.headers:
                        current = str(response.url.join(response.headers["location"]))
                        continue
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > FETCH_LIMIT_BYTES:
                            break
                    text = body[:FETCH_LIMIT_BYTES].decode(response.encoding or "utf-8", errors="replace")
                    return (f"HTTP {response.status_code}\n{text}",
                            {"status": response.status_code, "url": current, "truncated": len(body) > FETCH_LIMIT_BYTES})
        raise ValueError("too many redirects (at most 3)")

    def _fetch_hosts(self) -> list[str]:
        close_old_connections()
        with schema_context(self.tenant_schema):
            found = ToolSettings.objects.filter(id=1).values_list("http_fetch_hosts", flat=True).first()
        return list(found or [])

    def _memory_scope(self) -> tuple[str, str, bool]:
        """The run's agent name, end user, and whether the agent's memories are every agent's."""
        found = Run.objects.filter(id=self.run_id).values_list(
            "agent_version__agent__name", "end_user", "agent_version__spec").first()
        if found is None:
            raise ValueError(f"run {self.run_id} is gone")
        agent, end_user, spec = found
        return agent, end_user, bool(((spec or {}).get("memory") or {}).get("shared"))

    def _memory_search(self, args: dict[str, Any]) -> tuple[str, Any]:
        from data_plane.memory_selectors import memory_search

        query, k, kind = str(args["query"]), int(args.get("k") or 5), args.get("kind")
        if not query.strip():
            raise ValueError("query is empty: say what to look for")
        close_old_connections()
        with schema_context(self.tenant_schema):
            agent, end_user, _ = self._memory_scope()
            hits = memory_search(tenant_schema=self.tenant_schema, query=query, k=max(1, min(k, 20)), agent=agent,
                                 end_user=end_user, kinds=[kind] if kind else ())
        if not hits:
            return "No memories match.", []
        lines = [f"{i}. [{hit.kind}] {hit.text}" for i, hit in enumerate(hits, 1)]
        return "\n".join(lines), [{"id": str(hit.id), "text": hit.text, "kind": hit.kind, "tags": hit.tags,
                                   "similarity": hit.similarity} for hit in hits]

    def _memory_write(self, args: dict[str, Any], idempotency_key: str) -> tuple[str, Any]:
        from data_plane.models import Memory
        from data_plane.services.memory import memory_draft, memory_remember
        from tenants.selectors import tenant_get_active_by_schema

        close_old_connections()
        with schema_context(self.tenant_schema):
            done = Memory.objects.filter(metadata__idempotency_key=idempotency_key).values_list("id", flat=True).first()
            if done is not None:  # the same call again (a retried step): already remembered
                return f"remembered (memory {done})", {"id": str(done), "merged": False}
            agent, end_user, shared = self._memory_scope()
            draft = memory_draft(text=args.get("text"), kind=args.get("kind") or "fact", tags=args.get("tags") or [],
                                 agent="" if shared else agent, end_user=end_user,
                                 metadata={"idempotency_key": idempotency_key})
            tenant = tenant_get_active_by_schema(tenant_schema=self.tenant_schema)
            [written] = memory_remember(tenant=tenant, drafts=[draft], actor=Actor(kind="system", id=f"run:{self.run_id}"),
                                        source=Memory.Source.TOOL, source_run_id=UUID(str(self.run_id)))
        verb = "updated the existing memory" if written.merged else "remembered"
        return f"{verb} (memory {written.memory.id})", {"id": str(written.memory.id), "merged": written.merged}

    def _note_append(self, text: str, idempotency_key: str) -> int:
        close_old_connections()
        with schema_context(self.tenant_schema):
            try:
                note = Note.objects.create(idempotency_key=idempotency_key, run_id=self.run_id, text=text)
            except IntegrityError:
                note = Note.objects.get(idempotency_key=idempotency_key)
            return note.id


# --- Every tool call of a run: permissions first, then a built-in tool or a tenant's MCP server ---------------

_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, McpSessions] = weakref.WeakKeyDictionary()


def sessions() -> McpSessions:
    """The MCP sessions of the running loop (a worker process's IO loop)."""
    loop = asyncio.get_running_loop()
    pool = _SESSIONS.get(loop)
    if pool is None:
        pool = _SESSIONS[loop] = McpSessions(on_tools_changed=_tools_changed)
    return pool


async def _tools_changed(scope: str, server: ServerConfig) -> None:
    """A server said its tool list changed during a run's session: refresh the tenant's catalogue."""
    await asyncio.to_thread(refresh_catalogue, scope.split(":", 1)[0], server.id)


def refresh_catalogue(tenant_schema: str, server_id: str) -> None:
    """Refresh a server's catalogue on its own notification (recorded as the runtime's doing)."""
    from data_plane.services.tools import mcp_server_refresh
    from tenants.selectors import tenant_get_active_by_schema

    close_old_connections()
    try:
        tenant = tenant_get_active_by_schema(tenant_schema=tenant_schema)
        with schema_context(tenant_schema):
            mcp_server_refresh(tenant=tenant, server_id=UUID(server_id),
                               actor=Actor(kind="system", id="mcp-notification"))
    except Exception:  # the catalogue stays as it was; the next refresh (or notification) tries again
        logger.warning("Refreshing MCP server %s of %s on its notification failed", server_id, tenant_schema,
                       exc_info=True)


def release_run(tenant_schema: str, run_id: UUID | str) -> None:
    """Close the run's MCP sessions (it stopped working: finished, paused, waiting); without waiting."""
    async def close() -> None:
        await sessions().close_scope(f"{tenant_schema}:{run_id}")

    spawn(close)


@dataclass(frozen=True)
class _CallPlan:
    denial: str | None = None  # why the call may not run: an observation for the agent, and an audit event
    server: ServerConfig | None = None  # None: a built-in tool
    remote_name: str = ""


class ToolRouter:
    """The ToolRunner of a run's step: checks the tool's permission at call time (deny, argument constraints,
    approval required), then runs a built-in tool or calls the tool on the tenant's MCP server, on the
    run's session to it. A refused call is a tool result the agent reads, and an audit event; never a crash."""

    def __init__(self, *, tenant_schema: str, run_id: str, tenant: Any = None) -> None:
        self.tenant_schema, self.run_id, self.tenant = tenant_schema, run_id, tenant
        self.builtin = BuiltinToolRunner(tenant_schema=tenant_schema, run_id=run_id)

    async def call(self, call: ToolCall, *, idempotency_key: str) -> ToolResult:
        started = time.perf_counter()
        plan = await asyncio.to_thread(self._plan, call)
        if plan.denial is not None:
            return ToolResult(call_id=call.id, name=call.name, content=plan.denial, is_error=True,
                              latency_ms=round((time.perf_counter() - started) * 1000, 3))
        if plan.server is None:
            return await self.builtin.call(call, idempotency_key=idempotency_key)
        outcome = await sessions().call(f"{self.tenant_schema}:{self.run_id}", plan.server, plan.remote_name,
                                        call.arguments, meta={"io.agentplane/idempotency-key": idempotency_key})
        return ToolResult(call_id=call.id, name=call.name, content=outcome.text, is_error=outcome.is_error,
                          structured=outcome.structured if _is_json(outcome.structured) else None,
                          latency_ms=round((time.perf_counter() - started) * 1000, 3))

    def _plan(self, call: ToolCall) -> _CallPlan:
        from data_plane.services.tools import server_config

        close_old_connections()
        with schema_context(self.tenant_schema):
            found = Run.objects.filter(id=self.run_id).values_list("agent_version_id", "agent_version__agent_id").first()
            if found is None:
                return _CallPlan(denial=f"Run {self.run_id} is gone; the call was not made.")
            version_id, agent_id = found
            permission = tool_permission_effective(tenant_schema=self.tenant_schema, agent_id=agent_id,
                                                   tool=call.name)
            denial = _denial(call, permission, version_id)
            if denial is not None:
                self._audit_denial(call, denial, permission)
                return _CallPlan(denial=denial)
            if "__" not in call.name:
                return _CallPlan()
            tool = McpTool.objects.select_related("server").filter(
                name=call.name, is_active=True, server__status__in=("active", "error")).first()
            if tool is None:
                return _CallPlan(denial=f"Tool {call.name!r} is no longer in the tenant's catalogue (its MCP server "
                                        "was archived or stopped listing it); the call was not made.")
            return _CallPlan(server=server_config(tenant_schema=self.tenant_schema, server=tool.server),
                             remote_name=tool.remote_name)

    def _audit_denial(self, call: ToolCall, denial: str, permission: ToolPermission | None) -> None:
        if self.tenant is None:
            return
        audit_event_record(tenant=self.tenant, actor=Actor(kind="system", id="runtime"), action="tool.denied",
                           target_type="run", target_id=str(self.run_id),
                           data={"tool": call.name, "call_id": call.id, "reason": denial[:300],
                                 "rule": permission.mode if permission else None,
                                 "rule_id": str(permission.id) if permission else None})


def _denial(call: ToolCall, permission: ToolPermission | None, agent_version_id: Any) -> str | None:
    if permission is None:
        return None
    scope = f"for agent {permission.agent_id}" if permission.agent_id else "for this tenant"
    if permission.mode == ToolPermission.Mode.DENY:
        return f"Denied: the tool {call.name!r} is not allowed {scope} (policy). Do not retry it; find another way."
    if permission.mode == ToolPermission.Mode.REQUIRE_APPROVAL:
        spec = AgentVersion.objects.filter(id=agent_version_id).values_list("spec", flat=True).first() or {}
        defined = next((t for t in spec.get("tools", ()) if t.get("name") == call.name), {})
        if not defined.get("requires_approval"):
            return (f"Denied: the tool {call.name!r} now requires a human's approval {scope}, and this agent version "
                    "does not ask for it; the agent's next version will.")
    if permission.argument_schema is not None:
        try:
            jsonschema.validate(call.arguments, permission.argument_schema)
        except jsonschema.ValidationError as exc:
            return f"Denied: these arguments to {call.name!r} are not allowed {scope}: {exc.message}"
    return None


async def fetch_check(url: str, hosts: list[str]) -> None:
    """Refuse (ValueError, an observation for the agent) a URL whose host the tenant does not allow, or that
    resolves to a private, loopback or link-local address (unless the operator allows those)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url[:200]!r} is not an http(s) URL")
    host = parts.hostname.lower()
    if not any(host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])) for allowed in hosts):
        raise ValueError(f"host {host!r} is not on this tenant's allow-list for http_fetch "
                         f"({', '.join(hosts) or 'empty'}); an admin can add it in the tool settings")
    if settings.HTTP_FETCH_ALLOW_PRIVATE_NETWORKS:
        return
    address = await asyncio.to_thread(private_address, host, parts.port)
    if address is not None:
        raise ValueError(f"host {host!r} resolves to a private address ({address}); http_fetch reaches public "
                         "hosts only")


def _is_json(value: Any) -> bool:
    return value is None or isinstance(value, (dict, list, str, int, float, bool))
