"""Access tokens on the API: revocation at once, expiry, signing-key rotation, tampering, tenants apart."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.management import call_command
from django.utils import timezone
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, bearer
from control_plane.oauth import signing
from control_plane.oauth.tests.flows import basic, client_credentials_token, register
from data_plane import services as data_plane_services
from tenants import services as tenant_services

SPEC = {"instructions": "x", "models": ["openai/gpt-4o-mini"]}


@pytest.fixture
def app_a(client, tenant_a):
    return register(client, tenant_a.key, scopes=["tenant:read", "agents:read", "agents:write", "runs:read",
                                                  "runs:write"])


def token_of(client, app) -> str:  # type: ignore[no-untyped-def]
    return client_credentials_token(client, app)["access_token"]


def form(**fields: str) -> dict:
    return {"data": urlencode(fields), "content_type": "application/x-www-form-urlencoded"}


def test_revoking_an_access_token_takes_effect_at_once(client, app_a):
    # given
    token = token_of(client, app_a)
    assert client.get("/v1/agents", **bearer(token)).status_code == 200
    # when
    revoked = client.post("/oauth/revoke", **form(token=token, token_type_hint="access_token"), **basic(app_a))
    after = client.get("/v1/agents", **bearer(token))
    # then
    assert revoked.status_code == 200
    assert (after.status_code, after.json()["code"]) == (401, "credential_revoked")


def test_a_client_cannot_revoke_another_clients_token(client, tenant_a, app_a):
    # given
    other = register(client, tenant_a.key, scopes=["tenant:read"], name="other")
    token = token_of(client, app_a)
    # when
    response = client.post("/oauth/revoke", **form(token=token), **basic(other))
    # then: RFC 7009 answers 200 either way; the token lives on
    assert response.status_code == 200
    assert client.get("/v1/agents", **bearer(token)).status_code == 200


def test_deleting_the_application_ends_its_tokens(client, tenant_a, app_a):
    token = token_of(client, app_a)
    deleted = client.delete(f"/v1/oauth/applications/{app_a.id}", **bearer(tenant_a.key))
    after = client.get("/v1/agents", **bearer(token))
    assert deleted.status_code == 204
    assert (after.status_code, after.json()["code"]) == (401, "credential_revoked")


def test_a_rotated_secret_replaces_the_old_one(client, tenant_a, app_a):
    rotated = client.post(f"/v1/oauth/applications/{app_a.id}/rotate-secret", **bearer(tenant_a.key)).json()
    old = client.post("/oauth/token", **form(grant_type="client_credentials"), **basic(app_a))
    new = client.post("/oauth/token", **form(grant_type="client_credentials"),
                      **basic(app_a.__class__(app_a.id, app_a.client_id, rotated["client_secret"])))
    assert rotated["client_secret"] != app_a.client_secret
    assert (old.status_code, new.status_code) == (401, 200)
    listed = client.get(f"/v1/oauth/applications/{app_a.id}", **bearer(tenant_a.key)).json()
    assert "client_secret" not in listed


def test_an_expired_token_is_refused(client, app_a, settings):
    # given: tokens that expire before they are issued (past the leeway)
    settings.OAUTH_ACCESS_TOKEN_TTL_SECONDS = -(settings.OAUTH_LEEWAY_SECONDS + 5)
    token = token_of(client, app_a)
    # when
    response = client.get("/v1/agents", **bearer(token))
    # then
    assert (response.status_code, response.json()["code"]) == (401, "credential_expired")


def _tampered(token: str, **changes: object) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


def test_a_tampered_or_forged_token_is_refused(client, tenant_a, tenant_b, app_a):
    # given
    token = token_of(client, app_a)
    kid = jwt.get_unverified_header(token)["kid"]
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode({**claims, "scope": "agents:write keys:write"}, ec.generate_private_key(ec.SECP256R1()),
                        algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": kid, "typ": "at+jwt"})
    # when
    answers = {name: client.get("/v1/agents", **bearer(raw)) for name, raw in {
        "more scopes": _tampered(token, scope="keys:write"),
        "other tenant": _tampered(token, tid=str(tenant_b.tenant.id)),
        "forged": forged, "unsigned": unsigned, "garbage": "not-a-token"}.items()}
    # then
    assert {name: (r.status_code, r.json()["code"]) for name, r in answers.items()} == {
        name: (401, "invalid_credentials") for name in answers}
    assert client.get("/v1/agents", **bearer(token)).status_code == 200


def test_api_keys_keep_their_own_errors_beside_tokens(client, tenant_a):
    malformed = client.get("/v1/agents", **bearer("agp_zzz"))
    assert (malformed.status_code, malformed.json()["code"]) == (401, "invalid_credentials")
    assert malformed.json()["detail"] == "The bearer token is not a valid api key."
    assert client.get("/v1/agents", **bearer(tenant_a.key)).status_code == 200


def test_a_token_of_tenant_a_cannot_act_in_tenant_b(client, tenant_a, tenant_b, app_a):
    # given: an agent and an application in B
    with schema_context(tenant_b.schema):
        agent_b = data_plane_services.agent_create(tenant=tenant_b.tenant, name="b-only", description="",
                                                   spec=SPEC, actor=TEST_ACTOR)
    app_b = register(client, tenant_b.key, scopes=["tenant:read"], name="b-app")
    token = token_of(client, app_a)
    # when
    agent = client.get(f"/v1/agents/{agent_b.id}", **bearer(token))
    agents = client.get("/v1/agents?limit=500", **bearer(token))
    application = client.get(f"/v1/oauth/applications/{app_b.id}", **bearer(tenant_a.key))
    run = client.post("/v1/runs", {"agent_id": str(agent_b.id), "input": "x"}, content_type="application/json",
                      **bearer(token))
    # then
    assert (agent.status_code, run.status_code, application.status_code) == (404, 404, 404)
    assert str(agent_b.id) not in {item["id"] for item in agents.json()["results"]}


def test_a_suspended_tenants_tokens_are_refused_like_its_keys(client, tenant_a, app_a):
    token = token_of(client, app_a)
    tenant_services.tenant_suspend(tenant=tenant_a.tenant, reason="unpaid", actor=TEST_ACTOR)
    by_token = client.get("/v1/agents", **bearer(token))
    by_key = client.get("/v1/agents", **bearer(tenant_a.key))
    new_token = client.post("/oauth/token", **form(grant_type="client_credentials"), **basic(app_a))
    assert (by_token.status_code, by_token.json()["code"]) == (by_key.status_code, by_key.json()["code"]) \
        == (403, "tenant_suspended")
    assert (new_token.status_code, new_token.json()["error"]) == (401, "invalid_client")


def test_key_rotation_keeps_old_tokens_until_their_keys_retire(client, app_a, settings):
    # given: a token signed by the current key
    old_token = token_of(client, app_a)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    # when: rotated
    call_command("oauth_rotate_signing_key", stdout=open("/dev/null", "w"))
    new_token = token_of(client, app_a)
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    published = client.get("/.well-known/jwks.json")
    # then: both verify, both are published
    assert new_kid != old_kid
    assert client.get("/v1/agents", **bearer(old_token)).status_code == 200
    assert client.get("/v1/agents", **bearer(new_token)).status_code == 200
    assert {key["kid"] for key in published.json()["keys"]} >= {old_kid, new_kid}
    assert all((key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
               for key in published.json()["keys"])
    assert all(set(key) == {"kty", "crv", "x", "y", "kid", "use", "alg"} for key in published.json()["keys"])  # no d
    assert published["Cache-Control"] == "public, max-age=300"
    # and: once every token of the old key has expired, it is retired (no longer published)
    after_lifetime = timezone.now() + timezone.timedelta(
        seconds=settings.OAUTH_ACCESS_TOKEN_TTL_SECONDS + settings.OAUTH_LEEWAY_SECONDS + 1)
    assert old_kid not in set(signing.signing_key_list_published(now=after_lifetime).values_list("kid", flat=True))
    assert new_kid in set(signing.signing_key_list_published(now=after_lifetime).values_list("kid", flat=True))


def test_an_emergency_rotation_ends_the_previous_keys_tokens_at_once(client, app_a):
    # given
    old_token = token_of(client, app_a)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    # when
    rotated = signing.signing_key_rotate(retire_previous_now=True)
    # then
    refused = client.get("/v1/agents", **bearer(old_token))
    assert (refused.status_code, refused.json()["code"]) == (401, "invalid_credentials")
    assert old_kid in refused.json()["detail"]
    assert old_kid in rotated.retired
    assert old_kid not in {key["kid"] for key in client.get("/.well-known/jwks.json").json()["keys"]}
    assert client.get("/v1/agents", **bearer(token_of(client, app_a))).status_code == 200


def test_introspection_answers_for_the_clients_own_tokens_only(client, tenant_a, app_a):
    # given
    other = register(client, tenant_a.key, scopes=["tenant:read"], name="other")
    token = token_of(client, app_a)
    # when
    own = client.post("/oauth/introspect", **form(token=token), **basic(app_a)).json()
    foreign = client.post("/oauth/introspect", **form(token=token), **basic(other)).json()
    anonymous = client.post("/oauth/introspect", **form(token=token))
    # then
    assert (own["active"], own["client_id"], own["tid"]) == (True, app_a.client_id, str(tenant_a.tenant.id))
    assert sorted(own["scope"].split()) == ["agents:read", "agents:write", "runs:read", "runs:write", "tenant:read"]
    assert foreign == {"active": False}
    assert anonymous.status_code == 401


def test_a_stream_token_for_an_oauth_client_is_bounded_by_it_and_dies_with_it(client, tenant_a, app_a):
    # given: a run of tenant A, and a token of a client that may read runs but not approve
    with schema_context(tenant_a.schema):
        agent = data_plane_services.agent_create(tenant=tenant_a.tenant, name="streamed", description="", spec=SPEC,
                                                 actor=TEST_ACTOR)
        run = data_plane_services.run_start(tenant=tenant_a.tenant, agent_id=agent.id, input="x", actor=TEST_ACTOR)
    token = token_of(client, app_a)
    # when
    issued = client.post(f"/v1/runs/{run.id}/stream-token", {}, content_type="application/json", **bearer(token))
    beyond = client.post(f"/v1/runs/{run.id}/stream-token", {"scopes": ["approvals:write"]},
                         content_type="application/json", **bearer(token))
    # then
    assert issued.status_code == 201, issued.content
    assert issued.json()["scopes"] == ["runs:read", "runs:write"]
    assert (beyond.status_code, beyond.json()["code"]) == (403, "scope_escalation")
    grant = tenant_services.stream_token_authenticate(raw=issued.json()["token"])
    assert (grant.tenant.id, grant.key_id, grant.scopes, grant.run_id, grant.actor.kind, grant.actor.id) == (
        tenant_a.tenant.id, None, frozenset({"runs:read", "runs:write"}), str(run.id), "oauth_client",
        app_a.client_id)
    # and when the access token is revoked, its stream tokens stop too
    client.post("/oauth/revoke", **form(token=token), **basic(app_a))
    from tenants.errors import CredentialRevoked

    with pytest.raises(CredentialRevoked):
        tenant_services.stream_token_authenticate(raw=issued.json()["token"])


def test_the_hourly_sweep_deletes_expired_tokens_only(client, app_a):
    # given: one token past its expiry, one live
    from oauth2_provider.models import AccessToken

    from control_plane.oauth.tasks import oauth_tokens_clear_expired_task

    expired, live = token_of(client, app_a), token_of(client, app_a)
    rows = AccessToken.objects.filter(application__client_id=app_a.client_id)
    first = rows.order_by("id").first()
    rows.filter(pk=first.pk).update(expires=timezone.now() - timezone.timedelta(seconds=1))
    # when
    oauth_tokens_clear_expired_task()
    # then
    assert list(rows.values_list("pk", flat=True)) == [rows.order_by("id").last().pk]
    assert not rows.filter(pk=first.pk).exists()
    assert client.get("/v1/agents", **bearer(live)).status_code == 200
    assert expired != live
