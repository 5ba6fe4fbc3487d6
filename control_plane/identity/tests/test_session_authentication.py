"""Portal users on tenant endpoints: the X-Agentplane-Tenant header, their role's scopes, CSRF, and bearer
credentials first."""

from __future__ import annotations

import json

from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context

from common.actors import Actor
from conftest import bearer
from control_plane.audit.models import AuditEvent
from control_plane.identity.tests.factories import MembershipFactory
from data_plane.models import Ping
from tenants import roles
from tenants import services as tenant_services


def _signed_in(client: Client, membership) -> Client:  # type: ignore[no-untyped-def]
    client.force_login(membership.user)
    return client


def _header(slug: str) -> dict[str, str]:
    return {"HTTP_X_AGENTPLANE_TENANT": slug}


def test_a_member_reads_their_tenant_in_its_schema(client, tenant_a):
    # given
    membership = MembershipFactory(tenant=tenant_a.tenant, role=roles.VIEWER)
    _signed_in(client, membership)
    # when
    response = client.get("/v1/tenant", **_header(tenant_a.tenant.slug))
    # then
    assert response.status_code == 200 and response.json()["id"] == str(tenant_a.tenant.id)
    assert connection.schema_name == "public"  # and the request ended on the public schema


def test_the_tenant_header_is_required_and_must_name_a_tenant(client, tenant_a):
    _signed_in(client, MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER))
    missing = client.get("/v1/tenant")
    unknown = client.get("/v1/tenant", **_header("no-such-tenant"))
    assert (missing.status_code, missing.json()["code"]) == (400, "tenant_header_missing")
    assert "X-Agentplane-Tenant" in missing.json()["detail"]
    assert (unknown.status_code, unknown.json()["code"]) == (400, "tenant_header_unknown")


def test_a_user_cannot_enter_a_tenant_they_are_not_a_member_of(client, tenant_a, tenant_b):
    _signed_in(client, MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER))
    response = client.get("/v1/tenant", **_header(tenant_b.tenant.slug))
    assert (response.status_code, response.json()["code"]) == (403, "not_a_member")


def test_a_removed_member_is_refused_at_the_next_request(client, tenant_a):
    membership = MembershipFactory(tenant=tenant_a.tenant, role=roles.ADMIN)
    _signed_in(client, membership)
    assert client.get("/v1/tenant", **_header(tenant_a.tenant.slug)).status_code == 200
    membership.delete()
    assert client.get("/v1/tenant", **_header(tenant_a.tenant.slug)).status_code == 403


def test_a_suspended_tenant_refuses_its_members(client, tenant_a):
    membership = MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER)
    _signed_in(client, membership)
    # (a copy of the row: the session-wide tenant object must stay active for the tests after this one)
    tenant = type(tenant_a.tenant).objects.get(pk=tenant_a.tenant.pk)
    tenant_services.tenant_suspend(tenant=tenant, reason="unpaid", actor=Actor(kind="system", id="t"))
    response = client.get("/v1/tenant", **_header(tenant.slug))
    assert (response.status_code, response.json()["code"]) == (403, "tenant_suspended")


def test_a_role_without_the_scope_gets_403_and_the_change_is_recorded_with_the_user(client, tenant_a):
    # given a viewer and a developer
    viewer = MembershipFactory(tenant=tenant_a.tenant, role=roles.VIEWER)
    developer = MembershipFactory(tenant=tenant_a.tenant, role=roles.DEVELOPER)
    # when each creates a ping (pings:write)
    refused = _signed_in(Client(), viewer).post("/v1/pings", json.dumps({"message": "from viewer"}),
                                                content_type="application/json", **_header(tenant_a.tenant.slug))
    created = _signed_in(Client(), developer).post("/v1/pings", json.dumps({"message": "from developer"}),
                                                   content_type="application/json", **_header(tenant_a.tenant.slug))
    # then
    assert (refused.status_code, refused.json()["code"]) == (403, "missing_scope")
    assert "role" in refused.json()["detail"]
    assert created.status_code == 202, created.content
    with schema_context(tenant_a.schema):
        assert not Ping.objects.filter(message="from viewer").exists()
        event = AuditEvent.objects.get(target_id=created.json()["id"])
    assert (event.actor_kind, event.actor_id) == ("user", str(developer.user.pk))


def test_unsafe_methods_need_the_csrf_token(tenant_a):
    # given a browser-like client
    membership = MembershipFactory(tenant=tenant_a.tenant, role=roles.DEVELOPER)
    client = _signed_in(Client(enforce_csrf_checks=True), membership)
    token = client.get("/v1/auth/me").json()["csrf_token"]
    body = json.dumps({"message": "csrf"})
    # when
    without = client.post("/v1/pings", body, content_type="application/json", **_header(tenant_a.tenant.slug))
    with_token = client.post("/v1/pings", body, content_type="application/json", HTTP_X_CSRFTOKEN=token,
                             **_header(tenant_a.tenant.slug))
    reading = client.get("/v1/pings", **_header(tenant_a.tenant.slug))
    # then
    assert without.status_code == 403 and "CSRF" in without.json()["detail"]
    assert with_token.status_code == 202
    assert reading.status_code == 200
    with schema_context(tenant_a.schema):
        assert Ping.objects.filter(message="csrf").count() == 1


def test_a_bearer_credential_takes_precedence_over_the_session(client, tenant_a, tenant_b):
    # given a user signed in to A who also sends B's key
    _signed_in(client, MembershipFactory(tenant=tenant_a.tenant, role=roles.OWNER))
    # when
    with_key = client.get("/v1/tenant", **_header(tenant_a.tenant.slug), **bearer(tenant_b.key))
    with_bad_bearer = client.get("/v1/tenant", **_header(tenant_a.tenant.slug), **bearer("agp_nonsense"))
    # then the key decides, and a bad bearer never falls back to the session
    assert with_key.status_code == 200 and with_key.json()["id"] == str(tenant_b.tenant.id)
    assert with_bad_bearer.status_code == 401


def test_a_portal_user_is_told_stream_tokens_need_an_api_key(client, tenant_a):
    # given a run in A and a developer of A, signed in
    from data_plane import services as data_plane_services

    actor = Actor(kind="system", id="t")
    with schema_context(tenant_a.schema):
        agent = data_plane_services.agent_create(tenant=tenant_a.tenant, name="streamed", description="", actor=actor,
                                                 spec={"instructions": "", "models": ["openai/gpt-4o-mini"]})
        run = data_plane_services.run_start(tenant=tenant_a.tenant, agent_id=agent.id, input="hi", actor=actor)
    _signed_in(client, MembershipFactory(tenant=tenant_a.tenant, role=roles.DEVELOPER))
    # when
    response = client.post(f"/v1/runs/{run.id}/stream-token", "{}", content_type="application/json",
                           **_header(tenant_a.tenant.slug))
    # then
    assert (response.status_code, response.json()["code"]) == (403, "stream_token_needs_api_key")
