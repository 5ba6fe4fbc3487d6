"""An MCP server for the tests, written with the official SDK: ``python tests/mcp_servers/toolbox.py``
[--http PORT [--json-response] [--session-idle-seconds S]] [--name NAME] [--changes FILE]. Over stdio by default,
or streamable HTTP on PORT (path /mcp), answering requests with event streams (the SDK's default) or, with
``--json-response``, with JSON bodies; a session unused for S seconds is forgotten (its id then answers 404).
With ``--changes``, the file (read at start) can hold ``extra`` (one more tool, ``extra``) and ``no-shout``
(``shout`` is not offered): a way to change the server's tools between two discoveries.

Tools: ``add`` (a + b), ``shout`` (text upper-cased), ``counter`` (a per-session count: state kept by a
stateful server between calls of one session), ``sleep`` (waits, to test timeouts), ``pid`` (its process),
``grow`` (adds a tool ``grown`` and notifies the client that the tool list changed),
``whoami`` (the environment variable TOOLBOX_IDENTITY, to see which credentials a call carried) and ``carried``
(what the call's HTTP request and ``_meta`` carried: its Authorization header, its idempotency key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from mcp.server.mcpserver import Context, MCPServer


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
    parser.add_argument("--session-idle-seconds", type=float, default=None)
    args = parser.parse_args()
    changes = set(open(args.changes).read().split()) if args.changes and os.path.exists(args.changes) else set()
    server = build(args.name, changes)
    if args.http is None:
        server.run("stdio")
    else:
        options = {"session_idle_timeout": args.session_idle_seconds} if args.session_idle_seconds else {}
        server.run("streamable-http", host="127.0.0.1", port=args.http, json_response=args.json_response, **options)


if __name__ == "__main__":
    main()
