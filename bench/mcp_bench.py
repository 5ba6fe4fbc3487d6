"""mcp_call_overhead: a tool call through our MCP adapter (the run's session to a local server over
streamable HTTP) minus the tool's own time, beside the SDK's bare client on its own session.

The server is the tests' SDK-built toolbox (tests/mcp_servers/toolbox.py) as its own process; the tool is
``add``, whose own time is a few microseconds, so the figure is the platform's cost per call: our session
pool, breaker and result conversion on top of the SDK's client session, our streamable HTTP transport
(data_plane/runtime/adapters/mcp_http.py) and the HTTP round trip. The bare client uses the SDK's own
transport, as any MCP client would out of the box.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

from mcp import Client

from bench.measure import percentile
from tests.mcp_servers import TOOLBOX
from tests.processes import free_port, running, wait_for
from data_plane.runtime.adapters.mcp import McpSessions, ServerConfig

REPO = Path(__file__).resolve().parent.parent


async def _measure(url: str, calls: int) -> dict[str, float]:
    config = ServerConfig(id="bench", name="toolbox", transport="http", url=url, timeout_seconds=10)
    pool = McpSessions()
    ours, theirs = [], []
    async with Client(url, mode="legacy") as bare:
        for index in range(calls + 20):
            started = time.perf_counter()
            outcome = await pool.call("bench-run", config, "add", {"a": index, "b": 1})
            ours_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            result = await bare.call_tool("add", {"a": index, "b": 1})
            theirs_ms = (time.perf_counter() - started) * 1000
            assert outcome.text == str(index + 1) and not result.is_error
            if index >= 20:  # warm-up: sessions, imports
                ours.append(ours_ms)
                theirs.append(theirs_ms)
    await pool.close_all()
    return {"mcp_call_overhead_p50_ms": percentile(ours, 50), "mcp_call_overhead_p99_ms": percentile(ours, 99),
            "mcp_sdk_call_p50_ms": percentile(theirs, 50)}


def bench_mcp(*, calls: int) -> dict[str, float]:
    port = free_port()

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    log = REPO / ".data" / "bench-logs" / "mcp-toolbox.log"
    with running([sys.executable, TOOLBOX, "--http", str(port), "--name", "bench"], log_path=log,
                 env={"PATH": "/usr/bin:/bin"}):
        wait_for(listening, timeout=30, what=f"the MCP toolbox to listen; see {log}")
        return asyncio.run(_measure(f"http://127.0.0.1:{port}/mcp", calls))
