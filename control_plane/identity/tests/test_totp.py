"""Optional TOTP: setup, confirm, sign-in with a code (each good once), recovery codes, disable; and the HTML
sign-in page with its code step and ?next=."""

from __future__ import annotations

import json

import pyotp
from django.conf import settings
from django.test import Client
from django.utils import timezone

from control_plane.identity.models import RecoveryCode, TotpDevice
from control_plane.identity.tests.factories import PASSWORD, UserFactory


def _post(client: Client, path: str, body: dict | None = None):  # type: ignore[no-untyped-def, type-arg]
    return client.post(path, json.dumps(body or {}), content_type="application/json")


def _login(email: str, password: str = PASSWORD, **extra):  # type: ignore[no-untyped-def]
    return _post(Client(), "/v1/auth/login", {"email": email, "password": password, **extra})


def _code(secret: str, step_offset: int = 0) -> str:
    totp = pyotp.TOTP(secret)
    return totp.generate_otp(totp.timecode(timezone.now()) + step_offset)


def _enable_totp(user) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    setup = _post(client, "/v1/auth/totp/setup").json()
    confirmed = _post(client, "/v1/auth/totp/confirm", {"code": _code(setup["secret"])})
    assert confirmed.status_code == 200, confirmed.content
    return setup["secret"], confirmed.json()["recovery_codes"]


def test_setup_shows_the_secret_once_and_keeps_it_sealed(db):
    # given
    user = UserFactory()
    client = Client()
    client.force_login(user)
    # when
    response = _post(client, "/v1/auth/totp/setup")
    # then
    assert response.status_code == 200
    secret = response.json()["secret"]
    assert response.json()["otpauth_uri"].startswith("otpauth://totp/Agentplane:")
    assert f"secret={secret}" in response.json()["otpauth_uri"]
    device = TotpDevice.objects.get(user=user)
    assert secret not in device.sealed_secret and device.sealed_secret.startswith("v1:")
    assert device.confirmed_at is None
    assert _login(user.email).status_code == 200  # not enabled before it is confirmed


def test_a_wrong_code_does_not_enable_totp(db):
    user = UserFactory()
    client = Client()
    client.force_login(user)
    secret = _post(client, "/v1/auth/totp/setup").json()["secret"]
    wrong = str((int(_code(secret)) + 1) % 1_000_000).zfill(6)
    response = _post(client, "/v1/auth/totp/confirm", {"code": wrong})
    assert (response.status_code, response.json()["code"]) == (401, "invalid_totp_code")
    assert TotpDevice.objects.get(user=user).confirmed_at is None


def test_once_enabled_sign_in_needs_a_code_each_good_once(db):
    # given
    user = UserFactory()
    secret, recovery_codes = _enable_totp(user)
    assert len(recovery_codes) == 10 == len(set(recovery_codes))
    assert RecoveryCode.objects.filter(user=user).count() == 10
    assert not RecoveryCode.objects.filter(code_hash__in=recovery_codes).exists()  # only hashes kept
    # when / then: the password alone is not enough
    missing = _login(user.email)
    assert (missing.status_code, missing.json()["code"]) == (401, "totp_required")
    assert "sessionid" not in missing.cookies
    # the next step's code (clock drift of one step) works once
    code = _code(secret, step_offset=1)
    assert _login(user.email, totp_code=code).status_code == 200
    replayed = _login(user.email, totp_code=code)
    assert (replayed.status_code, replayed.json()["code"]) == (401, "invalid_totp_code")
    # a code two steps away is refused
    assert _login(user.email, totp_code=_code(secret, step_offset=3)).status_code == 401
    # a wrong password with a good code is the generic failure
    assert _login(user.email, "wrong password", totp_code=_code(secret)).json()["code"] == "invalid_login"


def test_a_recovery_code_signs_in_once(db):
    user = UserFactory()
    _, recovery_codes = _enable_totp(user)
    code = recovery_codes[0]
    assert _login(user.email, totp_code=code.lower()).status_code == 200  # case and dashes do not matter
    assert _login(user.email, totp_code=code).status_code == 401
    assert RecoveryCode.objects.filter(user=user, used_at__isnull=False).count() == 1


def test_disable_needs_a_code_and_removes_the_device(db):
    user = UserFactory()
    secret, _ = _enable_totp(user)
    client = Client()
    client.force_login(user)
    assert _post(client, "/v1/auth/totp/disable", {"code": "000000" if _code(secret) != "000000" else "111111"}) \
        .status_code == 401
    assert _post(client, "/v1/auth/totp/setup").status_code == 409  # already enabled
    assert _post(client, "/v1/auth/totp/disable", {"code": _code(secret, step_offset=1)}).status_code == 204
    assert not TotpDevice.objects.filter(user=user).exists() and not RecoveryCode.objects.filter(user=user).exists()
    assert _login(user.email).status_code == 200


def test_the_totp_secret_does_not_open_for_another_user(db):
    from common.crypto import SecretBox, SecretUnreadable

    first, second = UserFactory(), UserFactory()
    _enable_totp(first)
    sealed = TotpDevice.objects.get(user=first).sealed_secret
    try:
        SecretBox(settings.SECRETS_KEY).open(sealed, bound_to=f"identity.totp:{second.pk}")
    except SecretUnreadable:
        pass
    else:
        raise AssertionError("a TOTP secret opened for another user")


# --- the HTML sign-in page -----------------------------------------------------------------------

def test_the_sign_in_page_asks_for_the_code_then_follows_next(db):
    # given
    user = UserFactory()
    secret, _ = _enable_totp(user)
    client = Client(enforce_csrf_checks=True)
    page = client.get(f"{settings.LOGIN_URL}?next=/v1/auth/me")
    assert page.status_code == 200 and b'name="password"' in page.content
    csrf = page.cookies["csrftoken"].value
    # when: password step, then code step
    step_two = client.post(settings.LOGIN_URL, {"email": user.email, "password": PASSWORD, "step": "password",
                                                "next": "/v1/auth/me", "csrfmiddlewaretoken": csrf})
    assert step_two.status_code == 200 and b'name="code"' in step_two.content
    assert client.get("/v1/auth/me").status_code == 401  # not signed in between the steps
    done = client.post(settings.LOGIN_URL, {"code": _code(secret, step_offset=1), "step": "totp", "next": "/v1/auth/me",
                                            "csrfmiddlewaretoken": csrf})
    # then
    assert done.status_code == 302 and done["Location"] == "/v1/auth/me"
    assert client.get("/v1/auth/me").json()["email"] == user.email


def test_the_sign_in_page_refuses_an_offsite_next_and_a_missing_csrf_token(db):
    user = UserFactory()
    client = Client(enforce_csrf_checks=True)
    csrf = client.get(settings.LOGIN_URL).cookies["csrftoken"].value
    no_token = client.post(settings.LOGIN_URL, {"email": user.email, "password": PASSWORD})
    assert no_token.status_code == 403
    done = client.post(f"{settings.LOGIN_URL}?next=https://evil.example.com/",
                       {"email": user.email, "password": PASSWORD, "csrfmiddlewaretoken": csrf})
    assert done.status_code == 302 and done["Location"] == settings.LOGIN_REDIRECT_URL
    wrong = Client().post(settings.LOGIN_URL, {"email": user.email, "password": "nope"})
    assert wrong.status_code == 401 and b"incorrect" in wrong.content
    signed_in = client.get(settings.LOGIN_REDIRECT_URL)
    assert signed_in.status_code == 200 and user.email.encode() in signed_in.content
    assert client.post("/accounts/logout/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}) \
        .status_code == 302
    assert client.get("/v1/auth/me").status_code == 401
