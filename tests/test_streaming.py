"""A run's stream end to end: real Daphne, real Redis, a real Celery worker, real websocket and HTTP clients.

Order and completeness of the events of a run with tool calls and an approval (decided over the socket);
a reconnect in the middle of a token stream; control messages; isolation between tenants; server-sent
events with the same events and resume semantics; a subscriber that never reads cannot hold anyone back.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import destroy_tenant, provision_for_test
from data_plane.tools import BUILTIN_TOOLS
from tenants.tests.factories import ApiKeyFactory

pytestmark = [pytest.mark.server, pytest.mark.worker]


@pytest.fixture
def pair(committed):
    provisioned = provision_for_test("stream-a"), provision_for_test("stream-b")
    yield provisioned
    for tenant in provisioned:
        destroy_tenant(tenant.tenant)


def tool(name: str, **overrides: Any) -> dict:
    return {**BUILTIN_TOOLS[name].to_json(), **overrides}


def register(model_server: str, scenario: dict) -> str:
    name = f"{scenario['name']}-{uuid.uuid4().hex[:8]}"
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", json={**scenario, "name": name},
               timeout=10).raise_for_status()
    return f"openai/{name}"


def api(daphne_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=daphne_url, headers={"Authorization": f"Bearer {key}"}, timeout=20)


def start_run(daphne_url: str, key: str, spec: dict, input: str = "go") -> str:
    with api(daphne_url, key) as client:
        agent = client.post("/v1/agents", json={"name": f"agent-{uuid.uuid4().hex[:8]}", "spec": spec})
        assert agent.status_code == 201, agent.text
        run = client.post("/v1/runs", json={"agent_id": agent.json()["id"], "input": input})
        assert run.status_code == 202, run.text
        return run.json()["id"]


def ws_url(daphne_url: str, run_id: str, after: str | None = None, **query: str) -> str:
    params = {**({"after": after} if after else {}), **query}
    suffix = ("?" + "&".join(f"{k}={v}" for k, v in params.items())) if params else ""
    return daphne_url.replace("http://", "ws://") + f"/v1/runs/{run_id}/stream{suffix}"


async def read_until(ws: Any, stop: Any, timeout: float = 60) -> list[dict]:
    """Messages until ``stop(message)`` is true (that one included)."""
    messages = []
    async with asyncio.timeout(timeout):
        async for raw in ws:
            message = json.loads(raw)
            messages.append(message)
            if stop(message):
                return messages
    raise AssertionError(f"the stream closed before the expected message; got {[m['type'] for m in messages]}")


def durable(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] not in ("message.delta", "stream.opened", "stream.idle", "ack")]


def rest_events(daphne_url: str, key: str, run_id: str) -> list[dict]:
    with api(daphne_url, key) as client:
        results, url = [], f"/v1/runs/{run_id}/events?page_size=200"
        while url:
            page = client.get(url).json()
            results += page["results"]
            url = page.get("next")
        return results


# The default loop: plan, act (tool calls), observe, reflect; a reflection without DONE acts again.
APPROVAL_TURNS = [
    {"content": "1. Work out the total. 2. Save it as a note.", "chunk_delay_ms": 2},
    {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
    {"content": "The total is {{last_tool}}."},
    {"content": "The note is still missing."},
    {"tool_calls": [{"name": "note_append", "arguments": {"text": "total 42"}}]},
    {"content": "Saved: {{last_tool}}"},
    {"content": "Total computed and saved. DONE"}]


def test_a_run_with_tools_and_an_approval_streams_every_event_in_order(daphne_url, worker_process, model_server,
                                                                       pair):
    # given
    a = pair[0]
    model = register(model_server, {"name": "stream-approval", "turns": APPROVAL_TURNS})
    run_id = start_run(daphne_url, a.key, {"instructions": "Be exact.", "models": [model], "tools": [
        tool("calculator"), tool("note_append", requires_approval=True)]})

    async def scenario() -> list[dict]:
        async with connect(ws_url(daphne_url, run_id), additional_headers={"Authorization": f"Bearer {a.key}"},
                           open_timeout=10) as ws:
            before = await read_until(ws, lambda m: m["type"] == "approval.requested")
            await ws.send(json.dumps({"type": "approve", "id": "decide-1"}))
            after = await read_until(ws, lambda m: m["type"] == "run.finished")
            return before + after

    # when
    messages = asyncio.run(scenario())
    # then: the stream opened, then durable events numbered 1, 2, 3... with nothing missing
    assert messages[0]["type"] == "stream.opened"
    events = durable(messages)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["run_id"] == run_id and e["v"] == 1 and e["ts"] for e in events)
    types = [e["type"] for e in events]
    for expected in (["run.status", "model.reply", "usage", "checkpoint.committed"],
                     ["tool.started", "tool.finished"], ["approval.requested", "run.status"],
                     ["approval.decided", "run.status"], ["run.status", "run.finished"]):
        assert _contains_in_order(types, expected), (expected, types)
    assert types.count("tool.started") == types.count("tool.finished") == 2
    assert events[-1]["data"]["status"] == "completed" and events[-1]["data"]["usage"]["output_tokens"] > 0
    # the approve message was acknowledged with the approval it decided
    acks = [m for m in messages if m["type"] == "ack"]
    assert [(m["id"], m["action"], m["data"]["approval"]["status"]) for m in acks] == [
        ("decide-1", "approve", "approved")]
    # a tool's start and finish carry the call, the finish its latency and result
    started = [e for e in events if e["type"] == "tool.started"]
    finished = [e for e in events if e["type"] == "tool.finished"]
    assert [e["data"]["call"]["name"] for e in started] == ["calculator", "note_append"]
    assert finished[0]["data"]["summary"] == "42" and finished[0]["data"]["latency_ms"] >= 0
    # the socket's events are exactly the log's (the REST list), whole model messages included
    logged = rest_events(daphne_url, a.key, run_id)
    assert [(e["seq"], e["type"], e["data"], e["ts"]) for e in events] == [
        (e["seq"], e["type"], e["data"], e["created_at"]) for e in logged]
    replies = [e for e in events if e["type"] == "model.reply"]
    assert replies[0]["data"]["message"]["content"] == "1. Work out the total. 2. Save it as a note."
    # the token deltas of each reply streamed while subscribed add up to its message (the deltas of a step
    # that had committed before the socket connected are not sent: its model.reply carries the message)
    deltas = [m for m in messages if m["type"] == "message.delta"]
    assert [d["n"] for d in deltas] == list(range(deltas[0]["n"], deltas[0]["n"] + len(deltas)))
    streamed: dict[str, str] = {}
    for delta in deltas:
        streamed[delta["data"]["stream"]] = streamed.get(delta["data"]["stream"], "") + delta["data"]["text"]
    contents = [r["data"]["message"]["content"] for r in replies if r["data"]["message"]["content"]]
    assert set(streamed.values()) <= set(contents) and len(streamed) == len(set(streamed.values()))
    assert contents[-1] == "Total computed and saved. DONE" and contents[-1] in streamed.values()


def _contains_in_order(items: list[str], expected: list[str]) -> bool:
    """``expected`` appears in ``items`` as a contiguous run."""
    return any(items[i:i + len(expected)] == expected for i in range(len(items)))


SLOW_WORDS = " ".join(f"word{i}" for i in range(60))


def test_a_reconnect_in_the_middle_of_a_token_stream_resumes_without_gap_or_duplicate(
        daphne_url, worker_process, model_server, pair):
    # given: a reply streamed slowly, word by word
    a = pair[0]
    model = register(model_server, {"name": "slow-stream", "turns": [
        {"content": SLOW_WORDS, "chunk_delay_ms": 25}, {"content": "Nothing to do. DONE"}]})
    run_id = start_run(daphne_url, a.key, {"instructions": "x", "models": [model], "graph": {
        "entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}})
    headers = {"Authorization": f"Bearer {a.key}"}

    async def scenario() -> tuple[list[dict], list[dict]]:
        async with connect(ws_url(daphne_url, run_id), additional_headers=headers, open_timeout=10) as ws:
            first = await read_until(ws, lambda m: m["type"] == "message.delta" and m["n"] >= 8)
        # when: the client drops and comes back with the id of the last thing it received
        last_id = first[-1]["id"]
        async with connect(ws_url(daphne_url, run_id, after=last_id), additional_headers=headers,
                           open_timeout=10) as ws:
            second = await read_until(ws, lambda m: m["type"] == "run.finished")
        return first, second

    first, second = asyncio.run(scenario())
    # then: the second connection started in the middle of the message...
    resumed_deltas = [m for m in second if m["type"] == "message.delta"]
    assert resumed_deltas and resumed_deltas[0]["n"] == first[-1]["n"] + 1
    # ...and together they hold every delta once, in order, and every durable event once, in order
    deltas = [m for m in first + second if m["type"] == "message.delta"]
    assert [d["n"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["data"]["text"] for d in deltas) == SLOW_WORDS
    events = durable(first) + durable(second)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    reply = next(e for e in events if e["type"] == "model.reply")
    assert reply["data"]["message"]["content"] == SLOW_WORDS
    # and a client that comes back after the run ended gets the rest from the log alone
    resumed_late = asyncio.run(_collect_ws(daphne_url, run_id, headers, after=str(events[2]["seq"])))
    assert [e["seq"] for e in durable(resumed_late)] == [e["seq"] for e in events[3:]]


async def _collect_ws(daphne_url: str, run_id: str, headers: dict, after: str | None = None) -> list[dict]:
    async with connect(ws_url(daphne_url, run_id, after=after), additional_headers=headers, open_timeout=10) as ws:
        return await read_until(ws, lambda m: m["type"] == "run.finished", timeout=30)


def test_control_messages_are_acknowledged_or_answered_with_a_clear_error(daphne_url, worker_process,
                                                                          model_server, pair):
    # given: a run that waits for an approval, and a read-only credential beside a full one
    a = pair[0]
    model = register(model_server, {"name": "control", "turns": [
        {"content": "1. Save a note."}, {"tool_calls": [{"name": "note_append", "arguments": {"text": "x"}}]},
        {"content": "Saved."}, {"content": "Saved. DONE"}, {"content": "You said {{last_user}}. DONE"}]})
    run_id = start_run(daphne_url, a.key, {"instructions": "x", "models": [model],
                                           "tools": [tool("note_append", requires_approval=True)]})
    reader = ApiKeyFactory(tenant=a.tenant, scopes=["runs:read"])
    headers = {"Authorization": f"Bearer {a.key}"}

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with connect(ws_url(daphne_url, run_id), additional_headers={
                "Authorization": f"Bearer {reader.plaintext}"}, open_timeout=10) as ws:
            await read_until(ws, lambda m: m["type"] == "approval.requested")
            await ws.send(json.dumps({"type": "approve", "id": "r1"}))
            seen["read_only"] = await read_until(ws, lambda m: m.get("id") == "r1")
        async with connect(ws_url(daphne_url, run_id), additional_headers=headers, open_timeout=10) as ws:
            await read_until(ws, lambda m: m["type"] == "approval.requested")
            for message in ({"type": "resume", "id": "c1"}, {"type": "dance", "id": "c2"},
                            {"type": "message", "id": "c3", "text": "hello"}):
                await ws.send(json.dumps(message))
                seen[message["id"]] = (await read_until(ws, lambda m, ref=message["id"]: m.get("id") == ref))[-1]
            await ws.send("{not json")
            seen["garbage"] = (await read_until(ws, lambda m: m["type"] == "error"))[-1]
            await ws.send(json.dumps({"type": "reject", "id": "c4", "comment": "not now"}))
            seen["c4"] = (await read_until(ws, lambda m: m.get("id") == "c4"))[-1]
            seen["finished"] = await read_until(ws, lambda m: m["type"] == "run.finished")
            await ws.send(json.dumps({"type": "cancel", "id": "c5"}))
            seen["c5"] = (await read_until(ws, lambda m: m.get("id") == "c5"))[-1]
        return seen

    seen = asyncio.run(scenario())
    # then
    denied = seen["read_only"][-1]
    assert (denied["type"], denied["code"], denied["status"]) == ("error", "missing_scope", 403)
    assert (seen["c1"]["type"], seen["c1"]["code"], seen["c1"]["status"]) == ("error", "illegal_transition", 409)
    assert "waiting_approval" in seen["c1"]["message"]
    assert (seen["c2"]["code"], seen["c2"]["status"]) == ("unknown_message", 400)
    assert "pause, resume, cancel" in seen["c2"]["message"]
    assert seen["c3"]["code"] == "illegal_transition" and "Wait for its run.finished" in seen["c3"]["message"]
    assert seen["garbage"]["code"] == "invalid_json"
    assert (seen["c4"]["type"], seen["c4"]["data"]["approval"]["status"]) == ("ack", "rejected")
    assert seen["finished"][-1]["data"]["status"] == "completed"  # a rejected call is an observation
    assert (seen["c5"]["code"], seen["c5"]["status"]) == ("illegal_transition", 409)


def test_pause_resume_and_a_follow_up_message_over_the_socket(daphne_url, worker_process, model_server, pair):
    # given: a run whose first reply streams slowly enough to pause in the middle of it
    a = pair[0]
    model = register(model_server, {"name": "pausable", "turns": [
        {"content": SLOW_WORDS, "chunk_delay_ms": 10}, {"content": "Second."}, {"content": "You said {{last_user}}"},
        {"content": "Bye."}]})
    run_id = start_run(daphne_url, a.key, {"instructions": "x", "models": [model], "graph": {
        "entry": "first", "nodes": [{"id": "first", "kind": "llm", "next": "second"},
                                    {"id": "second", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}})
    headers = {"Authorization": f"Bearer {a.key}"}

    async def scenario() -> list[dict]:
        async with connect(ws_url(daphne_url, run_id), additional_headers=headers, open_timeout=10) as ws:
            messages = await read_until(ws, lambda m: m["type"] == "message.delta")
            await ws.send(json.dumps({"type": "pause", "id": "p"}))
            messages += await read_until(ws, lambda m: m["type"] == "run.status" and m["data"]["status"] == "paused")
            await ws.send(json.dumps({"type": "resume", "id": "r"}))
            messages += await read_until(ws, lambda m: m["type"] == "run.finished")
            await ws.send(json.dumps({"type": "message", "id": "m", "text": "thanks"}))
            messages += await read_until(ws, lambda m: m["type"] == "run.finished")
            return messages

    messages = asyncio.run(scenario())
    # then: each control message was acknowledged, and the run took effect between steps
    acks = {m["id"]: m for m in messages if m["type"] == "ack"}
    assert acks["p"]["action"] == "pause"
    # by the time the acknowledgement is written a worker may have claimed the run already
    assert acks["r"]["data"]["run"]["status"] in ("queued", "running")
    assert acks["m"]["data"]["run"]["status"] in ("queued", "running")
    statuses = [m["data"]["status"] for m in messages if m["type"] == "run.status"]
    assert statuses == ["queued", "paused", "queued", "completed", "queued", "completed"], statuses
    replies = [m["data"]["message"]["content"] for m in messages if m["type"] == "model.reply"]
    assert replies == [SLOW_WORDS, "Second.", "You said thanks", "Bye."]
    user = [m for m in messages if m["type"] == "message.user"]
    assert [m["data"]["content"] for m in user] == ["thanks"]
    events = durable(messages)
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + len(events)))


@pytest.mark.parametrize("who", ["other tenant's key", "other run's token", "no credential", "bad cursor"])
def test_a_client_cannot_stream_what_it_may_not_see(daphne_url, worker_process, model_server, pair, who):
    # given: a run of tenant A
    a, b = pair
    model = register(model_server, {"name": "iso", "turns": [{"content": "ok"}]})
    spec = {"instructions": "x", "models": [model], "graph": {
        "entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}}
    run_id = start_run(daphne_url, a.key, spec)
    other_run = start_run(daphne_url, a.key, spec)
    with api(daphne_url, a.key) as client:
        token = client.post(f"/v1/runs/{other_run}/stream-token", json={}).json()["token"]
    headers, query, after, expected = {
        "other tenant's key": ({"Authorization": f"Bearer {b.key}"}, {}, None, ("run_not_found", 4404)),
        "other run's token": ({}, {"access_token": token}, None, ("run_not_found", 4404)),
        "no credential": ({}, {}, None, ("invalid_credentials", 4401)),
        "bad cursor": ({"Authorization": f"Bearer {a.key}"}, {}, "12;drop", ("invalid_cursor", 4400)),
    }[who]

    async def scenario() -> tuple[list[dict], int]:
        async with connect(ws_url(daphne_url, run_id, after=after, **query), additional_headers=headers,
                           open_timeout=10) as ws:
            messages = []
            try:
                async for raw in ws:
                    messages.append(json.loads(raw))
            except ConnectionClosed:
                pass
            return messages, ws.close_code

    # when
    messages, code = asyncio.run(scenario())
    # then: one error message that says why, then the close code; not a single event of the run
    assert [(m["type"], m["code"]) for m in messages] == [("error", expected[0])]
    assert code == expected[1]
    # and over server-sent events the same request is refused with the same problem
    sse_headers = {**headers, "Accept": "text/event-stream"}
    response = httpx.get(f"{daphne_url}/v1/runs/{run_id}/stream", headers=sse_headers, timeout=10,
                         params={**query, **({"after": after} if after else {})})
    assert (response.status_code, response.json()["code"]) == (expected[1] - 4000, expected[0])


def test_a_stream_token_lets_a_browser_stream_one_run_with_at_most_its_keys_scopes(daphne_url, worker_process,
                                                                                   model_server, pair):
    # given
    a = pair[0]
    model = register(model_server, {"name": "token", "turns": [{"content": "ok"}]})
    run_id = start_run(daphne_url, a.key, {"instructions": "x", "models": [model], "graph": {
        "entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}})
    reader = ApiKeyFactory(tenant=a.tenant, scopes=["runs:read"])
    with api(daphne_url, reader.plaintext) as client:
        # when
        escalation = client.post(f"/v1/runs/{run_id}/stream-token", json={"scopes": ["runs:write"]})
        issued = client.post(f"/v1/runs/{run_id}/stream-token", json={"ttl_seconds": 60})
    # then
    assert (escalation.status_code, escalation.json()["code"]) == (403, "scope_escalation")
    assert issued.status_code == 201 and issued.json()["scopes"] == ["runs:read"]
    assert issued.json()["stream_path"] == f"/v1/runs/{run_id}/stream"
    token = issued.json()["token"]
    messages = asyncio.run(_collect_token(daphne_url, run_id, token))
    assert messages[-1]["type"] == "run.finished"
    # and revoking the key ends its tokens
    with api(daphne_url, a.key) as client:
        assert client.post(f"/v1/api-keys/{reader.id}/revoke").status_code == 200
    refused = httpx.get(f"{daphne_url}/v1/runs/{run_id}/stream", params={"access_token": token}, timeout=10)
    assert (refused.status_code, refused.json()["code"]) == (401, "credential_revoked")


async def _collect_token(daphne_url: str, run_id: str, token: str) -> list[dict]:
    async with connect(ws_url(daphne_url, run_id, access_token=token), open_timeout=10) as ws:
        return await read_until(ws, lambda m: m["type"] == "run.finished", timeout=30)


def sse_events(daphne_url: str, key: str, run_id: str, last_event_id: str | None = None,
               stop_after: int | None = None) -> list[dict]:
    """The events of the server-sent stream until it ends (or ``stop_after`` events), parsed."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events: list[dict] = []
    with httpx.stream("GET", f"{daphne_url}/v1/runs/{run_id}/stream", headers=headers, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in frame:
                    event = json.loads(frame["data"])
                    assert frame["id"] == event["id"] and frame["event"] == event["type"]
                    events.append(event)
                    if stop_after is not None and len(events) >= stop_after:
                        return events
                frame = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                frame[field] = value
    return events


def test_server_sent_events_carry_the_same_events_and_resume_with_last_event_id(daphne_url, worker_process,
                                                                                model_server, pair):
    # given: a finished run with tool calls
    a = pair[0]
    model = register(model_server, {"name": "sse", "turns": [
        {"content": "1. Compute."}, {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+3"}}]},
        {"content": "It is {{last_tool}}"}, {"content": "Five. DONE"}]})
    run_id = start_run(daphne_url, a.key, {"instructions": "x", "models": [model], "tools": [tool("calculator")]})
    over_ws = durable(asyncio.run(_collect_ws(daphne_url, run_id, {"Authorization": f"Bearer {a.key}"})))
    # when
    over_sse = sse_events(daphne_url, a.key, run_id)
    partial = sse_events(daphne_url, a.key, run_id, stop_after=4)
    rest = sse_events(daphne_url, a.key, run_id, last_event_id=partial[-1]["id"])
    # then: the same events (their ids differ only in the delta counter: the socket watched the run live);
    # the stream ends after run.finished
    assert over_sse[0]["type"] == "stream.opened"
    assert without_ids(durable(over_sse)) == without_ids(over_ws)
    assert over_sse[-1]["type"] == "run.finished"
    assert without_ids(durable(partial) + durable(rest)) == without_ids(over_ws)
    assert durable(rest)[0]["seq"] == durable(partial)[-1]["seq"] + 1


def without_ids(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in event.items() if k != "id"} for event in events]


def test_a_subscriber_that_never_reads_holds_back_neither_the_run_nor_other_subscribers(
        daphne_url, worker_process, model_server, pair):
    # given: a subscriber that connects, asks for the stream and never reads a byte
    a = pair[0]
    # (paced: fragments that arrive while a delta is being published are sent as one, and this wants many; at
    # 10 ms, a delta may take 40 ms to publish, as on a slow machine running the suite in two processes)
    model = register(model_server, {"name": "stalled", "turns": [
        {"content": " ".join(f"token{i}" for i in range(400)), "chunk_delay_ms": 10}, {"content": "DONE"}]})
    run_id = start_run(daphne_url, a.key, {"instructions": "x", "models": [model], "graph": {
        "entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}})
    host = urlsplit(daphne_url)
    stalled = socket.create_connection((host.hostname, host.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stalled.sendall((f"GET /v1/runs/{run_id}/stream HTTP/1.1\r\nHost: {host.netloc}\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {a.key}\r\n\r\n").encode())
    try:
        # when: another client follows the same run
        messages = asyncio.run(_collect_ws(daphne_url, run_id, {"Authorization": f"Bearer {a.key}"}))
        # then: it got everything, and the run finished
        events = durable(messages)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["type"] == "run.finished" and events[-1]["data"]["status"] == "completed"
        deltas = [m for m in messages if m["type"] == "message.delta"]
        assert [d["n"] for d in deltas] == list(range(1, len(deltas) + 1)) and len(deltas) >= 100
    finally:
        stalled.close()


def test_a_stream_opened_on_a_missing_run_says_so(daphne_url, pair):
    a = pair[0]

    async def scenario() -> tuple[list[dict], int]:
        async with connect(ws_url(daphne_url, str(uuid.uuid4())), additional_headers={
                "Authorization": f"Bearer {a.key}"}, open_timeout=10) as ws:
            messages = [json.loads(raw) async for raw in _until_closed(ws)]
            return messages, ws.close_code

    messages, code = asyncio.run(scenario())
    assert [(m["type"], m["code"]) for m in messages] == [("error", "run_not_found")] and code == 4404


async def _until_closed(ws: Any):
    try:
        async for raw in ws:
            yield raw
    except ConnectionClosed:
        return


def test_a_channel_quiet_for_longer_than_the_layers_blocking_receive_still_gets_its_next_message():
    """channels_redis receives with a blocking pop of 5 s; redis-py 8 reads with a 5 s socket timeout by
    default. Unless the layer's socket timeout is longer, a receive on a channel quiet for 5 s raises
    TimeoutError (a Channels consumer dies of it) instead of going on waiting."""
    from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

    layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)

    async def quiet_then_one_message() -> dict[str, Any]:
        channel = await layer.new_channel()

        async def send_later() -> None:
            await asyncio.sleep(layer.brpop_timeout + 1)
            await layer.send(channel, {"type": "after.a.quiet.spell"})

        sender = asyncio.create_task(send_later())
        try:
            return await asyncio.wait_for(layer.receive(channel), layer.brpop_timeout + 10)
        finally:
            await sender

    assert asyncio.run(quiet_then_one_message()) == {"type": "after.a.quiet.spell"}
