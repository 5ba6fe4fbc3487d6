"""Signing in and out, the signed-in user, changing the password; failures generic and rate-limited."""

from __future__ import annotations

import json
import logging

import pytest
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django_tenants.utils import schema_context

from control_plane.audit.models import AuditEvent
from control_plane.identity.tests.factories import PASSWORD, MembershipFactory, UserFactory
from control_plane.identity.throttling import login_limiter
from control_plane.settings import base as production_settings
from tenants import roles

NEW_PASSWORD = "a much longer new passphrase 9"


def _login(client: Client, email: str, password: str, **extra):  # type: ignore[no-untyped-def]
    return client.post("/v1/auth/login", json.dumps({"email": email, "password": password, **extra}),
                       content_type="application/json")


def test_production_settings_hash_passwords_with_argon2id():
    # given the base settings' hashers (the test settings use a fast one)
    with override_settings(PASSWORD_HASHERS=production_settings.PASSWORD_HASHERS):
        # when
        encoded = make_password("s3cret passphrase!")
    # then
    assert encoded.startswith("argon2$argon2id$")
    assert production_settings.AUTH_PASSWORD_VALIDATORS  # validators are on


def test_sign_in_sets_an_http_only_lax_session_and_me_lists_memberships(client, tenant_a):
    # given
    membership = MembershipFactory(tenant=tenant_a.tenant, role=roles.DEVELOPER)
    # when
    response = _login(client, membership.user.email.upper(), PASSWORD)  # emails are case-insensitive
    # then
    assert response.status_code == 200, response.content
    cookie = response.cookies["sessionid"]
    assert cookie["httponly"] is True and cookie["samesite"] == "Lax" and not cookie["secure"]
    me = client.get("/v1/auth/me").json()
    assert me["email"] == membership.user.email and me["totp_enabled"] is False and me["csrf_token"]
    assert me["memberships"] == [{
        "tenant": {"id": str(tenant_a.tenant.id), "slug": tenant_a.tenant.slug, "name": tenant_a.tenant.name,
                   "status": "active"},
        "role": "developer", "scopes": sorted(roles.scopes_for_role(roles.DEVELOPER))}]


@override_settings(SESSION_COOKIE_SECURE=True)
def test_the_session_cookie_is_secure_when_the_setting_says_so(client, db):
    user = UserFactory()
    response = _login(client, user.email, PASSWORD)
    assert response.status_code == 200 and response.cookies["sessionid"]["secure"] is True


def test_wrong_password_and_unknown_email_get_the_same_answer(client, db):
    # given
    user = UserFactory()
    # when
    wrong_password = _login(client, user.email, "not the password")
    unknown_email = _login(client, "nobody-here@example.com", PASSWORD)
    # then
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json() == unknown_email.json()
    assert wrong_password.json()["code"] == "invalid_login"
    assert "sessionid" not in wrong_password.cookies
    assert client.get("/v1/auth/me").status_code == 401


def test_an_inactive_user_cannot_sign_in(client, db):
    user = UserFactory(is_active=False)
    response = _login(client, user.email, PASSWORD)
    assert (response.status_code, response.json()["code"]) == (401, "invalid_login")


def test_failed_sign_ins_are_limited_per_email_with_retry_after(client, db, settings):
    # given five failures for one email (the default limit)
    user = UserFactory()
    for _ in range(settings.LOGIN_MAX_FAILURES_PER_EMAIL):
        assert _login(client, user.email, "wrong").status_code == 401
    # when even the right password is tried
    response = _login(client, user.email, PASSWORD)
    # then
    assert response.status_code == 429
    assert response.json()["code"] == "rate_limited"
    assert 0 < int(response["Retry-After"]) <= settings.LOGIN_FAILURE_WINDOW_SECONDS
    assert "sessionid" not in response.cookies
    # another email from the same address is not blocked by this email's count
    other = UserFactory()
    assert _login(client, other.email, PASSWORD).status_code == 200


