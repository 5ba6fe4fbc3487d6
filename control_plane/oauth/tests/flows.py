"""The OAuth flows as a client runs them, over Django's test client (real views, real database)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from django.contrib.auth.models import User
from django.test import Client

from conftest import bearer
from control_plane.identity.models import Membership

REDIRECT_URI = "https://app.example.com/callback"


@dataclass(frozen=True)
class RegisteredApp:
    id: int
    client_id: str
    client_secret: str | None


def register(client: Client, key: str, *, scopes: list[str], grant_type: str = "client_credentials",
             client_type: str = "confidential", redirect_uris: list[str] | None = None,
             name: str = "app") -> RegisteredApp:
    if redirect_uris is None:
        redirect_uris = [REDIRECT_URI] if grant_type == "authorization_code" else []
    response = client.post("/v1/oauth/applications", {"name": name, "grant_type": grant_type,
                                                      "client_type": client_type, "scopes": scopes,
                                                      "redirect_uris": redirect_uris},
                           content_type="application/json", **bearer(key))
    assert response.status_code == 201, response.content
    body = response.json()
    return RegisteredApp(id=body["id"], client_id=body["client_id"], client_secret=body["client_secret"])


def basic(app: RegisteredApp) -> dict[str, str]:
    encoded = base64.b64encode(f"{app.client_id}:{app.client_secret}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {encoded}"}


def token_request(client: Client, app: RegisteredApp, **form: str):  # type: ignore[no-untyped-def]
    headers = basic(app) if app.client_secret else {}
    if not app.client_secret:
        form = {"client_id": app.client_id, **form}
    return client.post("/oauth/token", urlencode(form), content_type="application/x-www-form-urlencoded", **headers)


def client_credentials_token(client: Client, app: RegisteredApp, scope: str | None = None) -> dict:
    form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    response = token_request(client, app, **form)
    assert response.status_code == 200, response.content
    return response.json()


def member(tenant, role: str, email: str | None = None) -> User:  # type: ignore[no-untyped-def]
    email = email or f"{secrets.token_hex(4)}@example.com"
    user = User.objects.create_user(username=email, email=email)
    Membership.objects.create(user=user, tenant=tenant, role=role)
    return user


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_query(app: RegisteredApp, *, challenge: str | None, method: str = "S256", scope: str | None = None,
                    state: str = "xyz") -> str:
    params = {"response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT_URI, "state": state}
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method=method)
    if scope is not None:
        params["scope"] = scope
    return "/oauth/authorize?" + urlencode(params)


def consent(client: Client, app: RegisteredApp, *, challenge: str | None, method: str = "S256",
            scope: str | None = None):  # type: ignore[no-untyped-def]
    """GET the consent page, then POST its form with allow: the answer of the POST."""
    page = client.get(authorize_query(app, challenge=challenge, method=method, scope=scope))
    assert page.status_code == 200, page.content
    form = page.context["form"].initial
    posted = {name: value for name, value in form.items() if value is not None}
    posted["allow"] = "Authorize"
    return client.post("/oauth/authorize", posted)


def code_of(response) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == 302, response.content
    query = parse_qs(urlsplit(response["Location"]).query)
    assert "code" in query, response["Location"]
    return query["code"][0]


def authorization_code_tokens(client: Client, app: RegisteredApp, user: User, *, scope: str | None = None) -> dict:
    """The whole flow for a signed-in member: consent, then the code exchanged with its verifier."""
    client.force_login(user)
    verifier, challenge = pkce_pair()
    code = code_of(consent(client, app, challenge=challenge, scope=scope))
    client.logout()
    response = token_request(client, app, grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI,
                             code_verifier=verifier)
    assert response.status_code == 200, response.content
    return response.json()
