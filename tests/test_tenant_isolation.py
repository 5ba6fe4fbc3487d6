"""Every tenant endpoint, called with tenant B's key and tenant A's ids, sees nothing of A.

The matrix below must cover every route served by a TenantApiView: a new endpoint without an
isolation case fails ``test_every_tenant_endpoint_is_in_the_matrix``.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
from collections.abc import Callable
from decimal import Decimal
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context

from billing import services as billing_services
from billing.models import BillingAccount, Budget, BudgetAlert, Invoice, TokenQuotaUsage, UsageRecord
from billing.services.budgets import period_start
from common.actors import Actor
from conftest import ProvisionedForTest, bearer, destroy_tenant, provision_for_test
from control_plane.audit.models import AuditEvent
from control_plane.identity import services as identity_services
from control_plane.identity.models import Invitation, Membership
from control_plane.identity.tests.factories import MembershipFactory
from control_plane.oauth import services as oauth_services
from control_plane.oauth.models import Application as OAuthApplication
from data_plane import services as data_plane_services
from data_plane.models import Agent, Approval, Attachment, Checkpoint, EffectRecordRow, Experiment, McpServer, \
    McpTool, Memory, MemorySettings, Ping, RoutingPolicy, Run, RunFeedback, ToolPermission, ToolSettings
from data_plane.runtime.wiring import attachment_storage
from data_plane.tests import media_files
from guardrails import services as guardrail_services
from guardrails.models import GuardrailFlag, GuardrailPolicy
from tenants.api_views import TenantApiView
from tenants.models import ApiKey, Tenant
from tenants.tests.factories import ApiKeyFactory
from tests.mcp_servers import TOOLBOX


@dataclass(frozen=True)
class TenantAData:
    key_id: str
    ping_id: str
    audit_ids: frozenset[str]
    agent_id: str
    run_id: str
    checkpoint_id: str
    approval_id: str
    server_id: str
    permission_id: str
    memory_id: str
    attachment_id: str
    flag_id: str
    member_id: str = ""
    invitation_id: str = ""
    oauth_application_id: int = 0
    experiment_id: str = ""
    routing_policy_id: str = ""
    budget_id: str = ""
    budget_alert_id: str = ""


@dataclass(frozen=True)
class Case:
    route: str  # the URL pattern, as Django knows it
    method: str
    path: Callable[[TenantAData], str]
    body: dict | Callable[[TenantAData], dict] | None  # a callable when the body names tenant A's ids
    check: Callable[..., None]
    is_multipart: bool = False  # the body is sent as multipart/form-data (a file upload), not JSON


def _no_a_ids(field: str, a_ids: Callable[[TenantAData], set[str]]) -> Callable[..., None]:
    def check(response, a: TenantAData, b: ProvisionedForTest) -> None:
        assert response.status_code == 200
        assert not {item[field] for item in response.json()["results"]} & a_ids(a)
    return check


def _not_found(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 404
    assert response.json()["status"] == 404
    assert a.key_id not in response.content.decode() or "not found" in response.json()["detail"]


def _own_tenant(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200
    assert response.json()["id"] == str(b.tenant.id)


def _own_quotas(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200
    assert (response.json()["tier"], response.json()["concurrent_runs"]) == ("standard", 0)  # A's run is not B's


def _key_created_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 201
    assert ApiKey.objects.get(id=response.json()["id"]).tenant_id == b.tenant.id


def _ping_created_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 202
    with schema_context(b.schema):
        assert Ping.objects.filter(id=response.json()["id"]).exists()


def _agent_created_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 201
    with schema_context(b.schema):
        assert Agent.objects.filter(id=response.json()["id"], name=A_AGENT_NAME).exists()


def _not_found_and_no_run_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    _not_found(response, a, b)
    with schema_context(b.schema):
        assert not Run.objects.exists()


def _verified_b_chain_only(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200 and response.json()["ok"] is True
    with schema_context(b.schema):
        assert response.json()["checked"] == AuditEvent.objects.count()
        assert response.json()["head_hash"] == AuditEvent.objects.latest("seq").hash


def _exported_nothing_of_a(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200
    exported = b"".join(response.streaming_content).decode()
    assert not [audit_id for audit_id in a.audit_ids if audit_id in exported]
    assert a.run_id not in exported


A_AGENT_NAME = "a-gated"
A_INVITEE = "a-invitee@example.com"
A_SPEC = {"instructions": "", "models": ["openai/gpt-4o-mini"], "graph": {"entry": "gate", "nodes": [
    {"id": "gate", "kind": "approval", "prompt": "ok?", "next": "end"}, {"id": "end", "kind": "end"}]}}


def _no_a_tools(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200
    assert not [tool for tool in response.json()["results"] if tool["server"] == A_SERVER_NAME]


def _settings_changed_in_b_only(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200 and response.json()["http_fetch_hosts"] == ["b.example.com"]
    with schema_context(b.schema):
        assert ToolSettings.objects.get(id=1).http_fetch_hosts == ["b.example.com"]


def _no_a_stats(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200
    assert not [row for row in response.json() if row["tool"].startswith(A_SERVER_NAME)]


def _slos_of_b_only(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200 and response.json()["scope"] == b.tenant.slug
    # A's run (waiting for an approval since it was created) is in no SLI of B's
    assert [(slo["name"], slo["events"]) for slo in response.json()["slos"] if slo["name"] != "availability"] == [
        ("agent_start_latency_p50", 0), ("agent_start_latency_p99", 0), ("turn_latency_p50", 0),
        ("turn_latency_p99", 0), ("error_rate", 0), ("tool_call_success_rate", 0)]


def _b_agent_refused_a_server(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert (response.status_code, response.json()["code"]) == (400, "agent_spec_invalid")
    assert f"No MCP server named {A_SERVER_NAME!r}" in response.json()["detail"]
    with schema_context(b.schema):
        assert not Agent.objects.filter(name="b-uses-a-server").exists()


def _permission_created_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 201
    with schema_context(b.schema):
        assert ToolPermission.objects.filter(id=response.json()["id"]).exists()


def _server_registered_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 201, response.content  # server names are per tenant
    with schema_context(b.schema):
        assert McpServer.objects.filter(id=response.json()["id"], name=A_SERVER_NAME).exists()


A_SERVER_NAME = "aserver"
A_ROUTING_POLICY = "a-routing"
A_ROUTING = {"tiers": {"cheap": ["openai/gpt-4o-mini"], "strong": ["openai/gpt-4o"]}}


def _routing_policy_created_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 201, response.content  # policy names are per tenant
    with schema_context(b.schema):
        assert RoutingPolicy.objects.filter(id=response.json()["id"], name=A_ROUTING_POLICY, is_default=True).exists()
A_MEMORY = "Alice's launch code is 4711 and she prefers green tea."


def _memory_written_in_b(status: int) -> Callable[..., None]:
    def check(response, a: TenantAData, b: ProvisionedForTest) -> None:
        assert response.status_code == status, response.content
        written = response.json()["memories"] if "memories" in response.json() else [response.json()]
        assert all(item["merged"] is False for item in written)  # A's near-identical memory is not B's
        with schema_context(b.schema):
            assert Memory.objects.filter(id__in=[item["id"] for item in written]).count() == len(written)
    return check


def _forgot_nothing_of_a(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200 and response.json() == {"deleted": 0}


def _memory_settings_of_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200
    assert response.json()["default_ttl_days"] in (None, 30) and response.json()["has_embedding_api_key"] is False
    with schema_context(b.schema):
        assert MemorySettings.objects.filter(default_ttl_days=7).count() == 0


def _attachment_created_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 201, response.content
    with schema_context(b.schema):
        assert Attachment.objects.filter(id=response.json()["id"]).exists()
    assert response.json()["id"] != a.attachment_id


def _b_upload(a: TenantAData) -> dict:
    return {"file": SimpleUploadedFile("b.png", media_files.png(rgb=(0, 0, 255)), content_type="image/png")}

def _no_b_policies(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200 and response.json()["results"] == []


def _policy_set_in_b_only(agent: str) -> Callable[..., None]:
    def check(response, a: TenantAData, b: ProvisionedForTest) -> None:
        assert response.status_code == 200 and response.json()["revision"] == 1  # not A's layer, revised
        with schema_context(b.schema):
            assert GuardrailPolicy.objects.filter(agent=agent).count() == 1
    return check


def _defaults_only(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200
    assert response.json()["policy"]["actions"]["input"].get("pii", "off") == "off"  # A's pii rule is not B's


def _dry_run_under_defaults(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200
    pii = next(d for d in response.json()["points"]["input"]["decisions"] if d["check"] == "pii")
    assert pii["action"] == "allow"  # A's agent redacts pii; B's policy (the defaults) does not


def _no_a_billing(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200, response.content
    assert response.json()["account"] is None and response.json()["invoices"] == []  # A's are not B's
    assert A_INVOICE not in response.content.decode()


A_INVOICE = "in_tenant_a_only"


def _oauth_app_created_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 201, response.content
    assert OAuthApplication.objects.get(id=response.json()["id"]).tenant_id == b.tenant.id


def _own_token_quota(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200 and response.json()["used_tokens"] == 0  # A used 1234


def _no_budget_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    _not_found(response, a, b)  # A's agent is no agent of B's
    assert not Budget.objects.filter(tenant=b.tenant).exists()


CASES = [
    Case("v1/tenant", "get", lambda a: "/v1/tenant", None, _own_tenant),
    Case("v1/quotas", "get", lambda a: "/v1/quotas", None, _own_quotas),
    Case("v1/api-keys", "get", lambda a: "/v1/api-keys?limit=500", None, _no_a_ids("id", lambda a: {a.key_id})),
    Case("v1/api-keys", "post", lambda a: "/v1/api-keys", {"name": "b", "scopes": ["tenant:read"]},
         _key_created_in_b),
    Case("v1/api-keys/<uuid:key_id>", "get", lambda a: f"/v1/api-keys/{a.key_id}", None, _not_found),
    Case("v1/api-keys/<uuid:key_id>/revoke", "post", lambda a: f"/v1/api-keys/{a.key_id}/revoke", {}, _not_found),
    Case("v1/pings", "get", lambda a: "/v1/pings?limit=500", None, _no_a_ids("id", lambda a: {a.ping_id})),
    Case("v1/pings", "post", lambda a: "/v1/pings", {"message": "from b"}, _ping_created_in_b),
    Case("v1/pings/<uuid:ping_id>", "get", lambda a: f"/v1/pings/{a.ping_id}", None, _not_found),
    Case("v1/audit-events", "get", lambda a: "/v1/audit-events?limit=500", None,
         _no_a_ids("id", lambda a: set(a.audit_ids))),
    Case("v1/audit-events/verify", "get", lambda a: "/v1/audit-events/verify", None, _verified_b_chain_only),
    Case("v1/audit-events/export", "get", lambda a: f"/v1/audit-events/export?format=jsonl&target_id={a.run_id}",
         None, _exported_nothing_of_a),
    Case("v1/audit-events/export", "get", lambda a: "/v1/audit-events/export?format=csv", None,
         _exported_nothing_of_a),
    # attachments
    Case("v1/attachments", "get", lambda a: "/v1/attachments?limit=500", None,
         _no_a_ids("id", lambda a: {a.attachment_id})),
    Case("v1/attachments", "post", lambda a: "/v1/attachments", _b_upload, _attachment_created_in_b,
         is_multipart=True),
    Case("v1/attachments/<uuid:attachment_id>", "get", lambda a: f"/v1/attachments/{a.attachment_id}", None,
         _not_found),
    Case("v1/attachments/<uuid:attachment_id>", "delete", lambda a: f"/v1/attachments/{a.attachment_id}", None,
         _not_found),
    Case("v1/attachments/<uuid:attachment_id>/content", "get",
         lambda a: f"/v1/attachments/{a.attachment_id}/content", None, _not_found),
    # agents
    Case("v1/agents", "get", lambda a: "/v1/agents?include_archived=true&limit=500", None,
         _no_a_ids("id", lambda a: {a.agent_id})),
    Case("v1/agents", "post", lambda a: "/v1/agents", {"name": A_AGENT_NAME, "spec": A_SPEC}, _agent_created_in_b),
    Case("v1/agents", "post", lambda a: "/v1/agents", {"name": "b-uses-a-server", "spec": {
        **A_SPEC, "mcp_servers": [A_SERVER_NAME]}}, _b_agent_refused_a_server),
    Case("v1/agents/<uuid:agent_id>", "get", lambda a: f"/v1/agents/{a.agent_id}", None, _not_found),
    Case("v1/agents/<uuid:agent_id>", "patch", lambda a: f"/v1/agents/{a.agent_id}",
         {"description": "from b", "spec": A_SPEC}, _not_found),
    Case("v1/agents/<uuid:agent_id>/archive", "post", lambda a: f"/v1/agents/{a.agent_id}/archive", {}, _not_found),
    Case("v1/agents/<uuid:agent_id>/versions", "get", lambda a: f"/v1/agents/{a.agent_id}/versions", None,
         _not_found),
    Case("v1/agents/<uuid:agent_id>/versions/<int:version>", "get", lambda a: f"/v1/agents/{a.agent_id}/versions/1",
         None, _not_found),
    # A/B tests
    Case("v1/agents/<uuid:agent_id>/experiments", "get", lambda a: f"/v1/agents/{a.agent_id}/experiments", None,
         _not_found),
    Case("v1/agents/<uuid:agent_id>/experiments", "post", lambda a: f"/v1/agents/{a.agent_id}/experiments",
         {"name": "from-b", "variants": [{"name": "a", "weight": 1, "is_control": True}, {"name": "b", "weight": 1}]},
         _not_found),
    Case("v1/experiments/<uuid:experiment_id>", "get", lambda a: f"/v1/experiments/{a.experiment_id}", None,
         _not_found),
    Case("v1/experiments/<uuid:experiment_id>/results", "get", lambda a: f"/v1/experiments/{a.experiment_id}/results",
         None, _not_found),
    Case("v1/experiments/<uuid:experiment_id>/stop", "post", lambda a: f"/v1/experiments/{a.experiment_id}/stop", {},
         _not_found),
    Case("v1/experiments/<uuid:experiment_id>/promote", "post",
         lambda a: f"/v1/experiments/{a.experiment_id}/promote", {"variant": "terse"}, _not_found),
    # runs
    Case("v1/runs", "get", lambda a: "/v1/runs?limit=500", None, _no_a_ids("id", lambda a: {a.run_id})),
    Case("v1/runs", "post", lambda a: "/v1/runs", lambda a: {"agent_id": a.agent_id, "input": "from b"},
         _not_found_and_no_run_in_b),
    Case("v1/runs/<uuid:run_id>", "get", lambda a: f"/v1/runs/{a.run_id}", None, _not_found),
    Case("v1/runs/<uuid:run_id>/pause", "post", lambda a: f"/v1/runs/{a.run_id}/pause", {}, _not_found),
    Case("v1/runs/<uuid:run_id>/resume", "post", lambda a: f"/v1/runs/{a.run_id}/resume", {}, _not_found),
    Case("v1/runs/<uuid:run_id>/cancel", "post", lambda a: f"/v1/runs/{a.run_id}/cancel", {"reason": "from b"},
         _not_found),
    Case("v1/runs/<uuid:run_id>/retry", "post", lambda a: f"/v1/runs/{a.run_id}/retry", {}, _not_found),
    Case("v1/runs/<uuid:run_id>/events", "get", lambda a: f"/v1/runs/{a.run_id}/events", None, _not_found),
    Case("v1/runs/<uuid:run_id>/messages", "post", lambda a: f"/v1/runs/{a.run_id}/messages", {"text": "hi"},
         _not_found),
    Case("v1/runs/<uuid:run_id>/feedback", "get", lambda a: f"/v1/runs/{a.run_id}/feedback", None, _not_found),
    Case("v1/runs/<uuid:run_id>/feedback", "post", lambda a: f"/v1/runs/{a.run_id}/feedback", {"score": 0.1},
         _not_found),
    Case("v1/runs/<uuid:run_id>/stream-token", "post", lambda a: f"/v1/runs/{a.run_id}/stream-token", {},
         _not_found),
    # tools
    Case("v1/mcp-servers", "get", lambda a: "/v1/mcp-servers?limit=500", None,
         _no_a_ids("id", lambda a: {a.server_id})),
    Case("v1/mcp-servers", "post", lambda a: "/v1/mcp-servers", {
        "name": A_SERVER_NAME, "transport": "stdio", "command": sys.executable, "args": [TOOLBOX]},
        _server_registered_in_b),
    Case("v1/mcp-servers/<uuid:server_id>", "get", lambda a: f"/v1/mcp-servers/{a.server_id}", None, _not_found),
    Case("v1/mcp-servers/<uuid:server_id>", "delete", lambda a: f"/v1/mcp-servers/{a.server_id}", None, _not_found),
    Case("v1/mcp-servers/<uuid:server_id>/refresh", "post", lambda a: f"/v1/mcp-servers/{a.server_id}/refresh", {},
         _not_found),
    Case("v1/tools", "get", lambda a: "/v1/tools?limit=500", None, _no_a_tools),
    Case("v1/tools/stats", "get", lambda a: "/v1/tools/stats?days=90", None, _no_a_stats),
    Case("v1/slos", "get", lambda a: "/v1/slos", None, _slos_of_b_only),
    Case("v1/tools/settings", "get", lambda a: "/v1/tools/settings", None,
         lambda response, a, b: (response.status_code, response.json()["http_fetch_hosts"]) == (200, [])
         or pytest.fail(f"B sees A's hosts: {response.content!r}")),
    Case("v1/tools/settings", "put", lambda a: "/v1/tools/settings", {"http_fetch_hosts": ["b.example.com"]},
         _settings_changed_in_b_only),
    Case("v1/tool-permissions", "get", lambda a: "/v1/tool-permissions?limit=500", None,
         _no_a_ids("id", lambda a: {a.permission_id})),
    Case("v1/tool-permissions", "post", lambda a: "/v1/tool-permissions", {"tool": "calculator", "mode": "deny"},
         _permission_created_in_b),
    Case("v1/tool-permissions/<uuid:permission_id>", "delete", lambda a: f"/v1/tool-permissions/{a.permission_id}",
         None, _not_found),
    # checkpoints
    Case("v1/runs/<uuid:run_id>/checkpoints", "get", lambda a: f"/v1/runs/{a.run_id}/checkpoints", None,
         _not_found),
    Case("v1/runs/<uuid:run_id>/checkpoints/<uuid:checkpoint_id>", "get",
         lambda a: f"/v1/runs/{a.run_id}/checkpoints/{a.checkpoint_id}", None, _not_found),
    Case("v1/runs/<uuid:run_id>/checkpoints/<uuid:checkpoint_id>/fork", "post",
         lambda a: f"/v1/runs/{a.run_id}/checkpoints/{a.checkpoint_id}/fork", {"values": {"from": "b"}},
         _not_found_and_no_run_in_b),
    Case("v1/runs/<uuid:run_id>/checkpoints/<uuid:checkpoint_id>/replay", "post",
         lambda a: f"/v1/runs/{a.run_id}/checkpoints/{a.checkpoint_id}/replay", {}, _not_found_and_no_run_in_b),
    # long-term memory
    Case("v1/memories", "get", lambda a: "/v1/memories?limit=500", None, _no_a_ids("id", lambda a: {a.memory_id})),
    Case("v1/memories", "get", lambda a: "/v1/memories?end_user=alice", None,
         _no_a_ids("id", lambda a: {a.memory_id})),
    Case("v1/memories", "post", lambda a: "/v1/memories", {"text": A_MEMORY, "end_user": "alice"},
         _memory_written_in_b(201)),
    Case("v1/memories/batch", "post", lambda a: "/v1/memories/batch", {"memories": [{"text": A_MEMORY}]},
         _memory_written_in_b(200)),
    Case("v1/memories/search", "post", lambda a: "/v1/memories/search", {"query": "launch code of Alice", "k": 50},
         _no_a_ids("id", lambda a: {a.memory_id})),
    Case("v1/memories/forget", "post", lambda a: "/v1/memories/forget", {"end_user": "alice"}, _forgot_nothing_of_a),
    Case("v1/memories/forget", "post", lambda a: "/v1/memories/forget", {"everything": True}, _forgot_nothing_of_a),
    Case("v1/memories/settings", "get", lambda a: "/v1/memories/settings", None, _memory_settings_of_b),
    Case("v1/memories/settings", "put", lambda a: "/v1/memories/settings", {"default_ttl_days": 30},
         _memory_settings_of_b),
    Case("v1/memories/<uuid:memory_id>", "get", lambda a: f"/v1/memories/{a.memory_id}", None, _not_found),
    Case("v1/memories/<uuid:memory_id>", "delete", lambda a: f"/v1/memories/{a.memory_id}", None, _not_found),
    # guardrails: A's policies (tenant-wide and its agent's) and flags are not B's
    Case("v1/guardrails/policies", "get", lambda a: "/v1/guardrails/policies", None, _no_b_policies),
    Case("v1/guardrails/policies/tenant", "get", lambda a: "/v1/guardrails/policies/tenant", None, _not_found),
    Case("v1/guardrails/policies/tenant", "put", lambda a: "/v1/guardrails/policies/tenant",
         {"config": {"actions": {"input": {"pii": "flag"}}}}, _policy_set_in_b_only("")),
    Case("v1/guardrails/policies/tenant", "delete", lambda a: "/v1/guardrails/policies/tenant", None, _not_found),
    Case("v1/guardrails/policies/agents/<slug:agent>", "get", lambda a: f"/v1/guardrails/policies/agents/{A_AGENT_NAME}",
         None, _not_found),
    Case("v1/guardrails/policies/agents/<slug:agent>", "put", lambda a: f"/v1/guardrails/policies/agents/{A_AGENT_NAME}",
         {"config": {"actions": {"output": {"pii": "flag"}}}}, _policy_set_in_b_only(A_AGENT_NAME)),
    Case("v1/guardrails/policies/agents/<slug:agent>", "delete",
         lambda a: f"/v1/guardrails/policies/agents/{A_AGENT_NAME}", None, _not_found),
    Case("v1/guardrails/policies/effective", "get", lambda a: f"/v1/guardrails/policies/effective?agent={A_AGENT_NAME}",
         None, _defaults_only),
    Case("v1/guardrails/dry-run", "post", lambda a: "/v1/guardrails/dry-run",
         {"text": "mail ada@example.com", "agent": A_AGENT_NAME, "points": ["input"]}, _dry_run_under_defaults),
    Case("v1/guardrails/flags", "get", lambda a: "/v1/guardrails/flags", None, _no_a_ids("id", lambda a: {a.flag_id})),
    Case("v1/guardrails/flags/<uuid:flag_id>/review", "post", lambda a: f"/v1/guardrails/flags/{a.flag_id}/review",
         {"status": "dismissed"}, _not_found),
    # OAuth client applications (public schema, filtered by tenant)
    Case("v1/oauth/applications", "get", lambda a: "/v1/oauth/applications?limit=500", None,
         _no_a_ids("id", lambda a: {a.oauth_application_id})),
    Case("v1/oauth/applications", "post", lambda a: "/v1/oauth/applications",
         {"name": "b-app", "grant_type": "client_credentials", "scopes": ["tenant:read"]}, _oauth_app_created_in_b),
    Case("v1/oauth/applications/<int:application_id>", "get",
         lambda a: f"/v1/oauth/applications/{a.oauth_application_id}", None, _not_found),
    Case("v1/oauth/applications/<int:application_id>", "delete",
         lambda a: f"/v1/oauth/applications/{a.oauth_application_id}", None, _not_found),
    Case("v1/oauth/applications/<int:application_id>/rotate-secret", "post",
         lambda a: f"/v1/oauth/applications/{a.oauth_application_id}/rotate-secret", {}, _not_found),
    # model routing policies
    Case("v1/routing-policies", "get", lambda a: "/v1/routing-policies?limit=500", None,
         _no_a_ids("id", lambda a: {a.routing_policy_id})),
    Case("v1/routing-policies", "post", lambda a: "/v1/routing-policies",
         {"name": A_ROUTING_POLICY, "policy": A_ROUTING, "is_default": True}, _routing_policy_created_in_b),
    Case("v1/routing-policies/<uuid:policy_id>", "get", lambda a: f"/v1/routing-policies/{a.routing_policy_id}", None,
         _not_found),
    Case("v1/routing-policies/<uuid:policy_id>", "patch", lambda a: f"/v1/routing-policies/{a.routing_policy_id}",
         {"is_default": False, "description": "from b"}, _not_found),
    Case("v1/routing-policies/<uuid:policy_id>", "delete", lambda a: f"/v1/routing-policies/{a.routing_policy_id}",
         None, _not_found),
    Case("v1/routing-policies/<uuid:policy_id>/explain", "post",
         lambda a: f"/v1/routing-policies/{a.routing_policy_id}/explain", {"input": "hi"}, _not_found),
    # approvals
    Case("v1/approvals", "get", lambda a: "/v1/approvals?limit=500", None, _no_a_ids("id", lambda a: {a.approval_id})),
    Case("v1/approvals/<uuid:approval_id>", "get", lambda a: f"/v1/approvals/{a.approval_id}", None, _not_found),
    Case("v1/approvals/<uuid:approval_id>/decide", "post", lambda a: f"/v1/approvals/{a.approval_id}/decide",
         {"approved": True}, _not_found),
    # portal members and invitations (public schema, filtered by tenant)
    Case("v1/members", "get", lambda a: "/v1/members?limit=500", None, _no_a_ids("id", lambda a: {a.member_id})),
    Case("v1/members/<uuid:membership_id>", "patch", lambda a: f"/v1/members/{a.member_id}", {"role": "viewer"},
         _not_found),
    Case("v1/members/<uuid:membership_id>", "delete", lambda a: f"/v1/members/{a.member_id}", None, _not_found),
    Case("v1/invitations", "get", lambda a: "/v1/invitations?limit=500", None,
         _no_a_ids("id", lambda a: {a.invitation_id})),
    Case("v1/invitations", "post", lambda a: "/v1/invitations", {"email": A_INVITEE, "role": "viewer"},
         lambda response, a, b: _invitation_created_in_b(response, a, b)),
    Case("v1/invitations/<uuid:invitation_id>", "delete", lambda a: f"/v1/invitations/{a.invitation_id}", None,
         _not_found),
    # usage (public schema, filtered by the caller's tenant): A's records and rollups are not B's
    Case("v1/usage", "get", lambda a: "/v1/usage?start=2026-02-10&end=2026-02-10&group_by=agent,name", None,
         lambda response, a, b: _usage_of_b_only(response, a, b)),
    Case("v1/usage/export", "get", lambda a: "/v1/usage/export?format=csv&start=2026-02-10&end=2026-02-10", None,
         lambda response, a, b: _usage_export_of_b_only(response, a, b)),
    # billing (public schema, filtered by tenant)
    Case("v1/billing", "get", lambda a: "/v1/billing", None, _no_a_billing),
    # budgets (public schema, filtered by tenant) and the token quota
    Case("v1/budgets", "get", lambda a: "/v1/budgets?limit=500", None, _no_a_ids("id", lambda a: {a.budget_id})),
    Case("v1/budgets", "post", lambda a: "/v1/budgets",
         lambda a: {"scope": "agent", "agent_id": a.agent_id, "period": "day", "limit_usd": "1"}, _no_budget_in_b),
    Case("v1/budgets/<uuid:budget_id>", "get", lambda a: f"/v1/budgets/{a.budget_id}", None, _not_found),
    Case("v1/budgets/<uuid:budget_id>", "patch", lambda a: f"/v1/budgets/{a.budget_id}", {"limit_usd": "9"},
         _not_found),
    Case("v1/budgets/<uuid:budget_id>", "delete", lambda a: f"/v1/budgets/{a.budget_id}", None, _not_found),
    Case("v1/budget-alerts", "get", lambda a: "/v1/budget-alerts?limit=500", None,
         _no_a_ids("id", lambda a: {a.budget_alert_id})),
    Case("v1/quotas/tokens", "get", lambda a: "/v1/quotas/tokens", None, _own_token_quota),
]


def _usage_of_b_only(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200, response.content
    assert response.json()["results"] == [] and response.json()["totals"] == []
    assert A_AGENT_NAME not in response.content.decode()


def _usage_export_of_b_only(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200
    exported = b"".join(response.streaming_content).decode()
    assert exported.splitlines()[1:] == [] and a.run_id not in exported


def _invitation_created_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 201, response.content
    assert Invitation.objects.get(id=response.json()["id"]).tenant_id == b.tenant.id
    assert Invitation.objects.get(id=a.invitation_id).revoked_at is None  # A's invitation to the same email stays


def _tenant_routes() -> set[tuple[str, str]]:
    """(route, method) for every handler of every TenantApiView in the URL conf."""
    found: set[tuple[str, str]] = set()

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                view_class = getattr(pattern.callback, "view_class", None)
                if view_class is not None and issubclass(view_class, TenantApiView):
                    for method in ("get", "post", "put", "patch", "delete"):
                        if hasattr(view_class, method):
                            found.add((prefix + str(pattern.pattern), method))

    walk(get_resolver().url_patterns, "")
    return found


def test_every_tenant_endpoint_is_in_the_matrix():
    assert _tenant_routes() == {(case.route, case.method) for case in CASES}


@pytest.fixture
def tenant_a_data(tenant_a) -> TenantAData:
    actor = Actor(kind="system", id="isolation-test")
    key = ApiKeyFactory(tenant=tenant_a.tenant, name="a-only")
    with schema_context(tenant_a.schema):
        ping = data_plane_services.ping_create(tenant=tenant_a.tenant, message="a", actor=actor)
        agent = data_plane_services.agent_create(tenant=tenant_a.tenant, name=A_AGENT_NAME, description="a",
                                                 spec=A_SPEC, actor=actor)
        run = data_plane_services.run_start(tenant=tenant_a.tenant, agent_id=agent.id, input="a", actor=actor)
        checkpoint = Checkpoint.objects.get(run=run)
        experiment = data_plane_services.experiment_create(
            tenant=tenant_a.tenant, agent_id=agent.id, name="a-test", actor=actor, variants=[
                {"name": "control", "weight": 1, "is_control": True},
                {"name": "terse", "weight": 1, "overrides": {"instructions": "Be terse."}}])
        approval = Approval.objects.get(run=run)
        # rows as registering would leave them (registering itself is tested with real servers elsewhere)
        server = McpServer.objects.create(name=A_SERVER_NAME, transport="stdio", command=sys.executable,
                                          args=[TOOLBOX], catalogue_version=1)
        McpTool.objects.create(server=server, name=f"{A_SERVER_NAME}__add", remote_name="add", description="Add.",
                               input_schema={"type": "object"})
        EffectRecordRow.objects.create(run=run, step=1, key="act:call-1", kind="tool", idempotency_key=f"{run.id}:iso",
                                    digest="0" * 64, name=f"{A_SERVER_NAME}__add", status="succeeded",
                                    latency_ms=1.5, result={"content": "2", "is_error": False})
        data_plane_services.tool_settings_update(tenant=tenant_a.tenant, http_fetch_hosts=["a.example.com"],
                                                 actor=actor)
        permission = data_plane_services.tool_permission_set(tenant=tenant_a.tenant, tool=f"{A_SERVER_NAME}__add",
                                                             mode="deny", actor=actor)
        [memory] = data_plane_services.memory_remember(
            tenant=tenant_a.tenant, actor=actor,
            drafts=[data_plane_services.memory_draft(text=A_MEMORY, end_user="alice")])
        data_plane_services.memory_settings_update(tenant=tenant_a.tenant, actor=actor, default_ttl_days=7)
        attachment = data_plane_services.attachment_upload(
            tenant=tenant_a.tenant, actor=actor, stream=io.BytesIO(media_files.png()), filename="a.png",
            declared_media_type="image/png")
        guardrail_services.policy_put(tenant=tenant_a.tenant, agent="", actor=actor,
                                      config={"actions": {"input": {"pii": "flag"}}})
        guardrail_services.policy_put(tenant=tenant_a.tenant, agent=A_AGENT_NAME, actor=actor,
                                      config={"actions": {"input": {"pii": "redact"}}})
        flag = GuardrailFlag.objects.create(agent=A_AGENT_NAME, point="input", check_name="pii", score=1.0,
                                            reasons=["pii.email"], message="An email address.")
        member = MembershipFactory(tenant=tenant_a.tenant, role="owner")
        invitation = identity_services.invitation_create(tenant=tenant_a.tenant, email=A_INVITEE, role="viewer",
                                                         actor=actor, granter_role=None).invitation
        oauth_application = oauth_services.application_create(
            tenant=tenant_a.tenant, name="a-app", grant_type="client_credentials", client_type="confidential",
            redirect_uris=[], scopes=["tenant:read"], actor=actor, granting_scopes=frozenset({"tenant:read"}))
        BillingAccount.objects.create(tenant=tenant_a.tenant, tier="standard", status="active",
                                      stripe_customer_id="cus_tenant_a", stripe_subscription_id="sub_tenant_a")
        Invoice.objects.create(stripe_invoice_id=A_INVOICE, tenant=tenant_a.tenant, status="paid", amount_due=9900,
                               amount_paid=9900)
        routing_policy = data_plane_services.routing_policy_create(
            tenant=tenant_a.tenant, name=A_ROUTING_POLICY, policy=A_ROUTING, is_default=True, actor=actor)
        budget = billing_services.budget_create(tenant=tenant_a.tenant, scope="agent", agent_id=agent.id,
                                                period="month", limit_usd=Decimal("5"), actor=actor)
        alert = BudgetAlert.objects.create(tenant=tenant_a.tenant, budget=budget, period_start=budget.created_at,
                                           threshold=50, spent_usd=Decimal("2.5"), limit_usd=Decimal("5"))
        TokenQuotaUsage.objects.create(tenant=tenant_a.tenant, period_start=period_start("month", datetime.now(timezone.utc)),
                                       used_tokens=1234)
        audit_ids = frozenset(str(i) for i in AuditEvent.objects.values_list("id", flat=True))
    # A's usage on 2026-02-10: a record and its daily rollup (public schema, A's tenant)
    UsageRecord.objects.create(tenant=tenant_a.tenant, source_key=f"{run.id}:iso", kind="llm", run_id=run.id,
                               agent_id=agent.id, agent_name=A_AGENT_NAME, name="openai/gpt-4o-mini", input_tokens=10,
                               occurred_at=datetime(2026, 2, 10, 12, tzinfo=timezone.utc))
    billing_services.usage_rollup(tenant=tenant_a.tenant, period="day",
                                  period_start=datetime(2026, 2, 10, tzinfo=timezone.utc))
    assert audit_ids
    assert run.status == "waiting_approval"
    return TenantAData(key_id=str(key.id), ping_id=str(ping.id), audit_ids=audit_ids, agent_id=str(agent.id),
                       run_id=str(run.id), checkpoint_id=str(checkpoint.id), approval_id=str(approval.id),
                       server_id=str(server.id), permission_id=str(permission.id),
                       memory_id=str(memory.memory.id), attachment_id=str(attachment.id), flag_id=str(flag.id),
                       member_id=str(member.id), invitation_id=str(invitation.id),
                       oauth_application_id=oauth_application.application.id, experiment_id=str(experiment.id),
                       routing_policy_id=str(routing_policy.id), budget_id=str(budget.id),
                       budget_alert_id=str(alert.id))


def _tenant_a_state(a: TenantAData) -> tuple:
    """Everything of tenant A's data plane a call from B could change."""
    return (
        list(Agent.objects.values_list("id", "description", "latest_version", "is_archived")),
        list(Run.objects.values_list("id", "status", "version", "step", "event_seq", "pause_requested")),
        list(Checkpoint.objects.values_list("id", "run_id", "step")),
        list(McpServer.objects.values_list("id", "status", "catalogue_version", "sealed_secrets")),
        list(McpTool.objects.values_list("name", "is_active", "version")),
        list(ToolPermission.objects.values_list("id", "tool", "mode")),
        list(ToolSettings.objects.values_list("http_fetch_hosts", flat=True)),
        list(Approval.objects.values_list("id", "status", "comment")),
        list(Memory.objects.values_list("id", "text", "updated_at", "merged_count")),
        list(RunFeedback.objects.values_list("id")),
        list(Experiment.objects.values_list("id", "status", "stopped_at", "promoted_version")),
        list(MemorySettings.objects.values_list("default_ttl_days", "embedding_model")),
        list(GuardrailPolicy.objects.values_list("id", "agent", "config", "revision")),
        list(GuardrailFlag.objects.values_list("id", "status", "reviewed_at")),
        list(RoutingPolicy.objects.values_list("id", "name", "description", "policy", "is_default", "updated_at")),
        [(row, _stored(key)) for *row, key in Attachment.objects.values_list("id", "run_id", "transcript",
                                                                              "storage_key")],
        list(Membership.objects.filter(tenant__schema_name=connection.schema_name).values_list("id", "role")),
        list(Invitation.objects.filter(tenant__schema_name=connection.schema_name)
             .values_list("id", "email", "role", "revoked_at", "accepted_at")),
        list(Budget.objects.filter(tenant__schema_name=connection.schema_name)
             .values_list("id", "limit_usd", "alert_thresholds", "is_enabled", "updated_at")),
    )


