"""The MCP adapter over streamable HTTP (our transport under the SDK's client session) against the SDK-built
toolbox as its own process, answering with event streams (the SDK's default) and with JSON bodies: a run's
session and its connection kept across calls, credentials and idempotency keys carried, a server error, a
timeout, a server that forgot the session (404: a new session), and the server's notifications."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from data_plane.runtime.adapters.mcp import McpSessions, McpUnreachable, ServerConfig, discover
from data_plane.runtime.adapters.mcp_http import EventParser, EventTooLarge, ServerEvent
from tests.mcp_servers import TOOLBOX
from tests.processes import free_port, running, wait_for

MODES = ["events", "json"]


@contextmanager
def toolbox_serving(port: int, log: Path, mode: str) -> Iterator[None]:
    args = [sys.executable, TOOLBOX, "--http", str(port)] + {"json": ["--json-response"],
                                                              "resumable": ["--resumable"]}.get(mode, [])

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    with running(args, log_path=log, env={"PATH": "/usr/bin:/bin"}):
        wait_for(listening, timeout=30, what=f"the HTTP toolbox to listen; see {log}")
        yield


@pytest.fixture(scope="module", params=MODES)
def served(request, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The toolbox over HTTP in one answering mode; yields its endpoint and its log (one line per request)."""
    port, log = free_port(), tmp_path_factory.mktemp(f"toolbox-{request.param}") / "toolbox.log"
    with toolbox_serving(port, log, request.param):
        yield f"http://127.0.0.1:{port}/mcp", log


def remote(url: str, timeout: float = 10.0, **headers: str) -> ServerConfig:
    return ServerConfig(id="h1", name="remote", transport="http", url=url, headers=headers, timeout_seconds=timeout)


async def no_wait(seconds: float) -> None:
    return None


def requests_logged(log: Path, method: str, status: int) -> list[str]:
    """The client ports of the requests the server logged with ``method`` and ``status``."""
    return re.findall(rf'127\.0\.0\.1:(\d+) - "{method} /mcp HTTP/1\.1" {status}', log.read_text(errors="replace"))


def test_a_run_keeps_its_session_and_its_connection_and_calls_carry_credentials_and_keys(served):
    url, log = served
    before = len(requests_logged(log, "POST", 200))

    async def scenario() -> tuple[list[str], dict]:
        pool = McpSessions()
        config = remote(url, Authorization="Bearer tenant-secret")
        texts = [(await pool.call("run-1", config, "counter", {})).text for _ in range(2)]
        texts.append((await pool.call("run-2", config, "counter", {})).text)  # another run, another session
        texts += [(await pool.call("run-1", config, "add", {"a": n, "b": 1})).text for n in range(10)]
        carried = await pool.call("run-1", config, "carried", {}, meta={"io.agentplane/idempotency-key": "step-7"})
        await pool.close_all()
        return texts, json.loads(carried.text)

    texts, carried = asyncio.run(scenario())
    assert texts == ["default=1", "default=2", "default=1"] + [str(n + 1) for n in range(10)]
    assert carried == {"authorization": "Bearer tenant-secret", "idempotency_key": "step-7"}
    ports = requests_logged(log, "POST", 200)[before:]
    # run-1's 15 requests (initialize, the SDK's tool listing, 13 calls) and run-2's 3, on two or three
    # connections each (a call can start before the last one's stream is read to its end, then the two take
    # turns), not one connection a request
    assert len(ports) == 18 and len(set(ports)) <= 6


def test_a_refused_call_is_an_error_result_not_a_retry(served):
    url, log = served

    async def scenario():
        pool = McpSessions(sleep=no_wait)
        config = remote(url)
        unknown = await pool.call("run-1", config, "no_such_tool", {})
        invalid = await pool.call("run-1", config, "sleep", {"seconds": "a while"})
        after = await pool.call("run-1", config, "counter", {})  # the same session goes on
        await pool.close_all()
        return unknown, invalid, after

    unknown, invalid, after = asyncio.run(scenario())
    assert unknown.is_error and "no_such_tool" in unknown.text
    assert invalid.is_error and "seconds" in invalid.text
    assert not after.is_error and after.text == "default=1"


def test_a_call_that_times_out_is_retried_then_unreachable_and_the_breaker_opens(served):
    url, _ = served

    async def scenario() -> tuple[str, str]:
        pool = McpSessions(sleep=no_wait, retries=1, breaker_threshold=1, breaker_open_seconds=60)
        config = remote(url, timeout=1.0)
        with pytest.raises(McpUnreachable) as failed:
            await pool.call("run-1", config, "sleep", {"seconds": 5})
        with pytest.raises(McpUnreachable) as fast:
            await pool.call("run-1", config, "add", {"a": 1, "b": 2})
        await pool.close_all()
        return str(failed.value), str(fast.value)

    first, fast = asyncio.run(scenario())
    assert first == "MCP server 'remote' failed 2 attempts at 'sleep': no answer within 1 s."
    assert "circuit open" in fast


