"""The Python SDK against the real stack: it starts a run, follows it, decides its approval over the stream,
and survives a dropped connection in the middle of a token stream without losing or repeating anything."""

from __future__ import annotations

import socket
import uuid

import pytest

from agentplane import AgentplaneError, Client
from conftest import destroy_tenant, provision_for_test
from tests.test_streaming import SLOW_WORDS, register, tool

pytestmark = [pytest.mark.server, pytest.mark.worker]


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("sdk")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def test_the_sdk_follows_a_run_through_a_dropped_connection_and_an_approval(daphne_url, worker_process,
                                                                            model_server, tenant):
    # given: an agent whose answer streams slowly and whose tool needs approval
    model = register(model_server, {"name": "sdk", "turns": [
        {"content": "1. Save a note."},
        {"tool_calls": [{"name": "note_append", "arguments": {"text": "from the sdk"}}]},
        {"content": SLOW_WORDS, "chunk_delay_ms": 15},
        {"content": "Saved. DONE"}]})
    client = Client(daphne_url, api_key=tenant.key)
    agent = client.create_agent(name=f"sdk-{uuid.uuid4().hex[:6]}", spec={
        "instructions": "x", "models": [model], "tools": [tool("note_append", requires_approval=True)]})
    run = client.start_run(agent_id=agent["id"], input="save a note")
    events, dropped = [], False
    # when
    with client.stream(run["id"]) as stream:
        for event in stream:
            events.append(event)
            if event.type == "approval.requested":
                assert stream.approve(comment="fine")["approval"]["status"] == "approved"
            if event.type == "message.delta" and event.n and not dropped and len(
                    [e for e in events if e.type == "message.delta"]) == 10:
                stream.connection.socket.shutdown(socket.SHUT_RDWR)  # the network drops under the client
                dropped = True
    # then: one reconnect, and nothing lost or repeated
    assert dropped and stream.reconnects == 1
    durable = [e for e in events if e.type != "message.delta"]
    assert [e.seq for e in durable] == list(range(1, len(durable) + 1))
    deltas = [e for e in events if e.type == "message.delta"]
    assert [e.n for e in deltas] == list(range(deltas[0].n, deltas[0].n + len(deltas)))
    streamed = {}
    for delta in deltas:
        streamed[delta.data["stream"]] = streamed.get(delta.data["stream"], "") + delta.data["text"]
    assert SLOW_WORDS in streamed.values()
    assert durable[-1].type == "run.finished" and durable[-1].data["status"] == "completed"
    assert client.get_run(run["id"])["status"] == "completed"
    # and the server-sent events transport gives the same durable events
    sse = [e for e in client.stream_sse(run["id"]) if e.type != "message.delta"]
    assert [(e.seq, e.type, e.data) for e in sse] == [(e.seq, e.type, e.data) for e in durable]
    client.close()


def test_the_sdk_raises_a_clear_error_for_what_the_key_may_not_do(daphne_url, tenant):
    client = Client(daphne_url, api_key=tenant.key)
    with pytest.raises(AgentplaneError) as missing:
        list(client.stream(str(uuid.uuid4())))
    assert (missing.value.code, missing.value.status) == ("run_not_found", 404)
    with pytest.raises(AgentplaneError) as invalid:
        client.start_run(agent_id=str(uuid.uuid4()), input="")
    assert invalid.value.status == 400 and invalid.value.code == "invalid"
    client.close()


def test_the_sdk_remembers_searches_and_forgets(daphne_url, tenant):
    client = Client(daphne_url, api_key=tenant.key)
    written = client.remember("Dana takes her coffee black.", end_user="dana", tags=["drinks"])
    again = client.remember("Dana takes her coffee black", end_user="dana")
    assert written["merged"] is False and again["merged"] is True and again["id"] == written["id"]
    found = client.search_memories("How does Dana like her coffee?", end_user="dana", k=3)
    assert [hit["id"] for hit in found] == [written["id"]]
    assert client.forget(end_user="dana") == 1 and client.search_memories("coffee", end_user="dana") == []
    with pytest.raises(AgentplaneError) as bad:
        client.remember("")
    assert (bad.value.status, bad.value.code) == (400, "invalid")
    client.close()