def _stored(key: str) -> bytes | None:
    try:
        with attachment_storage().open(key) as file:
            return file.read()
    except LookupError:
        return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method.upper()} {c.route}")
def test_tenant_b_sees_nothing_of_tenant_a(client, tenant_a, tenant_b, tenant_a_data, case):
    # given
    with schema_context(tenant_a.schema):
        a_before = _tenant_a_state(tenant_a_data)
    a_oauth_application = OAuthApplication.objects.filter(id=tenant_a_data.oauth_application_id)
    a_oauth_before = list(a_oauth_application.values_list("client_secret", "updated", "tenant_id"))
    # when
    kwargs = bearer(tenant_b.key)
    body = case.body(tenant_a_data) if callable(case.body) else case.body
    if case.is_multipart:
        response = getattr(client, case.method)(case.path(tenant_a_data), body, **kwargs)
    elif body is not None:
        response = getattr(client, case.method)(case.path(tenant_a_data), json.dumps(body),
                                                content_type="application/json", **kwargs)
    else:
        response = getattr(client, case.method)(case.path(tenant_a_data), **kwargs)
    # then
    case.check(response, tenant_a_data, tenant_b)
    # and tenant A's data is untouched
    assert ApiKey.objects.get(id=tenant_a_data.key_id).revoked_at is None
    assert list(a_oauth_application.values_list("client_secret", "updated", "tenant_id")) == a_oauth_before
    with schema_context(tenant_a.schema):
        assert Ping.objects.filter(message="from b").count() == 0
        assert Ping.objects.filter(id=tenant_a_data.ping_id).exists()
        assert _tenant_a_state(tenant_a_data) == a_before
        assert Run.objects.count() == 1 and Agent.objects.count() == 1


