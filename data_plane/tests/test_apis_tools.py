"""MCP servers, the tool catalogue and tool permissions over the API, with real MCP server processes (the
SDK-built toolbox of tests/mcp_servers, over stdio and over streamable HTTP)."""

from __future__ import annotations

import json
import sys
import threading

import pytest
from django_tenants.utils import schema_context

from conftest import bearer
from control_plane.audit.models import AuditEvent
from data_plane.models import AgentVersion, McpServer, McpTool, ToolPermission
from tests.mcp_servers import TOOLBOX
from tests.processes import free_port

TOOLBOX_TOOLS = ["add", "carried", "counter", "grow", "interrupted", "pid", "shout", "sleep", "whoami"]


def post(client, path, body, key):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def register_stdio(client, key, name="toolbox", **extra) -> dict:
    response = post(client, "/v1/mcp-servers", {"name": name, "transport": "stdio", "command": sys.executable,
                                                "args": [TOOLBOX, *extra.pop("args", [])], **extra}, key)
    assert response.status_code == 201, response.json()
    return response.json()


def test_registering_a_local_server_lists_its_tools_and_seals_its_credentials(client, tenant_a):
    # when
    server = register_stdio(client, tenant_a.key, env={"TOOLBOX_IDENTITY": "s3cr3t-identity"})
    # then
    assert (server["name"], server["transport"], server["status"], server["catalogue_version"]) == (
        "toolbox", "stdio", "active", 1)
    assert server["tools"] == [f"toolbox__{name}" for name in TOOLBOX_TOOLS]
    assert server["secret_names"] == {"headers": [], "env": ["TOOLBOX_IDENTITY"]}
    assert "s3cr3t" not in json.dumps(server)
    with schema_context(tenant_a.schema):
        stored = McpServer.objects.get(id=server["id"])
        assert stored.sealed_secrets.startswith("v2:1:") and "s3cr3t" not in stored.sealed_secrets
        add = McpTool.objects.get(name="toolbox__add")
        assert (add.remote_name, add.input_schema["required"]) == ("add", ["a", "b"])
        audited = AuditEvent.objects.get(action="mcp_server.register")
        assert sorted(audited.data["tools"]) == server["tools"] and "s3cr3t" not in json.dumps(audited.data)
    # and the catalogue has them beside the built-in tools, searchable
    catalogue = client.get("/v1/tools?limit=100", **bearer(tenant_a.key)).json()["results"]
    assert {"calculator", "toolbox__add", "toolbox__shout"} <= {t["name"] for t in catalogue}
    found = client.get("/v1/tools?q=upper case", **bearer(tenant_a.key)).json()["results"]
    assert [(t["name"], t["server"]) for t in found] == [("toolbox__shout", "toolbox")]


def test_a_remote_server_over_streamable_http_is_discovered(client, tenant_a, http_toolbox):
    response = post(client, "/v1/mcp-servers", {"name": "remote", "transport": "http", "url": http_toolbox,
                                                "headers": {"Authorization": "Bearer token-123"}}, tenant_a.key)
    assert response.status_code == 201, response.json()
    assert response.json()["tools"] == [f"remote__{name}" for name in TOOLBOX_TOOLS]
    assert response.json()["secret_names"] == {"headers": ["Authorization"], "env": []}


@pytest.mark.parametrize("body, field", [
    ({"transport": "stdio", "command": "/bin/sh", "args": ["-c", "id"]}, "command"),
    ({"transport": "http", "url": "ftp://example.com"}, "url"),
    ({"transport": "http", "url": "http://127.0.0.1:9/mcp", "env": {"X": "1"}}, "command"),
    ({"transport": "stdio", "command": sys.executable, "headers": {"bad header": "x"}}, "url"),
])
def test_invalid_server_settings_are_400_saying_what_to_fix_and_nothing_is_kept(client, tenant_a, body, field):
    response = post(client, "/v1/mcp-servers", {"name": "bad", **body}, tenant_a.key)
    assert (response.status_code, response.json()["code"]) == (400, "invalid")
    assert field in response.json()["errors"]
    with schema_context(tenant_a.schema):
        assert not McpServer.objects.exists()


