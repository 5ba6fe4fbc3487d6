"""Tenants' MCP servers through the official ``mcp`` SDK client: discovery, and tool calls on sessions that
live as long as a run needs them. A remote server's session runs on our streamable HTTP transport (mcp_http:
the SDK's own opened a connection per call), a local one on the SDK's stdio transport.

One session per run and server, reused across that run's calls (a stateful server keeps its state between
them) and closed when the run stops working (or after ``IDLE_SECONDS`` unused). A session is owned by a task
of its own: the SDK's transports are async context managers that must be entered and left by one task.
Calls have a timeout; a transport failure is retried with exponential backoff and jitter on a fresh
session; a server that keeps failing opens its circuit breaker, and calls fail fast (ToolUnavailable, a
transient error: the step is retried later) until it half-opens again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types.jsonrpc import CONNECTION_CLOSED, REQUEST_TIMEOUT

from data_plane.runtime.adapters.mcp_http import StreamableHttp
from data_plane.runtime.core.ports import ToolUnavailable

logger = logging.getLogger(__name__)

IDLE_SECONDS = 300.0
# JSON-RPC errors the SDK raises for a lost connection or a request it gave up on: worth a fresh session.
TRANSPORT_ERRORS = (CONNECTION_CLOSED, REQUEST_TIMEOUT)
CONNECT_SECONDS = 15.0  # at least this long to open a session: a local server's process has to start
RETRIES = 2  # after the first attempt
BREAKER_THRESHOLD = 5  # consecutive failures that open a server's circuit
BREAKER_OPEN_SECONDS = 30.0
MAX_RESULT_CHARS = 100_000
# What a local server's process gets from our environment: nothing but a PATH and a locale; its own
# variables (its credentials) are added from its sealed configuration.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class ServerConfig:
    id: str
    name: str
    transport: str  # http | stdio
    url: str = ""
    command: str = ""
    args: Sequence[str] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class RemoteTool:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class CallOutcome:
    text: str
    is_error: bool
    structured: Any = None


_BACKGROUND: set[asyncio.Task[None]] = set()  # notification handlers running (kept referenced until done)


class McpUnreachable(ToolUnavailable):
    """The server could not be reached or did not answer in time (after retries)."""


def _transport(config: ServerConfig) -> Any:
    """What the SDK's client session runs on: our streamable HTTP transport (see mcp_http), or the SDK's stdio."""
    if config.transport == "http":
        return StreamableHttp(config.url, headers=config.headers,
                              connect_seconds=max(CONNECT_SECONDS, config.timeout_seconds),
                              read_seconds=config.timeout_seconds * 10).connect()
    return StdioServerParameters(command=config.command, args=list(config.args), env={**BASE_ENV, **config.env},
                                 cwd=config.cwd)


class _Session:
    """One open session to one server, owned by its own task until closed."""

    def __init__(self, config: ServerConfig, on_tools_changed: Callable[[], Awaitable[None]] | None = None) -> None:
        self.config = config
        self.on_tools_changed = on_tools_changed
        self.client: Client | None = None
        self.error: BaseException | None = None
        self.used_at = time.monotonic()
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._task = asyncio.create_task(self._own())
        limit = max(CONNECT_SECONDS, self.config.timeout_seconds)
        try:
            await asyncio.wait_for(self._ready.wait(), limit)
        except asyncio.TimeoutError:
            await self.close()
            raise McpUnreachable(f"MCP server {self.config.name!r} did not open a session within {limit:g} s.") \
                from None
        if self.client is None:
            raise McpUnreachable(f"MCP server {self.config.name!r} could not be reached: {_describe(self.error)}")

    async def _own(self) -> None:
        try:
            # The client's own read timeout covers the handshake too: generous; each call has its own limit.
            async with Client(_transport(self.config), mode="legacy", message_handler=self._on_message,
                              read_timeout_seconds=max(CONNECT_SECONDS, self.config.timeout_seconds)) as client:
                self.client = client
                self._ready.set()
                await self._closing.wait()
        except Exception as exc:  # the opener reports it; a session that dies later fails its next call
            self.error = exc
        finally:
            self.client = None
            self._ready.set()

    async def _on_message(self, message: Any) -> None:
        """The server's notifications: a changed tool list is handed on (without holding up the session)."""
        notification = getattr(message, "root", message)
        if getattr(notification, "method", None) == "notifications/tools/list_changed" and self.on_tools_changed:
            task = asyncio.create_task(self.on_tools_changed())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except (asyncio.TimeoutError, Exception):
                self._task.cancel()

    async def call(self, name: str, arguments: Mapping[str, Any], meta: Mapping[str, Any]) -> CallOutcome:
        client = self.client
        if client is None:
            raise McpUnreachable(f"The session to MCP server {self.config.name!r} is closed.")
        self.used_at = time.monotonic()
        async with asyncio.timeout(self.config.timeout_seconds):  # in this task: wait_for would start another
            result = await client.call_tool(name, dict(arguments), meta=dict(meta))
        return _outcome(result)