def test_a_signed_in_member_of_b_sees_nothing_of_a_and_cannot_enter_a(tenant_a, tenant_b, tenant_a_data):
    # given an admin of B, signed in
    b_admin = MembershipFactory(tenant=tenant_b.tenant, role="admin")
    client = Client()
    client.force_login(b_admin.user)
    as_b = {"HTTP_X_AGENTPLANE_TENANT": tenant_b.tenant.slug}
    as_a = {"HTTP_X_AGENTPLANE_TENANT": tenant_a.tenant.slug}
    # when / then: in B, none of A's members or invitations
    members = client.get("/v1/members", **as_b).json()["results"]
    assert [member["id"] for member in members] == [str(b_admin.id)]
    assert client.get("/v1/invitations", **as_b).json()["results"] == []
    assert client.patch(f"/v1/members/{tenant_a_data.member_id}", json.dumps({"role": "viewer"}),
                        content_type="application/json", **as_b).status_code == 404
    assert client.delete(f"/v1/invitations/{tenant_a_data.invitation_id}", **as_b).status_code == 404
    # naming A in the header is refused, whatever the endpoint
    for method, path in (("get", "/v1/members"), ("get", "/v1/runs"),
                         ("delete", f"/v1/members/{tenant_a_data.member_id}")):
        response = getattr(client, method)(path, **as_a)
        assert (response.status_code, response.json()["code"]) == (403, "not_a_member"), path
    assert Membership.objects.get(id=tenant_a_data.member_id).role == "owner"
    assert Invitation.objects.get(id=tenant_a_data.invitation_id).revoked_at is None


