"""An MCP server for the tests, written with the official SDK: ``python tests/mcp_servers/toolbox.py``
[--http PORT [--json-response] [--resumable]] [--name NAME] [--changes FILE]. Over stdio by default, or
streamable HTTP on PORT (path /mcp), answering requests with event streams (the SDK's default) or, with
``--json-response``, with JSON bodies; ``--resumable`` keeps its events in memory so that a client can resume a
broken stream with Last-Event-ID.
With ``--changes``, the file (read at start) can hold ``extra`` (one more tool, ``extra``) and ``no-shout``
(``shout`` is not offered): a way to change the server's tools between two discoveries.

Tools: ``add`` (a + b), ``shout`` (text upper-cased), ``counter`` (a per-session count: state kept by a
stateful server between calls of one session), ``sleep`` (waits, to test timeouts), ``pid`` (its process),
``grow`` (adds a tool ``grown`` and notifies the client that the tool list changed),
``whoami`` (the environment variable TOOLBOX_IDENTITY, to see which credentials a call carried), ``carried``
(what the call's HTTP request and ``_meta`` carried: its Authorization header, its idempotency key), and
``interrupted`` (closes its own event stream before it answers: the client has to resume it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore


class EventLog(EventStore):
    """Every event of every stream, in memory: what a resumable server keeps (in Redis, say) to replay."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []  # (event id, stream id, message or None)

    async def store_event(self, stream_id, message):  # type: ignore[no-untyped-def]
        event_id = str(len(self.events) + 1)
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        index = next((i for i, (event_id, _, _) in enumerate(self.events) if event_id == last_event_id), None)
        if index is None:
            return None
        stream_id = self.events[index][1]
        for event_id, stream, message in self.events[index + 1:]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))  # type: ignore[arg-type]
        return stream_id


def build(name: str, changes: set[str]) -> MCPServer:
    server = MCPServer(name)
    # Per session: over HTTP one process serves every client's session (over stdio, a process is a session).
    counts: dict[tuple[str, str], int] = {}

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    if "no-shout" not in changes:
        @server.tool(description="Upper-case a text.")
        def shout(text: str) -> str:
            return text.upper()

    if "extra" in changes:
        @server.tool(description="An extra tool.")
        def extra() -> str:
            return "extra"

    @server.tool(description="Count calls in this session.")
    def counter(ctx: Context, label: str = "default") -> str:
        key = ((ctx.headers or {}).get("mcp-session-id", ""), label)
        counts[key] = counts.get(key, 0) + 1
        return f"{label}={counts[key]}"

    @server.tool(description="Wait for some seconds, then answer.")
    async def sleep(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool(description="Offer one more tool from now on, and tell the client its tool list changed.")
    async def grow(ctx: Context) -> str:
        if "grown" not in {tool.name for tool in server._tool_manager.list_tools()}:
            server.add_tool(lambda: "grown", name="grown", description="A tool added at run time.")
        await ctx.request_context.session.send_tool_list_changed()
        return "grown"

    @server.tool(description="Close this call's event stream, then answer on the resumed one.")
    async def interrupted(ctx: Context) -> str:
        await ctx.close_sse_stream()
        await asyncio.sleep(0.3)
        return "answered after the break"

    @server.tool(description="This server's process id.")
    def pid() -> int:
        return os.getpid()

    @server.tool(description="Say who this server runs as.")
    def whoami() -> str:
        return os.environ.get("TOOLBOX_IDENTITY", "nobody")

    @server.tool(description="Say what this call carried: its Authorization header and idempotency key.")
    def carried(ctx: Context) -> str:
        meta = ctx.request_context.meta or {}
        return json.dumps({"authorization": (ctx.headers or {}).get("authorization"),
                           "idempotency_key": meta.get("io.agentplane/idempotency-key")})

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=None)
    parser.add_argument("--name", default="toolbox")
    parser.add_argument("--changes", default=None)
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--resumable", action="store_true")
    args = parser.parse_args()
    changes = set(open(args.changes).read().split()) if args.changes and os.path.exists(args.changes) else set()
    server = build(args.name, changes)
    if args.http is None:
        server.run("stdio")
    else:
        options = {"event_store": EventLog(), "retry_interval": 100} if args.resumable else {}
        server.run("streamable-http", host="127.0.0.1", port=args.http, json_response=args.json_response, **options)


if __name__ == "__main__":
    main()