def _outcome(result: Any) -> CallOutcome:
    parts: list[str] = []
    for part in result.content or ():
        kind = getattr(part, "type", "")
        if kind == "text":
            parts.append(part.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {getattr(part, 'mime_type', '')}, {len(getattr(part, 'data', '') or '') * 3 // 4}"
                         " bytes]")
        elif kind == "resource_link":
            parts.append(f"[resource {getattr(part, 'uri', '')}]")
        elif kind == "resource":
            resource = getattr(part, "resource", None)
            parts.append(getattr(resource, "text", None) or f"[resource {getattr(resource, 'uri', '')}]")
    structured = getattr(result, "structured_content", None)
    text = "\n".join(parts) if parts else ("" if structured is None else str(structured))
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[truncated: {len(text)} characters in all]"
    return CallOutcome(text=text, is_error=bool(getattr(result, "is_error", False)), structured=structured)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "no answer"
    inner = getattr(error, "exceptions", None)  # an anyio ExceptionGroup: the first real cause
    if inner:
        return _describe(inner[0])
    return f"{type(error).__name__}: {error}"[:300]


@dataclass
class _Breaker:
    failures: int = 0
    opened_at: float | None = None

    threshold: int = BREAKER_THRESHOLD
    open_seconds: float = BREAKER_OPEN_SECONDS

    def check(self, server: str) -> None:
        if self.opened_at is not None and time.monotonic() - self.opened_at < self.open_seconds:
            raise McpUnreachable(f"MCP server {server!r} failed {self.failures} times in a row; calls are paused "
                                 f"for {self.open_seconds:g} s (circuit open).")

    def record(self, ok: bool) -> None:
        if ok:
            self.failures, self.opened_at = 0, None
        else:
            self.failures += 1
            if self.failures >= self.threshold:
                self.opened_at = time.monotonic()


class McpSessions:
    """The sessions of one event loop (a worker process's IO loop), keyed by (scope, server id); a scope
    is a run. Not thread-safe: use it from its loop only."""

    def __init__(self, *, sleep: Any = asyncio.sleep, retries: int = RETRIES,
                 breaker_threshold: int = BREAKER_THRESHOLD, breaker_open_seconds: float = BREAKER_OPEN_SECONDS,
                 on_tools_changed: Callable[[str, ServerConfig], Awaitable[None]] | None = None) -> None:
        self.sessions: dict[tuple[str, str], _Session] = {}
        self.breakers: dict[str, _Breaker] = {}
        self.sleep = sleep
        self.retries = retries
        self.breaker_threshold, self.breaker_open_seconds = breaker_threshold, breaker_open_seconds
        self.on_tools_changed = on_tools_changed  # (scope, server): its tool list changed during a session

    async def call(self, scope: str, config: ServerConfig, tool: str, arguments: Mapping[str, Any],
                   *, meta: Mapping[str, Any] | None = None) -> CallOutcome:
        """Call ``tool`` on the scope's session to the server. Raises McpUnreachable after retries (or at
        once with the server's circuit open). A tool's own failure is an outcome with ``is_error``."""
        await self._sweep()
        breaker = self.breakers.setdefault(config.id, _Breaker(threshold=self.breaker_threshold,
                                                               open_seconds=self.breaker_open_seconds))
        breaker.check(config.name)
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await self.sleep(min(4.0, 0.2 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))
            try:
                session = await self._session(scope, config)
                outcome = await session.call(tool, arguments, meta or {})
            except MCPError as exc:
                if exc.code not in TRANSPORT_ERRORS:  # the server answered, with an error: a retry changes nothing
                    breaker.record(True)
                    return CallOutcome(text=f"The MCP server {config.name!r} refused the call: {exc.message}",
                                       is_error=True)
                last = exc
                logger.warning("MCP call %s on %s lost its connection (attempt %d): %s", tool, config.name,
                               attempt + 1, exc.message)
                await self._drop(scope, config.id)
                continue
            except Exception as exc:  # transports, timeouts, a session that died: try again on a fresh one
                last = exc
                logger.warning("MCP call %s on %s failed (attempt %d): %s", tool, config.name, attempt + 1,
                               _describe(exc))
                await self._drop(scope, config.id)
                continue
            breaker.record(True)
            return outcome
        breaker.record(False)
        timed_out = isinstance(last, asyncio.TimeoutError)
        reason = f"no answer within {config.timeout_seconds:g} s" if timed_out else _describe(last)
        raise McpUnreachable(f"MCP server {config.name!r} failed {self.retries + 1} attempts at {tool!r}: {reason}.")

    async def close_scope(self, scope: str) -> None:
        for key in [key for key in self.sessions if key[0] == scope]:
            await self._drop(*key)

    async def close_all(self) -> None:
        for key in list(self.sessions):
            await self._drop(*key)

    async def _session(self, scope: str, config: ServerConfig) -> _Session:
        session = self.sessions.get((scope, config.id))
        if session is None or session.client is None:
            changed = self.on_tools_changed
            session = _Session(config, (lambda: changed(scope, config)) if changed else None)
            self.sessions[(scope, config.id)] = session
            try:
                await session.open()
            except BaseException:
                self.sessions.pop((scope, config.id), None)
                raise
        return session

    async def _drop(self, scope: str, server_id: str) -> None:
        session = self.sessions.pop((scope, server_id), None)
        if session is not None:
            await session.close()

    async def _sweep(self) -> None:
        now = time.monotonic()
        for key, session in list(self.sessions.items()):
            if now - session.used_at > IDLE_SECONDS:
                await self._drop(*key)


async def discover(config: ServerConfig) -> list[RemoteTool]:
    """The server's tools now (every page of its listing). Raises McpUnreachable."""
    session = _Session(config)
    try:
        await session.open()
        assert session.client is not None
        tools: list[RemoteTool] = []
        cursor = None
        for _ in range(100):
            listing = await asyncio.wait_for(session.client.list_tools(cursor=cursor), config.timeout_seconds)
            tools.extend(RemoteTool(name=t.name, description=t.description or "",
                                    input_schema=dict(t.input_schema or {"type": "object"})) for t in listing.tools)
            cursor = getattr(listing, "next_cursor", None)
            if not cursor:
                break
        return tools
    except asyncio.TimeoutError:
        raise McpUnreachable(f"MCP server {config.name!r} did not list its tools within "
                             f"{config.timeout_seconds:g} s.") from None
    finally:
        await session.close()