# --- Every other route: the operator API, the SSE stream, and what anyone may read --------------------
# A tenant's key (even an admin's, with every scope) is no operator key: every platform route refuses it and
# changes nothing, with bodies an operator's call would succeed with. The SSE stream is an async Django view
# (not a TenantApiView): tenant B's key gets a 404 for A's run there too, from a real Daphne. Routes that take the
# caller's own credential (a session, an OAuth client's, an invitation's token) name the test that proves they reach
# nothing else. The public routes answer the same with B's key as without one, and name nothing of A. Websocket
# routes are tested with a real Daphne (tests/test_websocket.py, tests/test_streaming.py: another tenant's key
# gets 4404).

PLATFORM_CASES = [
    Case("v1/platform/tenants", "get", lambda a: "/v1/platform/tenants", None, None),
    Case("v1/platform/tenants", "post", lambda a: "/v1/platform/tenants",
         {"name": "From B", "slug": "from-b-platform", "sla_tier": "standard"}, None),
    Case("v1/platform/tenants/<slug:slug>", "get", lambda a: f"/v1/platform/tenants/{a.slug}", None, None),
    Case("v1/platform/tenants/<slug:slug>", "patch", lambda a: f"/v1/platform/tenants/{a.slug}",
         {"sla_tier": "enterprise"}, None),
    Case("v1/platform/tenants/<slug:slug>", "delete", lambda a: f"/v1/platform/tenants/{a.slug}",
         lambda a: {"confirm": a.slug}, None),
    Case("v1/platform/tenants/<slug:slug>/suspend", "post", lambda a: f"/v1/platform/tenants/{a.slug}/suspend",
         {"reason": "from b"}, None),
    Case("v1/platform/tenants/<slug:slug>/reactivate", "post",
         lambda a: f"/v1/platform/tenants/{a.slug}/reactivate", {}, None),
    Case("v1/platform/tenants/<slug:slug>/api-keys", "post", lambda a: f"/v1/platform/tenants/{a.slug}/api-keys",
         {"name": "from b", "scopes": ["tenant:read"]}, None),
    Case("v1/platform/tenants/<slug:slug>/encryption", "get", lambda a: f"/v1/platform/tenants/{a.slug}/encryption",
         None, None),
    Case("v1/platform/slos", "get", lambda a: "/v1/platform/slos", None, None),
    Case("v1/platform/tenants/<slug:slug>/encryption", "put", lambda a: f"/v1/platform/tenants/{a.slug}/encryption",
         {"encrypts_payloads": True}, None),
    Case("v1/platform/finance/report", "get", lambda a: "/v1/platform/finance/report?start=2026-02-10&end=2026-02-10",
         None, None),
    Case("v1/platform/tenants/<slug:slug>/billing", "get", lambda a: f"/v1/platform/tenants/{a.slug}/billing", None,
         None),
    Case("v1/platform/tenants/<slug:slug>/billing", "post", lambda a: f"/v1/platform/tenants/{a.slug}/billing", {},
         None),
    Case("v1/platform/tenants/<slug:slug>/billing/tier", "post",
         lambda a: f"/v1/platform/tenants/{a.slug}/billing/tier", {"sla_tier": "enterprise"}, None),
    Case("v1/platform/tenants/<slug:slug>/billing/cancel", "post",
         lambda a: f"/v1/platform/tenants/{a.slug}/billing/cancel", {}, None),
]
# route -> the test of it (a view outside DRF, so outside both matrices)
NON_API_ROUTES = {"v1/runs/<uuid:run_id>/stream": "test_tenant_b_cannot_follow_tenant_a_run_over_sse"}
# route -> the test proving its caller reaches only what its own credential names (a signed-in user, an OAuth
# client's secret or token, an invitation's token): these routes take no tenant key, so neither matrix applies
_IDENTITY, _OAUTH = "control_plane.identity.tests.", "control_plane.oauth.tests."
OWN_CREDENTIAL_ROUTES = {
    "v1/auth/login": _IDENTITY + "test_sign_in_apis::test_wrong_password_and_unknown_email_get_the_same_answer",
    "v1/auth/logout": _IDENTITY + "test_sign_in_apis::test_logout_ends_the_session",
    "v1/auth/me": _IDENTITY + "test_sign_in_apis::test_sign_in_sets_an_http_only_lax_session_and_me_lists_memberships",
    "v1/auth/password":
        _IDENTITY + "test_sign_in_apis::test_password_change_signs_out_other_sessions_and_keeps_this_one",
    "v1/auth/totp/setup": _IDENTITY + "test_totp::test_setup_shows_the_secret_once_and_keeps_it_sealed",
    "v1/auth/totp/confirm": _IDENTITY + "test_totp::test_the_totp_secret_does_not_open_for_another_user",
    "v1/auth/totp/disable": _IDENTITY + "test_totp::test_disable_needs_a_code_and_removes_the_device",
    "v1/invitations/accept":
        _IDENTITY + "test_members_and_invitations::test_expired_revoked_and_unknown_tokens_are_refused",
    "accounts/login/": _IDENTITY + "test_totp::test_the_sign_in_page_asks_for_the_code_then_follows_next",
    "accounts/logout/": _IDENTITY + "test_totp::test_the_sign_in_page_refuses_an_offsite_next_and_a_missing_csrf_token",
    "accounts/signed-in/":
        _IDENTITY + "test_totp::test_the_sign_in_page_refuses_an_offsite_next_and_a_missing_csrf_token",
    "accounts/invitations/accept/":
        _IDENTITY + "test_members_and_invitations::test_the_invitation_page_names_only_its_own_tenant_and_accepts_once",
    "oauth/authorize":
        _OAUTH + "test_authorization_code::test_a_user_who_is_not_a_member_of_the_apps_tenant_cannot_authorize",
    "oauth/token": _OAUTH + "test_access_tokens::test_a_token_of_tenant_a_cannot_act_in_tenant_b",
    "oauth/revoke": _OAUTH + "test_access_tokens::test_a_client_cannot_revoke_another_clients_token",
    "oauth/introspect": _OAUTH + "test_access_tokens::test_introspection_answers_for_the_clients_own_tokens_only",
}
# route -> why anyone may call it
PUBLIC_ROUTES = {
    ".well-known/oauth-authorization-server": "the OAuth server's metadata (RFC 8414), the same for everyone",
    ".well-known/jwks.json": "the public keys that verify our access tokens",
    "healthz": "liveness probe: answers without touching the database",
    "readyz": "readiness probe: names the services that answer, nothing of any tenant",
    "v1/openapi.json": "the API reference, the same for everyone",
    "v1/docs": "the API reference (Swagger UI)",
    "v1/redoc": "the API reference (Redoc)",
    "v1/billing/stripe/webhook": "Stripe's webhooks: no credential, authenticated by the Stripe-Signature HMAC of "
                                 "the body with the endpoint's secret (billing/tests/test_stripe_webhooks.py)",
}
# Public routes that take a signed POST, not a GET: test_the_stripe_webhook_refuses_a_tenant_key_without_a_signature
SIGNED_POST_ROUTES = {"v1/billing/stripe/webhook"}