def test_a_server_that_does_not_answer_is_502_and_not_kept(client, tenant_a):
    response = post(client, "/v1/mcp-servers", {"name": "dead", "transport": "http",
                                                "url": f"http://127.0.0.1:{free_port()}/mcp",
                                                "timeout_seconds": 3}, tenant_a.key)
    assert (response.status_code, response.json()["code"]) == (502, "mcp_server_unreachable")
    assert "dead" in response.json()["detail"] and "Check the server's url" in response.json()["detail"]
    with schema_context(tenant_a.schema):
        assert not McpServer.objects.exists()


def test_refresh_adds_changes_and_deactivates_tools_and_bumps_the_catalogue_version(client, tenant_a, tmp_path):
    # given
    changes = tmp_path / "changes"
    server = register_stdio(client, tenant_a.key, args=["--changes", str(changes)])
    # when: the server now offers one more tool and no longer shout
    changes.write_text("extra no-shout")
    response = post(client, f"/v1/mcp-servers/{server['id']}/refresh", {}, tenant_a.key)
    # then
    assert response.status_code == 200
    assert response.json()["tools"] == ["toolbox__add", "toolbox__carried", "toolbox__counter", "toolbox__extra",
                                        "toolbox__grow", "toolbox__interrupted", "toolbox__pid", "toolbox__sleep",
                                        "toolbox__whoami"]
    assert response.json()["catalogue_version"] == 2
    with schema_context(tenant_a.schema):
        assert McpTool.objects.get(name="toolbox__shout").is_active is False
        assert AuditEvent.objects.get(action="mcp_server.refresh").data == {
            "added": ["toolbox__extra"], "changed": [], "removed": ["toolbox__shout"]}


def test_archiving_a_server_drops_its_tools_and_its_credentials(client, tenant_a):
    server = register_stdio(client, tenant_a.key, env={"TOOLBOX_IDENTITY": "x"})
    response = client.delete(f"/v1/mcp-servers/{server['id']}", **bearer(tenant_a.key))
    assert response.status_code == 204
    assert client.get(f"/v1/mcp-servers/{server['id']}", **bearer(tenant_a.key)).status_code == 404
    with schema_context(tenant_a.schema):
        stored = McpServer.objects.get(id=server["id"])
        assert (stored.status, stored.sealed_secrets) == ("archived", "")
        assert not McpTool.objects.filter(server=stored, is_active=True).exists()


def test_an_agent_gets_its_servers_tools_in_its_version_with_approval_where_a_rule_requires_it(client, tenant_a):
    # given
    register_stdio(client, tenant_a.key)
    rule = post(client, "/v1/tool-permissions", {"tool": "toolbox__shout", "mode": "require_approval"}, tenant_a.key)
    assert rule.status_code == 201
    # when
    agent = post(client, "/v1/agents", {"name": "mcp-user", "spec": {
        "instructions": "x", "models": ["openai/x"], "mcp_servers": ["toolbox"]}}, tenant_a.key)
    unknown = post(client, "/v1/agents", {"name": "mcp-unknown", "spec": {
        "instructions": "x", "models": ["openai/x"], "mcp_servers": ["nowhere"]}}, tenant_a.key)
    # then
    assert agent.status_code == 201, agent.json()
    with schema_context(tenant_a.schema):
        spec = AgentVersion.objects.get(agent_id=agent.json()["id"]).spec
    tools = {t["name"]: t for t in spec["tools"]}
    assert sorted(tools) == [f"toolbox__{name}" for name in TOOLBOX_TOOLS]
    assert tools["toolbox__shout"]["requires_approval"] and not tools["toolbox__add"]["requires_approval"]
    assert spec["mcp_servers"] == ["toolbox"]
    assert (unknown.status_code, unknown.json()["code"]) == (400, "agent_spec_invalid")
    assert "No MCP server named 'nowhere'; registered: toolbox." == unknown.json()["detail"]


