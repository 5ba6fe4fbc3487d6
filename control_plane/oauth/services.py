"""Writes of the OAuth server (tenants' client applications) and the authentication of its access tokens."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from datetime import datetime
from ipaddress import ip_address
from urllib.parse import urlsplit

from django.db import transaction
from django.utils import timezone
from oauth2_provider.generators import generate_client_secret
from oauth2_provider.models import AccessToken, clear_expired

from common.actors import Actor
from common.errors import AppError
from control_plane.audit.services import audit_event_record
from control_plane.identity import selectors as identity_selectors
from control_plane.oauth import selectors, tokens
from control_plane.oauth.errors import ApplicationInvalid
from control_plane.oauth.models import Application
from tenants import scopes as scope_registry
from tenants.errors import (
    CredentialExpired,
    CredentialRevoked,
    InvalidCredentials,
    ScopeEscalation,
    TenantSuspended,
    UnknownScope,
)

CLIENT_CREDENTIALS = "client_credentials"
AUTHORIZATION_CODE = "authorization_code"
GRANT_TYPES = {CLIENT_CREDENTIALS: Application.GRANT_CLIENT_CREDENTIALS,
               AUTHORIZATION_CODE: Application.GRANT_AUTHORIZATION_CODE}
if TYPE_CHECKING:
    from tenants.models import Tenant

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class IssuedApplication:
    """An application just created or given a new secret: the only moment its secret exists in clear."""

    application: Application
    client_secret: str | None  # None for a public client


@dataclass(frozen=True)
class OAuthGrant:
    """What a live access token allows now: its tenant, who acts, and the scopes it holds at this moment."""

    tenant: Tenant  # tenants.models.Tenant
    actor: Actor
    scopes: frozenset[str]
    access_token_id: int
    expires_at: datetime


# --- Applications ---------------------------------------------------------------------------------------

def _validate_redirect_uris(redirect_uris: list[str]) -> None:
    """https anywhere; http only to this machine (RFC 8252 native apps); never a fragment."""
    bad = []
    for uri in redirect_uris:
        parts = urlsplit(uri)
        host = (parts.hostname or "").lower()
        is_loopback = host in LOOPBACK_HOSTS or _is_loopback_ip(host)
        if parts.fragment or not host or not (parts.scheme == "https" or (parts.scheme == "http" and is_loopback)):
            bad.append(uri)
    if bad:
        raise ApplicationInvalid(
            f"Redirect URIs must be https (http only to localhost or 127.0.0.1) without a fragment: "
            f"{', '.join(bad)}.", extra={"errors": {"redirect_uris": [f"not allowed: {uri}" for uri in bad]}})


def _is_loopback_ip(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _validate_scopes(scopes: list[str], granting_scopes: frozenset[str]) -> None:
    unknown = scope_registry.unknown_scopes(scopes)
    if unknown:
        raise UnknownScope(f"Unknown scopes: {', '.join(unknown)}. Valid scopes: {', '.join(scope_registry.ALL_SCOPES)}.",
                           extra={"errors": {"scopes": [f"unknown scope {s!r}" for s in unknown]}})
    if not scopes:
        raise ApplicationInvalid("An application needs at least one scope.",
                                 extra={"errors": {"scopes": ["must not be empty"]}})
    beyond = sorted(set(scopes) - granting_scopes)
    if beyond:
        raise ScopeEscalation(f"You cannot give an application scopes you do not hold: {', '.join(beyond)}.")


def application_create(*, tenant: Tenant, name: str, grant_type: str, client_type: str, redirect_uris: list[str],
                       scopes: list[str], actor: Actor, granting_scopes: frozenset[str]) -> IssuedApplication:
    """Register a client of ``tenant`` with at most the creator's scopes. A confidential client gets a secret
    (returned here once, stored hashed). Raises UnknownScope, ScopeEscalation, ApplicationInvalid."""
    _validate_scopes(scopes, granting_scopes)
    if grant_type == CLIENT_CREDENTIALS and client_type != Application.CLIENT_CONFIDENTIAL:
        raise ApplicationInvalid("Client credentials are for confidential clients (servers that keep a secret); "
                                 "set client_type to confidential.", extra={"errors": {"client_type": ["must be "
                                                                                                        "confidential"]}})
    if grant_type == AUTHORIZATION_CODE and not redirect_uris:
        raise ApplicationInvalid("The authorization code flow needs at least one redirect URI.",
                                 extra={"errors": {"redirect_uris": ["required for authorization_code"]}})
    if grant_type == CLIENT_CREDENTIALS and redirect_uris:
        raise ApplicationInvalid("A client credentials application has no redirect URIs; remove them.",
                                 extra={"errors": {"redirect_uris": ["not used by client_credentials"]}})
    _validate_redirect_uris(redirect_uris)
    secret = generate_client_secret() if client_type == Application.CLIENT_CONFIDENTIAL else ""
    application = Application(
        tenant_id=tenant.pk, name=name, client_type=client_type, authorization_grant_type=GRANT_TYPES[grant_type],
        redirect_uris=" ".join(redirect_uris), scopes=sorted(set(scopes)), client_secret=secret,
        hash_client_secret=True, skip_authorization=False, created_by_kind=actor.kind, created_by_id=actor.id,
        user_id=int(actor.id) if actor.kind == "user" else None,
    )
    with transaction.atomic():
        application.save()
        audit_event_record(tenant=tenant, actor=actor, action="oauth_application.create",
                           target_type="oauth_application", target_id=str(application.id),
                           data={"name": name, "client_id": application.client_id, "grant_type": grant_type,
                                 "client_type": client_type, "redirect_uris": redirect_uris,
                                 "scopes": application.scopes})
    return IssuedApplication(application=application, client_secret=secret or None)


def application_secret_rotate(*, tenant: Tenant, application_id: int, actor: Actor) -> IssuedApplication:
    """Give a confidential client a new secret (the old one stops working at once; tokens already issued
    live on until they expire or are revoked). Raises ApplicationNotFound, ApplicationInvalid."""
    application = selectors.application_get(tenant_id=tenant.pk, application_id=application_id)
    if application.client_type != Application.CLIENT_CONFIDENTIAL:
        raise ApplicationInvalid(f"Application {application_id} is a public client; it has no secret to rotate.")
    secret = generate_client_secret()
    with transaction.atomic():
        application.client_secret = secret
        application.save(update_fields=["client_secret", "updated"])
        audit_event_record(tenant=tenant, actor=actor, action="oauth_application.rotate_secret",
                           target_type="oauth_application", target_id=str(application.id),
                           data={"client_id": application.client_id})
    return IssuedApplication(application=application, client_secret=secret)


def application_delete(*, tenant: Tenant, application_id: int, actor: Actor) -> None:
    """Delete a client with its grants and tokens: every token it holds stops working at once.
    Raises ApplicationNotFound."""
    application = selectors.application_get(tenant_id=tenant.pk, application_id=application_id)
    with transaction.atomic():
        application.delete()
        audit_event_record(tenant=tenant, actor=actor, action="oauth_application.delete",
                           target_type="oauth_application", target_id=str(application_id),
                           data={"name": application.name, "client_id": application.client_id})


# --- Access tokens on the API ----------------------------------------------------------------------------

def _checksum(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _grant_of(row: AccessToken, *, tenant_id: str, token_scopes: set[str]) -> OAuthGrant:
    application = row.application
    if application is None or str(application.tenant_id) != tenant_id:
        raise InvalidCredentials("The access token's application no longer exists.")
    tenant = application.tenant
    if tenant.status == "suspended":
        reason = f" ({tenant.status_reason})" if tenant.status_reason else ""
        raise TenantSuspended(f"Tenant {tenant.slug!r} is suspended{reason}; its keys and tokens are refused until "
                              "the platform operator reactivates it.")
    if tenant.status != "active":
        raise InvalidCredentials("The access token's tenant is not active.")
    scopes = token_scopes & set(row.scope.split()) & set(application.scopes)
    if row.user_id is None:
        actor = Actor(kind="oauth_client", id=application.client_id, label=application.name)
    else:
        user = row.user
        held = identity_selectors.member_scopes(user_id=row.user_id, tenant_id=tenant.pk) if user.is_active else None
        if held is None:
            raise CredentialRevoked(f"The user of this access token is no longer a member of tenant "
                                    f"{tenant.slug!r}; sign in again.")
        scopes &= held
        actor = Actor(kind="user", id=str(user.pk), label=user.email)
    return OAuthGrant(tenant=tenant, actor=actor, scopes=frozenset(scopes), access_token_id=row.pk,
                      expires_at=row.expires)


def _token_row(**lookup: object) -> AccessToken | None:
    return AccessToken.objects.select_related("application__tenant", "user").filter(**lookup).first()


def access_token_authenticate(*, raw: str) -> OAuthGrant:
    """What a presented access token (JWT) allows now. Checks the signature (by kid, against published keys),
    iss, aud and exp, then the token's row (gone: revoked), its application, its tenant (suspended: 403)
    and, for a user's token, the user's current role in the tenant, which bounds the scopes.
    Raises InvalidCredentials, CredentialExpired, CredentialRevoked (401), TenantSuspended (403)."""
    claims = tokens.access_token_decode(raw)
    row = _token_row(token_checksum=_checksum(raw))
    if row is None:
        raise CredentialRevoked("This access token was revoked; get a new one.")
    return _grant_of(row, tenant_id=claims["tid"], token_scopes=set(str(claims.get("scope", "")).split()))


def access_token_recheck(*, access_token_id: int, tenant_id: str) -> OAuthGrant:
    """The grant of an access token already authenticated once (a stream token names it): refused as soon as
    the token is revoked or expired, its application deleted, its tenant suspended or its user removed."""
    row = _token_row(pk=access_token_id)
    if row is None:
        raise CredentialRevoked("The access token behind this stream token was revoked.")
    if row.expires <= timezone.now():
        raise CredentialExpired("The access token behind this stream token expired.")
    return _grant_of(row, tenant_id=tenant_id, token_scopes=set(row.scope.split()))


def access_token_introspect(*, raw: str, application_id: int) -> dict[str, object]:
    """RFC 7662: what a token of this client allows now, or ``{"active": false}`` for anything else (another
    client's token, revoked, expired, its user removed, not ours)."""
    try:
        claims = tokens.access_token_decode(raw)
        row = _token_row(token_checksum=_checksum(raw), application_id=application_id)
        if row is None:
            return {"active": False}
        grant = _grant_of(row, tenant_id=claims["tid"], token_scopes=set(str(claims.get("scope", "")).split()))
    except AppError:
        return {"active": False}
    body: dict[str, object] = {
        "active": True, "scope": " ".join(sorted(grant.scopes)), "client_id": claims["client_id"],
        "sub": claims["sub"], "tid": claims["tid"], "token_type": "Bearer", "exp": claims["exp"],
        "iat": claims["iat"], "iss": claims["iss"], "aud": claims["aud"], "jti": claims["jti"]}
    if grant.actor.kind == "user":
        body["username"] = grant.actor.label
    return body


def oauth_tokens_clear_expired() -> None:
    """django-oauth-toolkit's sweep of expired grants and tokens (batched). Idempotent."""
    clear_expired()
