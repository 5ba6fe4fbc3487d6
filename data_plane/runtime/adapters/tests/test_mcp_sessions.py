"""The MCP adapter against real server processes (the SDK-built toolbox over stdio): a session per scope
reused across calls, timeouts with retries, the circuit breaker, a server that dies mid-session, closing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from data_plane.runtime.adapters.mcp import McpSessions, McpUnreachable, ServerConfig, discover
from tests.mcp_servers import TOOLBOX



def toolbox(timeout: float = 10.0) -> ServerConfig:
    return ServerConfig(id="s1", name="toolbox", transport="stdio", command=sys.executable, args=(TOOLBOX,),
                        env={"TOOLBOX_IDENTITY": "bound"}, timeout_seconds=timeout)


async def no_wait(seconds: float) -> None:
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_discovery_lists_every_tool_with_its_schema():
    tools = asyncio.run(discover(toolbox()))
    assert [t.name for t in tools] == ["add", "shout", "counter", "sleep", "grow", "interrupted", "pid", "whoami", "carried"]
    assert tools[0].input_schema["required"] == ["a", "b"] and tools[0].description == "Add two integers."


def test_a_scope_keeps_its_session_and_its_server_state_until_closed():
    async def scenario() -> tuple[list[str], bool]:
        pool = McpSessions()
        config = toolbox()
        texts = [(await pool.call("run-1", config, "counter", {})).text for _ in range(2)]
        texts.append((await pool.call("run-2", config, "counter", {})).text)  # another run, another session
        texts.append((await pool.call("run-1", config, "whoami", {})).text)  # its env, nothing of ours
        pid = int((await pool.call("run-1", config, "pid", {})).text)
        await pool.close_scope("run-1")
        await asyncio.sleep(0.5)
        gone = not alive(pid)
        await pool.close_all()
        return texts, gone

    texts, gone = asyncio.run(scenario())
    assert texts == ["default=1", "default=2", "default=1", "bound"]
    assert gone  # closing the run's session ended its server process


def test_a_call_that_times_out_is_retried_then_unreachable_and_the_breaker_opens():
    async def scenario() -> tuple[str, str, float]:
        pool = McpSessions(sleep=no_wait, retries=1, breaker_threshold=1, breaker_open_seconds=60)
        config = toolbox(timeout=1.0)
        errors = []
        with pytest.raises(McpUnreachable) as failed:
            await pool.call("run-1", config, "sleep", {"seconds": 5})
        errors.append(str(failed.value))
        started = time.monotonic()
        with pytest.raises(McpUnreachable) as fast:
            await pool.call("run-1", config, "add", {"a": 1, "b": 2})
        elapsed = time.monotonic() - started
        await pool.close_all()
        return errors[0], str(fast.value), elapsed

    first, fast, elapsed = asyncio.run(scenario())
    assert first == "MCP server 'toolbox' failed 2 attempts at 'sleep': no answer within 1 s."
    assert "circuit open" in fast and elapsed < 0.1  # refused without contacting the server


def test_a_server_that_dies_mid_session_is_reached_again_on_a_fresh_session():
    async def scenario() -> tuple[str, str, int, int]:
        pool = McpSessions(sleep=no_wait)
        config = toolbox()
        before = (await pool.call("run-1", config, "counter", {})).text
        pid = int((await pool.call("run-1", config, "pid", {})).text)
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        after = (await pool.call("run-1", config, "counter", {})).text  # retried on a new process
        new_pid = int((await pool.call("run-1", config, "pid", {})).text)
        await pool.close_all()
        return before, after, pid, new_pid

    before, after, pid, new_pid = asyncio.run(scenario())
    assert (before, after) == ("default=1", "default=1") and new_pid != pid


def test_an_unknown_tool_is_an_error_result_not_a_retry():
    async def scenario():
        pool = McpSessions(sleep=no_wait)
        outcome = await pool.call("run-1", toolbox(), "no_such_tool", {})
        await pool.close_all()
        return outcome

    outcome = asyncio.run(scenario())
    assert outcome.is_error and "no_such_tool" in outcome.text


def test_a_server_published_by_others_works_the_same_way():
    """mcp-server-time (the MCP project's reference time server, installed with the dev dependencies)."""
    config = ServerConfig(id="t1", name="time", transport="stdio", command=sys.executable,
                          args=("-m", "mcp_server_time", "--local-timezone", "UTC"), timeout_seconds=20)

    async def scenario():
        tools = await discover(config)
        pool = McpSessions(sleep=no_wait)
        outcome = await pool.call("run-1", config, "convert_time", {
            "source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})
        await pool.close_all()
        return tools, outcome

    tools, outcome = asyncio.run(scenario())
    assert {"get_current_time", "convert_time"} <= {t.name for t in tools}
    assert not outcome.is_error and '"timezone": "Asia/Tokyo"' in outcome.text and "21:00" in outcome.text


def test_a_tools_changed_notification_during_a_session_is_handed_on():
    seen: list[tuple[str, str]] = []
    done = asyncio.Event()

    async def changed(scope: str, server: ServerConfig) -> None:
        seen.append((scope, server.name))
        done.set()

    async def scenario() -> list:
        pool = McpSessions(on_tools_changed=changed)
        config = toolbox()
        outcome = await pool.call("run-1", config, "grow", {})
        await asyncio.wait_for(done.wait(), 10)
        tools = await discover(config)  # a new process: it offers grown only once asked to grow
        await pool.close_all()
        return [outcome.text, [t.name for t in tools]]

    text, names = asyncio.run(scenario())
    assert text == "grown" and seen == [("run-1", "toolbox")] and "grown" not in names
