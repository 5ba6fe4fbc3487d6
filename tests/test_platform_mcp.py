"""The platform as an MCP server: an outside MCP client (the official SDK's) calls a tenant's agents as tools
through /v1/mcp on a real Daphne, the runs executed by a real Celery worker."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import httpx2
import pytest
from django_tenants.utils import schema_context
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from control_plane.audit.models import AuditEvent
from data_plane import services
from tenants.tests.factories import ApiKeyFactory

pytestmark = [pytest.mark.server, pytest.mark.worker]


@pytest.fixture
def pair(committed):
    tenants = provision_for_test("pmcp-a"), provision_for_test("pmcp-b")
    yield tenants
    for tenant in tenants:
        destroy_tenant(tenant.tenant)


def mcp_client(daphne_url: str, key: str) -> Client:
    transport = streamable_http_client(f"{daphne_url}/v1/mcp", http_client=httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, timeout=60))
    return Client(transport, mode="legacy")


def test_an_outside_mcp_client_calls_a_tenants_agent_as_a_tool(daphne_url, worker_process, model_server, pair):
    # given: an agent in tenant A (answering from a scripted model) and one in tenant B
    a, b = pair
    name = f"echo-{uuid.uuid4().hex[:6]}"
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", json={"name": name, "turns": [
        {"content": "The answer is 42."}]}, timeout=10).raise_for_status()
    spec = {"instructions": "x", "models": [f"openai/{name}"], "graph": {
        "entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}}
    with schema_context(a.schema):
        services.agent_create(tenant=a.tenant, name="answerer", description="Answers questions.", spec=spec,
                              actor=TEST_ACTOR)
    with schema_context(b.schema):
        services.agent_create(tenant=b.tenant, name="b-only", description="", spec=spec, actor=TEST_ACTOR)

    async def scenario() -> tuple[list[str], object, list[str]]:
        async with mcp_client(daphne_url, a.key) as client:
            tools = await client.list_tools()
            result = await client.call_tool("agent__answerer", {"input": "What is the answer?"})
        async with mcp_client(daphne_url, b.key) as client:
            b_tools = [t.name for t in (await client.list_tools()).tools]
            b_call = await client.call_tool("agent__answerer", {"input": "What is the answer?"})
        return [t.name for t in tools.tools], result, b_tools, b_call

    # when
    a_tools, result, b_tools, b_call = asyncio.run(scenario())
    # then: each tenant sees its own agents only (beside the built-in tools), and the call ran the agent
    builtins = ["builtin__calculator", "builtin__get_time", "builtin__http_fetch", "builtin__memory_search"]
    assert a_tools == ["agent__answerer", *builtins] and b_tools == ["agent__b-only", *builtins]
    assert not result.is_error and result.content[0].text == "The answer is 42."
    assert result.structured_content["status"] == "completed"
    assert b_call.is_error and "No agent behind the tool 'agent__answerer'" in b_call.content[0].text
    with schema_context(a.schema):
        started = AuditEvent.objects.get(action="run.start")
    assert started.target_id == result.structured_content["run_id"] and started.actor_kind == "api_key"


def test_the_mcp_endpoint_refuses_missing_keys_and_keys_without_the_scope(daphne_url, pair):
    a = pair[0]
    missing = httpx.post(f"{daphne_url}/v1/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                         timeout=10)
    assert (missing.status_code, missing.json()["code"]) == (401, "invalid_credentials")
    reader = ApiKeyFactory(tenant=a.tenant, scopes=["agents:read"])

    async def scenario():
        async with mcp_client(daphne_url, reader.plaintext) as client:
            return await client.call_tool("agent__anything", {"input": "x"})

    refused = asyncio.run(scenario())
    assert refused.is_error and "lacks the scope 'runs:write'" in refused.content[0].text


def test_the_platform_serves_its_built_in_tools_over_mcp(daphne_url, pair):
    a = pair[0]

    async def scenario():
        async with mcp_client(daphne_url, a.key) as client:
            return (await client.call_tool("builtin__calculator", {"expression": "6*7"}),
                    await client.call_tool("builtin__http_fetch", {"url": "http://127.0.0.1:9/x"}))

    calculated, fetched = asyncio.run(scenario())
    assert (calculated.is_error, calculated.content[0].text) == (False, "42")
    assert fetched.is_error and "not on this tenant's allow-list for http_fetch" in fetched.content[0].text
    with schema_context(a.schema):
        audited = sorted((e.target_id, e.data["status"]) for e in AuditEvent.objects.filter(action="tool.call"))
    assert audited == [("builtin__calculator", "ok"), ("builtin__http_fetch", "error")]


def test_an_outside_mcp_client_searches_its_tenants_memory_and_only_its_own(daphne_url, pair):
    # given: a memory in each tenant, and a key of A's without the memory scope
    a, b = pair
    with schema_context(a.schema):
        services.memory_remember(tenant=a.tenant, actor=TEST_ACTOR, drafts=[services.memory_draft(
            text="The Lisbon office closes early on Fridays.", agent="concierge")])
    with schema_context(b.schema):
        services.memory_remember(tenant=b.tenant, actor=TEST_ACTOR, drafts=[services.memory_draft(
            text="The Lisbon office of B is open on Saturdays.")])
    no_scope = ApiKeyFactory(tenant=a.tenant, scopes=["runs:write"]).plaintext

    async def scenario():
        async with mcp_client(daphne_url, a.key) as client:
            found = await client.call_tool("builtin__memory_search", {"query": "When does the Lisbon office close?"})
            other_agent = await client.call_tool("builtin__memory_search", {"query": "Lisbon", "agent": "sales"})
        async with mcp_client(daphne_url, no_scope) as client:
            refused = await client.call_tool("builtin__memory_search", {"query": "Lisbon"})
        return found, other_agent, refused

    # when
    found, other_agent, refused = asyncio.run(scenario())
    # then
    assert not found.is_error and [r["text"] for r in found.structured_content["results"]] == [
        "The Lisbon office closes early on Fridays."]
    assert other_agent.structured_content["results"] == []
    assert refused.is_error and "memories:read" in refused.content[0].text
    with schema_context(a.schema):
        audited = [e.data for e in AuditEvent.objects.filter(action="tool.call", target_id="builtin__memory_search")]
        assert len(audited) == 2 and "Lisbon" not in str(audited)