def test_a_cancelled_call_tells_the_server_and_leaves_the_session_usable(served):
    url, log = served
    accepted = len(requests_logged(log, "POST", 202))

    async def scenario() -> tuple[str, float]:
        pool = McpSessions(sleep=no_wait)
        config = remote(url)
        first = (await pool.call("run-1", config, "counter", {})).text
        call = asyncio.create_task(pool.call("run-1", config, "sleep", {"seconds": 30}))
        await asyncio.sleep(0.5)
        call.cancel()  # the run was stopped
        with pytest.raises(asyncio.CancelledError):
            await call
        started = asyncio.get_running_loop().time()
        second = (await pool.call("run-1", config, "counter", {})).text
        elapsed = asyncio.get_running_loop().time() - started
        await pool.close_all()
        return first + " " + second, elapsed

    texts, elapsed = asyncio.run(scenario())
    assert texts == "default=1 default=2" and elapsed < 5  # the same session, not held up by the sleeper
    # notifications/initialized and notifications/cancelled
    assert len(requests_logged(log, "POST", 202)) - accepted == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_server_that_forgot_the_session_is_answered_with_a_new_one(mode, tmp_path):
    port = free_port()

    async def call(pool: McpSessions, config: ServerConfig) -> str:
        return (await pool.call("run-1", config, "counter", {})).text

    async def scenario() -> list[str]:
        pool = McpSessions(sleep=no_wait)
        config = remote(f"http://127.0.0.1:{port}/mcp")
        with toolbox_serving(port, tmp_path / "first.log", mode):
            texts = [await call(pool, config), await call(pool, config)]
        with toolbox_serving(port, tmp_path / "second.log", mode):  # restarted: it knows no session
            await asyncio.sleep(0.2)
            texts += [await call(pool, config), await call(pool, config)]
        await pool.close_all()
        return texts

    texts = asyncio.run(scenario())
    assert texts == ["default=1", "default=2", "default=1", "default=2"]
    assert len(requests_logged(tmp_path / "second.log", "POST", 404)) >= 1  # the old session's id was refused


def test_a_wrong_endpoint_is_unreachable(served):
    url, _ = served

    async def scenario() -> str:
        pool = McpSessions(sleep=no_wait, retries=0)
        with pytest.raises(McpUnreachable) as failed:
            await pool.call("run-1", remote(url.replace("/mcp", "/nothing-here")), "add", {"a": 1, "b": 2})
        await pool.close_all()
        return str(failed.value)

    assert asyncio.run(scenario()) == ("MCP server 'remote' failed 1 attempts at 'add': McpUnreachable: MCP server "
                                       "'remote' could not be reached: MCPError: Not Found.")


def test_an_event_stream_broken_before_the_answer_is_resumed(tmp_path):
    port = free_port()

    async def scenario() -> tuple[str, str]:
        pool = McpSessions(sleep=no_wait, retries=0)  # no second attempt: the first one has to get the answer
        config = remote(f"http://127.0.0.1:{port}/mcp")
        interrupted = await pool.call("run-1", config, "interrupted", {})
        after = await pool.call("run-1", config, "counter", {})
        await pool.close_all()
        return interrupted.text, after.text

    with toolbox_serving(port, tmp_path / "toolbox.log", "resumable"):
        assert asyncio.run(scenario()) == ("answered after the break", "default=1")


def test_a_redirect_within_the_endpoint_origin_is_followed(served):
    url, log = served  # Starlette sends /mcp/ to /mcp with a 307

    async def scenario() -> str:
        pool = McpSessions(sleep=no_wait, retries=0)
        outcome = await pool.call("run-1", remote(url + "/"), "add", {"a": 2, "b": 3})
        await pool.close_all()
        return outcome.text

    assert asyncio.run(scenario()) == "5"
    assert len(re.findall(r'"POST /mcp/ HTTP/1\.1" 307', log.read_text(errors="replace"))) >= 3


def test_a_server_that_is_down_is_unreachable():
    async def scenario() -> str:
        pool = McpSessions(sleep=no_wait, retries=1)
        with pytest.raises(McpUnreachable) as failed:
            await pool.call("run-1", remote(f"http://127.0.0.1:{free_port()}/mcp", timeout=2), "add", {"a": 1, "b": 2})
        await pool.close_all()
        return str(failed.value)

    assert "could not be reached" in asyncio.run(scenario())


def test_discovery_and_a_tools_changed_notification_over_http(served):
    url, _ = served
    seen: list[tuple[str, str]] = []
    done = asyncio.Event()

    async def changed(scope: str, server: ServerConfig) -> None:
        seen.append((scope, server.name))
        done.set()

    async def scenario() -> tuple[list[str], str, list[str]]:
        before = [t.name for t in await discover(remote(url))]
        pool = McpSessions(on_tools_changed=changed)
        outcome = await pool.call("run-1", remote(url), "grow", {})
        await asyncio.wait_for(done.wait(), 10)
        after = [t.name for t in await discover(remote(url))]
        await pool.close_all()
        return before, outcome.text, after

    before, text, after = asyncio.run(scenario())
    assert before == ["add", "shout", "counter", "sleep", "grow", "interrupted", "pid", "whoami", "carried"]
    assert text == "grown" and seen == [("run-1", "remote")] and after == before + ["grown"]


# --- server-sent events, as the transport reads them --------------------------------------------------------------


def test_events_are_read_across_chunks_whatever_the_line_ends():
    parser = EventParser()
    events = []
    for chunk in [b"event: message\r", b"\nid: 7\r\ndata: {\"a\":", b" 1}\r\n\r\n: ping\n\n", b"data: x\rdata: y\r\r",
                  b": the CR before this ends the event\n"]:
        events += parser.feed(chunk)
    assert events == [ServerEvent("message", b'{"a": 1}', "7"), ServerEvent("message", b"x\ny", "7")]
    assert parser.last_id == "7"


def test_an_event_with_an_id_and_no_data_is_only_a_resumption_point():
    parser = EventParser()
    assert parser.feed(b"id: 42\nretry: 250\ndata: \n\n") == []
    assert (parser.last_id, parser.retry_ms) == ("42", 250)


def test_an_event_larger_than_the_limit_is_refused():
    parser = EventParser(max_bytes=10)
    with pytest.raises(EventTooLarge):
        parser.feed(b"data: " + b"x" * 11)
