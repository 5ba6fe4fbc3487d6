"""Access tokens as signed JWTs (RFC 9068 profile): ES256, the signing key's kid in the header.

Claims: iss, aud, sub (the user's id, or the client id for client credentials), tid (the tenant), scope,
client_id, jti, iat, exp. django-oauth-toolkit calls ``access_token_generate`` for every access token it
issues (its ACCESS_TOKEN_GENERATOR) and stores only the token's SHA-256 (RFC 9700 token storage), which is
how revocation is checked: a token whose row is gone is refused.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt
from django.conf import settings

from control_plane.oauth import signing
from tenants.errors import CredentialExpired, InvalidCredentials

TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ["iss", "aud", "sub", "tid", "client_id", "jti", "iat", "exp"]


def access_token_generate(request: Any, refresh_token: bool = False) -> str:
    """A signed access token for the grant oauthlib is completing (``request.client`` is our Application)."""
    client = request.client
    user = None if request.grant_type == "client_credentials" else request.user
    now = int(time.time())
    claims = {
        "iss": settings.OAUTH_ISSUER, "aud": settings.OAUTH_AUDIENCE,
        "sub": str(user.pk) if user is not None else client.client_id,
        "tid": str(client.tenant_id), "client_id": client.client_id,
        "scope": " ".join(request.scopes or []), "jti": secrets.token_hex(16),
        "iat": now, "exp": now + settings.OAUTH_ACCESS_TOKEN_TTL_SECONDS,
    }
    key = signing.signing_key_current()
    return jwt.encode(claims, signing.private_key_of(key), algorithm=signing.ALGORITHM,
                      headers={"kid": key.kid, "typ": TOKEN_TYPE})


def is_access_token(raw: str) -> bool:
    """Whether ``raw`` is shaped like one of our access tokens (a JWT typed at+jwt); says nothing of validity."""
    if raw.count(".") != 2:
        return False
    try:
        return jwt.get_unverified_header(raw).get("typ") == TOKEN_TYPE
    except jwt.PyJWTError:
        return False


def access_token_decode(raw: str) -> dict[str, Any]:
    """The verified claims of one of our access tokens: signature by a published kid, iss, aud, exp and iat
    (with the configured leeway). Raises InvalidCredentials, CredentialExpired."""
    invalid = InvalidCredentials("The bearer token is neither an API key nor a valid OAuth access token.")
    try:
        header = jwt.get_unverified_header(raw)
    except jwt.PyJWTError:
        raise invalid from None
    kid = header.get("kid")
    if header.get("alg") != signing.ALGORITHM or header.get("typ") != TOKEN_TYPE or not isinstance(kid, str):
        raise invalid
    public_key = signing.public_key_published(kid)
    if public_key is None:
        raise InvalidCredentials(f"The access token was signed with key {kid!r}, which is retired or unknown; "
                                 "get a new token.")
    try:
        return jwt.decode(raw, public_key, algorithms=[signing.ALGORITHM], audience=settings.OAUTH_AUDIENCE,
                          issuer=settings.OAUTH_ISSUER, leeway=settings.OAUTH_LEEWAY_SECONDS,
                          options={"require": REQUIRED_CLAIMS})
    except jwt.ExpiredSignatureError:
        raise CredentialExpired("This access token expired; get a new one from the token endpoint (or use your "
                                "refresh token).") from None
    except jwt.PyJWTError:
        raise invalid from None