def test_tool_permissions_are_set_replaced_listed_and_removed_with_audit(client, tenant_a):
    # when
    first = post(client, "/v1/tool-permissions", {"tool": "calculator", "mode": "deny"}, tenant_a.key)
    replaced = post(client, "/v1/tool-permissions", {"tool": "calculator", "mode": "allow", "argument_schema": {
        "type": "object", "properties": {"expression": {"type": "string", "maxLength": 20}}}}, tenant_a.key)
    bad_mode = post(client, "/v1/tool-permissions", {"tool": "calculator", "mode": "maybe"}, tenant_a.key)
    bad_tool = post(client, "/v1/tool-permissions", {"tool": "calc ulator", "mode": "deny"}, tenant_a.key)
    listed = client.get("/v1/tool-permissions", **bearer(tenant_a.key)).json()["results"]
    # then
    assert first.status_code == replaced.status_code == 201
    assert [(p["tool"], p["mode"], p["argument_schema"]["properties"]["expression"]["maxLength"])
            for p in listed] == [("calculator", "allow", 20)]
    assert (bad_mode.status_code, list(bad_mode.json()["errors"])) == (400, ["mode"])
    assert (bad_tool.status_code, list(bad_tool.json()["errors"])) == (400, ["tool"])
    assert client.delete(f"/v1/tool-permissions/{listed[0]['id']}", **bearer(tenant_a.key)).status_code == 204
    assert client.delete(f"/v1/tool-permissions/{listed[0]['id']}", **bearer(tenant_a.key)).status_code == 404
    with schema_context(tenant_a.schema):
        assert not ToolPermission.objects.exists()
        assert list(AuditEvent.objects.filter(action__startswith="tool_permission").order_by("occurred_at")
                    .values_list("action", "data__mode")) == [
            ("tool_permission.set", "deny"), ("tool_permission.set", "allow"), ("tool_permission.delete", "allow")]


def test_tools_scopes_are_enforced(client, tenant_a):
    from tenants.tests.factories import ApiKeyFactory

    reader = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["tools:read"])
    denied = post(client, "/v1/tool-permissions", {"tool": "calculator", "mode": "deny"}, reader.plaintext)
    assert (denied.status_code, denied.json()["code"]) == (403, "missing_scope")
    assert client.get("/v1/tools", **bearer(reader.plaintext)).status_code == 200



def test_a_servers_tools_changed_notification_refreshes_the_catalogue(committed, tmp_path):
    from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
    from data_plane import services
    from data_plane.tools import refresh_catalogue

    # given: a tenant whose data is committed (the refresh runs in a thread of its own, as on a worker)
    tenant = provision_for_test("notify")
    changes = tmp_path / "changes"
    try:
        with schema_context(tenant.schema):
            server = services.mcp_server_register(tenant=tenant.tenant, name="toolbox", transport="stdio",
                                                  command=sys.executable, args=[TOOLBOX, "--changes", str(changes)],
                                                  actor=TEST_ACTOR)
        changes.write_text("extra")
        # when: the runtime hears the server's notifications/tools/list_changed (see test_mcp_sessions)
        worker = threading.Thread(target=refresh_catalogue, args=(tenant.schema, str(server.id)))
        worker.start()
        worker.join(60)
        # then
        with schema_context(tenant.schema):
            assert McpTool.objects.get(name="toolbox__extra").is_active
            refreshed = AuditEvent.objects.get(action="mcp_server.refresh")
            assert (refreshed.actor_kind, refreshed.actor_id, refreshed.data["added"]) == (
                "system", "mcp-notification", ["toolbox__extra"])
    finally:
        destroy_tenant(tenant.tenant)