@dataclass(frozen=True)
class PlatformTarget:
    slug: str


def _routes_by_kind() -> dict[str, set[tuple[str, str]]]:
    """(route, method) of every URL pattern, by the kind of view that serves it; a function view's method is '*'."""
    from tenants.api_views import OperatorApiView

    found: dict[str, set[tuple[str, str]]] = {"tenant": set(), "operator": set(), "other": set()}

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
                continue
            route = prefix + str(pattern.pattern)
            view_class = getattr(pattern.callback, "view_class", None)
            kind = ("tenant" if view_class and issubclass(view_class, TenantApiView) else
                    "operator" if view_class and issubclass(view_class, OperatorApiView) else "other")
            methods = [m for m in ("get", "post", "put", "patch", "delete") if hasattr(view_class, m)] \
                if view_class else ["*"]
            found[kind].update((route, method) for method in methods)

    walk(get_resolver().url_patterns, "")
    return found


def test_every_route_is_in_a_matrix_or_public_on_purpose():
    routes = _routes_by_kind()
    assert routes["tenant"] == {(case.route, case.method) for case in CASES}
    assert routes["operator"] == {(case.route, case.method) for case in PLATFORM_CASES}
    others = set(NON_API_ROUTES) | set(OWN_CREDENTIAL_ROUTES) | set(PUBLIC_ROUTES)
    assert {route for route, _ in routes["other"]} == others
    for proof in OWN_CREDENTIAL_ROUTES.values():  # each named test exists
        module, _, name = proof.partition("::")
        assert callable(getattr(importlib.import_module(module), name, None)), proof


