"""An interactive app acting for a signed-in member: authorization code with PKCE (S256 only), refresh
tokens that rotate, and scopes bounded by the member's current role."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from django.conf import settings
from django_tenants.utils import schema_context
from oauth2_provider.models import Grant

from conftest import bearer
from control_plane.audit.models import AuditEvent
from control_plane.identity.models import Membership
from control_plane.oauth.tests.flows import (
    REDIRECT_URI,
    authorization_code_tokens,
    authorize_query,
    code_of,
    consent,
    member,
    pkce_pair,
    register,
    token_request,
)

AGENT = {"name": "by-member", "spec": {"instructions": "x", "models": ["openai/gpt-4o-mini"]}}
APP_SCOPES = ["agents:read", "agents:write", "audit:read", "tenant:read"]


def test_a_member_authorizes_an_app_which_then_acts_as_that_member(client, tenant_a):
    # given: a public client (no secret) and a developer of the tenant
    app = register(client, tenant_a.key, scopes=APP_SCOPES, grant_type="authorization_code", client_type="public")
    developer = member(tenant_a.tenant, "developer")
    # when
    tokens = authorization_code_tokens(client, app, developer)
    created = client.post("/v1/agents", AGENT, content_type="application/json", **bearer(tokens["access_token"]))
    audit = client.get("/v1/audit-events", **bearer(tokens["access_token"]))
    # then: the token holds what both the app and the developer role allow (no audit:read for a developer)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert sorted(tokens["scope"].split()) == ["agents:read", "agents:write", "tenant:read"]
    assert (claims["sub"], claims["client_id"], claims["tid"]) == (str(developer.pk), app.client_id,
                                                                   str(tenant_a.tenant.id))
    assert tokens["refresh_token"] and tokens["expires_in"] == settings.OAUTH_ACCESS_TOKEN_TTL_SECONDS
    assert created.status_code == 201, created.content
    assert (audit.status_code, audit.json()["code"]) == (403, "missing_scope")
    with schema_context(tenant_a.schema):
        event = AuditEvent.objects.get(action="agent.create", target_id=created.json()["id"])
    assert (event.actor_kind, event.actor_id) == ("user", str(developer.pk))


def test_the_code_is_refused_with_the_wrong_verifier_and_works_once_with_the_right_one(client, tenant_a):
    # given
    app = register(client, tenant_a.key, scopes=APP_SCOPES, grant_type="authorization_code")
    client.force_login(member(tenant_a.tenant, "admin"))
    verifier, challenge = pkce_pair()
    code = code_of(consent(client, app, challenge=challenge))
    # when
    wrong = token_request(client, app, grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI,
                          code_verifier=pkce_pair()[0])
    missing = token_request(client, app, grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI)
    right = token_request(client, app, grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI,
                          code_verifier=verifier)
    again = token_request(client, app, grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI,
                          code_verifier=verifier)
    # then
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    assert right.status_code == 200
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")


def test_pkce_is_required_and_the_plain_method_is_refused(client, tenant_a):
    # given
    app = register(client, tenant_a.key, scopes=APP_SCOPES, grant_type="authorization_code")
    client.force_login(member(tenant_a.tenant, "owner"))
    verifier, _ = pkce_pair()
    # when
    plain = consent(client, app, challenge=verifier, method="plain")
    without = client.get(authorize_query(app, challenge=None))
    # then: no code is issued; the errors go back to the client's redirect URI
    plain_error = parse_qs(urlsplit(plain["Location"]).query)
    without_error = parse_qs(urlsplit(without["Location"]).query)
    assert (plain.status_code, plain_error["error"], plain_error["state"]) == (302, ["invalid_request"], ["xyz"])
    assert "S256" in plain_error["error_description"][0]
    assert (without.status_code, without_error["error"]) == (302, ["invalid_request"])
    assert not Grant.objects.filter(application__client_id=app.client_id).exists()


def test_the_metadata_offers_s256_only(client, db):
    # when
    metadata = client.get("/.well-known/oauth-authorization-server").json()
    # then
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["issuer"] == settings.OAUTH_ISSUER
    assert metadata["token_endpoint"] == f"{settings.OAUTH_ISSUER}/oauth/token"
    assert metadata["authorization_endpoint"] == f"{settings.OAUTH_ISSUER}/oauth/authorize"
    assert metadata["revocation_endpoint"] == f"{settings.OAUTH_ISSUER}/oauth/revoke"
    assert metadata["introspection_endpoint"] == f"{settings.OAUTH_ISSUER}/oauth/introspect"
    assert metadata["jwks_uri"] == f"{settings.OAUTH_ISSUER}/.well-known/jwks.json"
    assert sorted(metadata["grant_types_supported"]) == ["authorization_code", "client_credentials", "refresh_token"]
    assert metadata["response_types_supported"] == ["code"]


def test_a_user_who_is_not_a_member_of_the_apps_tenant_cannot_authorize(client, tenant_a, tenant_b):
    # given: a member of B only
    app = register(client, tenant_a.key, scopes=APP_SCOPES, grant_type="authorization_code")
    outsider = member(tenant_b.tenant, "owner")
    client.force_login(outsider)
    _, challenge = pkce_pair()
    # when
    page = client.get(authorize_query(app, challenge=challenge))
    posted = client.post("/oauth/authorize", {"client_id": app.client_id, "redirect_uri": REDIRECT_URI,
                                              "response_type": "code", "scope": "agents:read", "state": "s",
                                              "code_challenge": challenge, "code_challenge_method": "S256",
                                              "allow": "Authorize"})
    # then
    assert page.status_code == 403 and "not a member" in page.content.decode()
    assert posted.status_code == 403
    assert not Grant.objects.filter(application__client_id=app.client_id).exists()


def test_a_signed_out_visitor_is_sent_to_the_sign_in_page(client, tenant_a):
    app = register(client, tenant_a.key, scopes=APP_SCOPES, grant_type="authorization_code")
    response = client.get(authorize_query(app, challenge=pkce_pair()[1]))
    assert response.status_code == 302
    assert response["Location"].startswith(settings.LOGIN_URL + "?next=")


def test_a_demoted_members_tokens_shrink_at_once_and_a_removed_members_stop(client, tenant_a):
    # given
    app = register(client, tenant_a.key, scopes=APP_SCOPES, grant_type="authorization_code")
    developer = member(tenant_a.tenant, "developer")
    tokens = authorization_code_tokens(client, app, developer)
    token = bearer(tokens["access_token"])
    assert client.post("/v1/agents", AGENT, content_type="application/json", **token).status_code == 201
    # when: demoted to viewer
    Membership.objects.filter(user=developer, tenant=tenant_a.tenant).update(role="viewer")
    demoted_write = client.post("/v1/agents", {**AGENT, "name": "later"}, content_type="application/json", **token)
    demoted_read = client.get("/v1/agents", **token)
    # and when: removed
    Membership.objects.filter(user=developer, tenant=tenant_a.tenant).delete()
    removed = client.get("/v1/agents", **token)
    refreshed = token_request(client, app, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    # then
    assert (demoted_write.status_code, demoted_write.json()["code"]) == (403, "missing_scope")
    assert demoted_read.status_code == 200
    assert (removed.status_code, removed.json()["code"]) == (401, "credential_revoked")
    assert (refreshed.status_code, refreshed.json()["error"]) == (400, "invalid_grant")


def test_refresh_rotates_and_reusing_a_spent_refresh_token_revokes_the_family(client, tenant_a):
    # given
    app = register(client, tenant_a.key, scopes=APP_SCOPES, grant_type="authorization_code")
    first = authorization_code_tokens(client, app, member(tenant_a.tenant, "developer"))
    # when: refreshed once
    second = token_request(client, app, grant_type="refresh_token", refresh_token=first["refresh_token"]).json()
    first_access = client.get("/v1/agents", **bearer(first["access_token"]))
    second_access = client.get("/v1/agents", **bearer(second["access_token"]))
    # and when: the spent refresh token comes back (stolen and replayed)
    replay = token_request(client, app, grant_type="refresh_token", refresh_token=first["refresh_token"])
    # then: rotation revoked the first pair; the replay revoked the whole family
    assert second["refresh_token"] != first["refresh_token"]
    assert sorted(second["scope"].split()) == ["agents:read", "agents:write", "tenant:read"]
    assert (first_access.status_code, first_access.json()["code"]) == (401, "credential_revoked")
    assert second_access.status_code == 200
    assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
    after_replay = client.get("/v1/agents", **bearer(second["access_token"]))
    third = token_request(client, app, grant_type="refresh_token", refresh_token=second["refresh_token"])
    assert (after_replay.status_code, after_replay.json()["code"]) == (401, "credential_revoked")
    assert (third.status_code, third.json()["error"]) == (400, "invalid_grant")


def test_a_public_client_signs_out_by_revoking_its_refresh_token(client, tenant_a):
    # given
    app = register(client, tenant_a.key, scopes=APP_SCOPES, grant_type="authorization_code", client_type="public")
    tokens = authorization_code_tokens(client, app, member(tenant_a.tenant, "viewer"))
    # when
    revoked = client.post("/oauth/revoke", urlencode({"client_id": app.client_id, "token": tokens["refresh_token"]}),
                          content_type="application/x-www-form-urlencoded")
    access = client.get("/v1/agents", **bearer(tokens["access_token"]))
    refreshed = token_request(client, app, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    # then: the pair is gone
    assert revoked.status_code == 200
    assert (access.status_code, access.json()["code"]) == (401, "credential_revoked")
    assert (refreshed.status_code, refreshed.json()["error"]) == (400, "invalid_grant")


def test_the_consent_page_lets_its_form_reach_this_origin_and_the_clients_redirect_origin_only(client, tenant_a):
    # given
    app = register(client, tenant_a.key, scopes=APP_SCOPES, grant_type="authorization_code", client_type="public")
    client.force_login(member(tenant_a.tenant, "developer"))
    # when
    page = client.get(authorize_query(app, challenge=pkce_pair()[1]))
    # then: a browser may submit the form here and follow its redirect to the client, nowhere else
    assert page.status_code == 200, page.content
    policy = page["Content-Security-Policy"]
    assert policy.endswith("form-action 'self' https://app.example.com")
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
