"""A machine client of a tenant: registered through the API, gets a JWT from /oauth/token, calls the API."""

from __future__ import annotations

import jwt
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django_tenants.utils import schema_context

from conftest import bearer
from control_plane.audit.models import AuditEvent
from control_plane.oauth.models import Application as OAuthApplication
from control_plane.oauth.tests.flows import RegisteredApp, client_credentials_token, register, token_request
from data_plane.models import Agent
from tenants.tests.factories import ApiKeyFactory

AGENT = {"name": "by-oauth", "spec": {"instructions": "x", "models": ["openai/gpt-4o-mini"]}}


def test_a_client_gets_a_token_and_calls_the_api_with_its_scopes_only(client, tenant_a):
    # given
    app = register(client, tenant_a.key, scopes=["tenant:read", "agents:read"])
    # when
    issued = client_credentials_token(client, app)
    token = issued["access_token"]
    tenant = client.get("/v1/tenant", **bearer(token))
    listed = client.get("/v1/agents", **bearer(token))
    write = client.post("/v1/agents", AGENT, content_type="application/json", **bearer(token))
    # then
    assert (issued["token_type"], issued["expires_in"], sorted(issued["scope"].split()), "refresh_token" in issued) \
        == ("Bearer", settings.OAUTH_ACCESS_TOKEN_TTL_SECONDS, ["agents:read", "tenant:read"], False)
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)
    assert (claims["sub"], claims["client_id"], claims["tid"], claims["iss"], claims["aud"]) == (
        app.client_id, app.client_id, str(tenant_a.tenant.id), settings.OAUTH_ISSUER, settings.OAUTH_AUDIENCE)
    assert claims["exp"] - claims["iat"] == settings.OAUTH_ACCESS_TOKEN_TTL_SECONDS
    assert (header["alg"], header["typ"], len(header["kid"])) == ("ES256", "at+jwt", 16)
    assert (tenant.status_code, tenant.json()["id"]) == (200, str(tenant_a.tenant.id))
    assert listed.status_code == 200
    assert (write.status_code, write.json()["code"]) == (403, "missing_scope")
    with schema_context(tenant_a.schema):
        assert not Agent.objects.filter(name="by-oauth").exists()


def test_a_client_acts_as_itself_in_the_audit_log(client, tenant_a):
    # given
    app = register(client, tenant_a.key, scopes=["agents:write"], name="deployer")
    token = client_credentials_token(client, app)["access_token"]
    # when
    created = client.post("/v1/agents", AGENT, content_type="application/json", **bearer(token))
    # then
    assert created.status_code == 201, created.content
    with schema_context(tenant_a.schema):
        event = AuditEvent.objects.get(action="agent.create", target_id=created.json()["id"])
        registered = AuditEvent.objects.get(action="oauth_application.create", target_id=str(app.id))
    assert (event.actor_kind, event.actor_id) == ("oauth_client", app.client_id)
    assert registered.data["client_id"] == app.client_id
    assert app.client_secret not in str(registered.data)


def test_a_client_cannot_ask_for_more_than_its_application_may_get(client, tenant_a):
    # given
    app = register(client, tenant_a.key, scopes=["agents:read"])
    # when
    response = token_request(client, app, grant_type="client_credentials", scope="agents:read agents:write")
    wrong_secret = token_request(client, app.__class__(app.id, app.client_id, "not-the-secret"),
                                 grant_type="client_credentials")
    # then
    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")
    assert (wrong_secret.status_code, wrong_secret.json()["error"]) == (401, "invalid_client")


def test_an_application_never_gets_more_scopes_than_its_creator(client, tenant_a):
    # given
    creator = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["oauth:write", "tenant:read"])
    # when
    response = client.post("/v1/oauth/applications", {"name": "greedy", "grant_type": "client_credentials",
                                                      "scopes": ["tenant:read", "agents:write"]},
                           content_type="application/json", **bearer(creator.plaintext))
    # then
    assert (response.status_code, response.json()["code"]) == (403, "scope_escalation")
    assert "agents:write" in response.json()["detail"]
    listed = client.get("/v1/oauth/applications", **bearer(tenant_a.key)).json()["results"]
    assert "greedy" not in [app["name"] for app in listed]


def test_a_client_secret_is_stored_salted_and_hashed_without_stretching_and_passwords_never_use_that(client, tenant_a):
    # given
    app = register(client, tenant_a.key, scopes=["tenant:read"])
    # when
    stored = OAuthApplication.objects.get(id=app.id).client_secret
    impostor = RegisteredApp(id=app.id, client_id=app.client_id, client_secret=app.client_secret[:-1] + "x")
    wrong = token_request(client, impostor, grant_type="client_credentials")
    # then: the stored form names our hasher, holds no secret, and still tells a right secret from a wrong one
    assert stored.startswith("oauth_client_secret$1$") and app.client_secret not in stored
    assert client_credentials_token(client, app)["access_token"]
    assert wrong.status_code == 401
    assert not make_password("a user's password").startswith("oauth_client_secret$")