@pytest.mark.parametrize("case", PLATFORM_CASES, ids=lambda c: f"{c.method.upper()} {c.route}")
def test_a_tenant_key_is_no_operator_key(client, tenant_a, tenant_b, case):
    # given
    target = PlatformTarget(slug=tenant_a.tenant.slug)
    tenants_before = list(Tenant.objects.order_by("id").values_list("id", "slug", "status", "updated_at"))
    keys_before = ApiKey.objects.count()
    body = case.body(target) if callable(case.body) else case.body
    # when
    response = getattr(client, case.method)(case.path(target), json.dumps(body) if body is not None else None,
                                            content_type="application/json", **bearer(tenant_b.key))
    # then
    assert (response.status_code, response.json()["code"]) == (401, "invalid_credentials"), response.content
    assert list(Tenant.objects.order_by("id").values_list("id", "slug", "status", "updated_at")) == tenants_before
    assert ApiKey.objects.count() == keys_before


def test_tenant_b_cannot_follow_tenant_a_run_over_sse(daphne_url, committed):
    # given: a run of tenant A waiting for an approval, committed, served by a real Daphne (the stream is an
    # async view: its database work runs on other threads, which see committed data only)
    import httpx

    a, b = provision_for_test("sse-a"), provision_for_test("sse-b")
    try:
        with schema_context(a.schema):
            actor = Actor(kind="system", id="isolation-test")
            agent = data_plane_services.agent_create(tenant=a.tenant, name=A_AGENT_NAME, description="a",
                                                     spec=A_SPEC, actor=actor)
            run = data_plane_services.run_start(tenant=a.tenant, agent_id=agent.id, input="a", actor=actor)
        url = f"{daphne_url}/v1/runs/{run.id}/stream"
        # when
        as_b = httpx.get(url, headers={"Authorization": f"Bearer {b.key}"}, timeout=10)
        with httpx.stream("GET", url, headers={"Authorization": f"Bearer {a.key}"}, timeout=10) as as_a:
            first = next(as_a.iter_lines())
        # then: B learns nothing, not even that the run exists; A's own key streams it
        assert (as_b.status_code, as_b.json()["code"]) == (404, "run_not_found")
        assert str(run.id) in as_b.json()["detail"] and "event:" not in as_b.text
        assert as_a.status_code == 200 and first == "retry: 1000"
    finally:
        destroy_tenant(a.tenant)
        destroy_tenant(b.tenant)