def test_failed_sign_ins_are_limited_per_address(db, settings):
    # given a lower limit per address, failures for different emails from one address
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 3
    login_limiter.cache_clear()
    client = Client(REMOTE_ADDR="198.51.100.7")
    for index in range(3):
        assert _login(client, f"guess-{index}@example.com", "wrong").status_code == 401
    user = UserFactory()
    # when
    blocked = _login(client, user.email, PASSWORD)
    elsewhere = _login(Client(REMOTE_ADDR="198.51.100.8"), user.email, PASSWORD)
    # then
    assert blocked.status_code == 429 and int(blocked["Retry-After"]) > 0
    assert elsewhere.status_code == 200


def test_a_successful_sign_in_clears_the_emails_failures(client, db, settings):
    user = UserFactory()
    for _ in range(settings.LOGIN_MAX_FAILURES_PER_EMAIL - 1):
        _login(client, user.email, "wrong")
    assert _login(client, user.email, PASSWORD).status_code == 200
    for _ in range(settings.LOGIN_MAX_FAILURES_PER_EMAIL - 1):
        assert _login(client, user.email, "wrong").status_code == 401  # counting starts again


def test_logout_ends_the_session(client, db):
    user = UserFactory()
    _login(client, user.email, PASSWORD)
    assert client.post("/v1/auth/logout").status_code == 204
    assert client.get("/v1/auth/me").status_code == 401


def test_logout_and_password_change_need_the_csrf_token(db):
    # given a browser-like client that enforces CSRF
    user = UserFactory()
    client = Client(enforce_csrf_checks=True)
    token = _login(client, user.email, PASSWORD).json()["csrf_token"]
    # when / then
    refused = client.post("/v1/auth/logout", "{}", content_type="application/json")
    assert (refused.status_code, refused.json()["code"]) == (403, "permission_denied")
    assert "CSRF" in refused.json()["detail"]
    assert client.get("/v1/auth/me").status_code == 200
    assert client.post("/v1/auth/logout", "{}", content_type="application/json",
                       HTTP_X_CSRFTOKEN=token).status_code == 204


def test_password_change_signs_out_other_sessions_and_keeps_this_one(tenant_a, caplog):
    # given one user signed in twice
    caplog.set_level(logging.DEBUG)
    membership = MembershipFactory(tenant=tenant_a.tenant, role=roles.VIEWER)
    here, elsewhere = Client(), Client()
    _login(here, membership.user.email, PASSWORD)
    _login(elsewhere, membership.user.email, PASSWORD)
    # when
    response = here.post("/v1/auth/password", json.dumps({"current_password": PASSWORD,
                                                          "new_password": NEW_PASSWORD}),
                         content_type="application/json")
    # then
    assert response.status_code == 204, response.content
    assert here.get("/v1/auth/me").status_code == 200
    assert elsewhere.get("/v1/auth/me").status_code == 401
    assert _login(Client(), membership.user.email, PASSWORD).status_code == 401
    assert _login(Client(), membership.user.email, NEW_PASSWORD).status_code == 200
    # and the change is audited in the user's tenant, with no password anywhere
    with schema_context(tenant_a.schema):
        event = AuditEvent.objects.get(action="user.password_change", actor_id=str(membership.user.pk))
    assert event.actor_kind == "user" and event.data == {}
    assert PASSWORD not in caplog.text and NEW_PASSWORD not in caplog.text


def test_password_change_refuses_a_wrong_current_password_and_a_weak_new_one(client, db):
    user = UserFactory()
    _login(client, user.email, PASSWORD)
    wrong = client.post("/v1/auth/password", json.dumps({"current_password": "nope", "new_password": NEW_PASSWORD}),
                        content_type="application/json")
    weak = client.post("/v1/auth/password", json.dumps({"current_password": PASSWORD, "new_password": "12345678"}),
                       content_type="application/json")
    assert (wrong.status_code, wrong.json()["code"]) == (403, "wrong_password")
    assert (weak.status_code, weak.json()["code"]) == (400, "invalid")
    assert weak.json()["errors"]["password"]
    assert User.objects.get(pk=user.pk).check_password(PASSWORD)


@pytest.mark.parametrize("path", ["/v1/auth/me", "/v1/auth/totp/setup"])
def test_auth_endpoints_need_a_session(client, db, path):
    response = client.get(path) if path.endswith("me") else client.post(path)
    assert (response.status_code, response.json()["code"]) == (401, "not_signed_in")