@pytest.fixture(scope="module")
def web_server():
    """A local web server: /hello answers, /away redirects to another host."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            if self.path == "/away":
                self.send_response(302)
                self.send_header("Location", "http://localhost.invalid/elsewhere")
                self.end_headers()
                return
            body = b"hello from the allowed host"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fetch(tenant_schema: str, url: str):
    import asyncio

    from data_plane.runtime.core.messages import ToolCall
    from data_plane.tools import BuiltinToolRunner

    runner = BuiltinToolRunner(tenant_schema=tenant_schema, run_id="00000000-0000-0000-0000-000000000000")
    return asyncio.run(runner.call(ToolCall(id="c1", name="http_fetch", arguments={"url": url}),
                                   idempotency_key="k1"))


def test_http_fetch_reaches_only_the_hosts_the_tenant_allows(client, committed, web_server):
    from conftest import destroy_tenant, provision_for_test

    # given: a tenant whose data is committed (the tool reads its settings on a thread of its own)
    tenant = provision_for_test("fetch")
    try:
        refused = fetch(tenant.schema, f"{web_server}/hello")
        assert refused.is_error and "not on this tenant's allow-list for http_fetch (empty)" in refused.content
        # when
        response = client.put("/v1/tools/settings", json.dumps({"http_fetch_hosts": ["127.0.0.1", "*.Example.org"]}),
                              content_type="application/json", **bearer(tenant.key))
        bad = client.put("/v1/tools/settings", json.dumps({"http_fetch_hosts": ["not a host", "ok.example.com"]}),
                         content_type="application/json", **bearer(tenant.key))
        # then
        assert response.status_code == 200 and response.json()["http_fetch_hosts"] == ["*.example.org", "127.0.0.1"]
        assert bad.status_code == 400 and "'not a host'" in bad.json()["detail"]
        fetched = fetch(tenant.schema, f"{web_server}/hello")
        assert not fetched.is_error and fetched.content == "HTTP 200\nhello from the allowed host"
        redirected = fetch(tenant.schema, f"{web_server}/away")  # a redirect is checked like the first request
        assert redirected.is_error and "host 'localhost.invalid' is not on this tenant's allow-list" in \
            redirected.content
        with schema_context(tenant.schema):
            assert AuditEvent.objects.get(action="tool_settings.update").data == {
                "before": [], "after": ["*.example.org", "127.0.0.1"]}
    finally:
        destroy_tenant(tenant.tenant)


def test_http_fetch_refuses_private_addresses_unless_the_operator_allows_them(settings):
    import asyncio

    from data_plane.tools import fetch_check

    settings.HTTP_FETCH_ALLOW_PRIVATE_NETWORKS = False
    with pytest.raises(ValueError) as private:
        asyncio.run(fetch_check("http://127.0.0.1:8080/x", ["127.0.0.1"]))
    assert "resolves to a private address (127.0.0.1)" in str(private.value)
    with pytest.raises(ValueError) as scheme:
        asyncio.run(fetch_check("file:///etc/passwd", ["*"]))
    assert "is not an http(s) URL" in str(scheme.value)
    with pytest.raises(ValueError):
        asyncio.run(fetch_check("http://evil.example.org.attacker.net/", ["*.example.org"]))


@pytest.mark.parametrize("command, args, allowed", [
    ("/opt/venv/bin/python", ["-m", "mcp_server_time"], True),
    ("/opt/venv/bin/python", ["-m", "mcp_server_time", "--local-timezone", "UTC"], True),
    ("/opt/venv/bin/python", ["-c", "import os"], False),  # the interpreter alone is not allowed
    ("/opt/venv/bin/python", ["-m"], False),
    ("/usr/bin/mcp-notes", [], True),
    ("/usr/bin/mcp-notes-evil", [], False),
])
def test_a_local_command_must_start_with_an_allowed_command_line(command, args, allowed):
    from data_plane.services.tools import stdio_command_allowed

    assert stdio_command_allowed(command, args, ["/opt/venv/bin/python -m mcp_server_time", "/usr/bin/mcp-notes"]) \
        is allowed


def test_a_remote_server_on_a_private_address_is_refused_unless_the_operator_allows_it(client, tenant_a, settings):
    settings.MCP_ALLOW_PRIVATE_NETWORKS = False
    response = post(client, "/v1/mcp-servers", {"name": "inside", "transport": "http",
                                                "url": "http://127.0.0.1:9/mcp"}, tenant_a.key)
    assert (response.status_code, list(response.json()["errors"])) == (400, ["url"])
    assert "resolves to a private address" in response.json()["detail"]