@pytest.mark.parametrize("route", sorted(set(PUBLIC_ROUTES) - SIGNED_POST_ROUTES))
def test_a_public_route_answers_the_same_with_a_key_and_names_no_tenant(client, tenant_a, tenant_b, route):
    # when
    anonymous = client.get(f"/{route}")
    with_b_key = client.get(f"/{route}", **bearer(tenant_b.key))
    # then
    assert anonymous.status_code == with_b_key.status_code == 200
    for response in (anonymous, with_b_key):
        body = b"".join(response.streaming_content) if response.streaming else response.content
        for secret in (tenant_a.tenant.slug, tenant_a.schema, str(tenant_a.tenant.id), tenant_b.tenant.slug):
            assert secret.encode() not in body


def test_the_stripe_webhook_refuses_a_tenant_key_without_a_signature(client, settings, tenant_a, tenant_b):
    # given: Stripe on, and an event that would mark A's account past due
    settings.STRIPE_ENABLED, settings.STRIPE_WEBHOOK_SECRET = True, "whsec_isolation_test"
    account = BillingAccount.objects.create(tenant=tenant_a.tenant, tier="standard", status="active",
                                            stripe_customer_id="cus_isolation_a")
    body = json.dumps({"id": "evt_from_b", "object": "event", "type": "invoice.payment_failed", "created": 1,
                       "data": {"object": {"id": "in_x", "object": "invoice", "customer": "cus_isolation_a"}}})
    # when: B's key is presented instead of a signature
    response = client.post("/v1/billing/stripe/webhook", body, content_type="application/json",
                           **bearer(tenant_b.key))
    # then
    assert (response.status_code, response.json()["code"]) == (400, "webhook_signature_invalid")
    account.refresh_from_db()
    assert (account.status, account.grace_deadline) == ("active", None)
    assert not Invoice.objects.filter(stripe_invoice_id="in_x").exists()
