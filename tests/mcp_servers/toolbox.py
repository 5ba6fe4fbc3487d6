"""An MCP server for the tests, written with the official SDK: ``python tests/mcp_servers/toolbox.py``
[--http PORT] [--name NAME] [--changes FILE]. Over stdio by default, or streamable HTTP on PORT (path /mcp).
With ``--changes``, the file (read at start) can hold ``extra`` (one more tool, ``extra``) and ``no-shout``
(``shout`` is not offered): a way to change the server's tools between two discoveries.

Tools: ``add`` (a + b), ``shout`` (text upper-cased), ``counter`` (a per-session count: state kept by a
stateful server between calls of one session), ``sleep`` (waits, to test timeouts), ``pid`` (its process),
``grow`` (adds a tool ``grown`` and notifies the client that the tool list changed)
and ``whoami`` (the environment variable TOOLBOX_IDENTITY, to see which credentials a call carried).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from mcp.server.mcpserver import Context, MCPServer


def build(name: str, changes: set[str]) -> MCPServer:
    server = MCPServer(name)
    counts: dict[str, int] = {}

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
    def counter(label: str = "default") -> str:
        counts[label] = counts.get(label, 0) + 1
        return f"{label}={counts[label]}"

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

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=None)
    parser.add_argument("--name", default="toolbox")
    parser.add_argument("--changes", default=None)
    args = parser.parse_args()
    changes = set(open(args.changes).read().split()) if args.changes and os.path.exists(args.changes) else set()
    server = build(args.name, changes)
    if args.http is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
