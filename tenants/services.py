"""Writes to the tenant registry: provisioning, lifecycle, credentials."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_exists

from common.actors import Actor
from common.errors import InvalidInput
from common.keys import KeyHasher, parse_key
from control_plane.audit.services import audit_chain_anchor_forget, audit_event_record
from control_plane.identity import services as identity_services
from control_plane.encryption import services as encryption_services
from tenants import db_roles, roles
from tenants import scopes as scope_registry
from tenants.errors import (
    ApiKeyAlreadyRevoked,
    CredentialExpired,
    CredentialRevoked,
    DomainTaken,
    InvalidCredentials,
    ProvisioningFailed,
    ScopeEscalation,
    TenantStatusConflict,
    TenantSlugTaken,
    TenantSuspended,
    UnknownScope,
)
from tenants.models import ApiKey, Domain, OperatorKey, Tenant, TenantLifecycleEvent
from tenants.selectors import api_key_get

logger = logging.getLogger(__name__)

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,46}[a-z0-9]$")
RESERVED_SLUGS = frozenset({"public", "platform", "admin", "api", "www", "static", "information-schema"})
HOSTNAME_PATTERN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
# Touch last_used_at at most this often per key, so authentication is not a write per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def _hasher() -> KeyHasher:
    return KeyHasher(settings.API_KEY_PEPPER.encode())


@dataclass(frozen=True)
class IssuedKey:
    """A key just created: the only moment its plaintext exists."""

    key: ApiKey | OperatorKey
    plaintext: str


@dataclass(frozen=True)
class ProvisionedTenant:
    tenant: Tenant
    admin_key: IssuedKey
    owner_invitation: identity_services.IssuedInvitation | None = None


def schema_name_for(slug: str) -> str:
    return "t_" + slug.replace("-", "_")


def _validate_slug(slug: str) -> None:
    if not SLUG_PATTERN.match(slug):
        raise InvalidInput(
            f"Slug {slug!r} is invalid: use 3-48 lowercase letters, digits and hyphens, starting with a letter.",
            extra={"errors": {"slug": ["3-48 characters: a-z, 0-9 and '-', starting with a letter."]}},
        )
    if slug in RESERVED_SLUGS:
        raise InvalidInput(f"Slug {slug!r} is reserved; choose another.", extra={"errors": {"slug": ["reserved"]}})


def _validate_domains(domains: list[str]) -> list[str]:
    cleaned = [d.strip().lower() for d in domains]
    bad = [d for d in cleaned if not HOSTNAME_PATTERN.match(d)]
    if bad:
        raise InvalidInput(f"Not valid hostnames: {', '.join(bad)}.", extra={"errors": {"domains": bad}})
    taken = list(Domain.objects.filter(domain__in=cleaned).values_list("domain", flat=True))
    if taken:
        raise DomainTaken(f"Domains already in use by another tenant: {', '.join(taken)}.")
    return cleaned


def _record_lifecycle(*, tenant: Tenant, action: str, from_status: str, reason: str, actor: Actor) -> None:
    TenantLifecycleEvent.objects.create(
        tenant=tenant, action=action, from_status=from_status, to_status=tenant.status, reason=reason,
        actor=str(actor),
    )


def tenant_provision(
    *, name: str, slug: str, sla_tier: str, domains: list[str], actor: Actor, owner_email: str | None = None
) -> ProvisionedTenant:
    """Create the tenant, its schema (migrated, as the owner), its database role and an admin API key with
    every scope; with ``owner_email``, also email its first owner an invitation to the portal.

    Raises InvalidInput, TenantSlugTaken, DomainTaken, ProvisioningFailed. Not idempotent: a second call
    with the same slug raises TenantSlugTaken. On failure nothing is left behind.
    """
    _validate_slug(slug)
    if sla_tier not in Tenant.SlaTier.values:
        raise InvalidInput(f"sla_tier {sla_tier!r} is not one of {', '.join(Tenant.SlaTier.values)}.")
    if Tenant.objects.filter(slug=slug).exists():
        raise TenantSlugTaken(f"A tenant with slug {slug!r} already exists (slugs are never reused).")
    cleaned_domains = _validate_domains(domains)
    schema_name = schema_name_for(slug)
    if schema_exists(schema_name):
        raise TenantSlugTaken(f"Schema {schema_name!r} already exists; choose another slug.")

    connection.set_schema_to_public()
    try:
        with transaction.atomic():
            tenant = Tenant.objects.create(name=name, slug=slug, sla_tier=sla_tier, schema_name=schema_name)
            for index, domain in enumerate(cleaned_domains):
                Domain.objects.create(tenant=tenant, domain=domain, is_primary=index == 0)
            _record_lifecycle(tenant=tenant, action="provision", from_status="", reason="", actor=actor)
    except IntegrityError:
        raise TenantSlugTaken(f"A tenant with slug {slug!r} or one of its domains already exists.") from None

    try:
        with db_roles.owner_context():
            tenant.create_schema(check_if_exists=False, verbosity=0)
        if db_roles.roles_enabled():
            db_roles.tenant_role_grant(tenant_schema=schema_name)
    except Exception as exc:
        logger.exception("Provisioning tenant %s failed; rolling back", slug)
        tenant_purge(tenant=tenant)
        raise ProvisioningFailed(
            f"Creating the schema of tenant {slug!r} failed ({type(exc).__name__}); nothing was kept. Retry, "
            "and if it fails again report the time of the request."
        ) from exc

    audit_event_record(tenant=tenant, actor=actor, action="tenant.provision", target_type="tenant",
                       target_id=str(tenant.id), data={"slug": slug, "sla_tier": sla_tier})
    encryption_services.tenant_keyring_ensure(tenant=tenant)  # its data key; payloads encrypted per its tier
    admin_key = api_key_create(
        tenant=tenant, name="admin (created at provisioning)", scopes=list(scope_registry.ALL_SCOPES),
        expires_at=None, actor=actor, granting_scopes=None,
    )
    owner_invitation = None
    if owner_email:
        owner_invitation = identity_services.invitation_create(tenant=tenant, email=owner_email, role=roles.OWNER,
                                                               actor=actor, granter_role=None)
    return ProvisionedTenant(tenant=tenant, admin_key=admin_key, owner_invitation=owner_invitation)


def tenant_purge(*, tenant: Tenant) -> None:
    """Remove every trace of a tenant: its schema and all its public rows, tombstone included.

    For a half-provisioned tenant, and for throw-away tenants (tests, benchmarks); a tenant that existed
    for real is deleted with tenant_delete, which keeps its tombstone and lifecycle history.
    """
    connection.set_schema_to_public()
    _schema_drop(tenant.schema_name)
    audit_chain_anchor_forget(tenant_schema=tenant.schema_name)
    TenantLifecycleEvent.objects.filter(tenant=tenant).delete()
    Domain.objects.filter(tenant=tenant).delete()
    ApiKey.objects.filter(tenant=tenant).delete()
    Tenant.objects.filter(pk=tenant.pk).delete()


def _change_status(*, tenant: Tenant, to_status: str, allowed_from: set[str], action: str, reason: str,
                   actor: Actor) -> Tenant:
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.status not in allowed_from:
            raise TenantStatusConflict(
                f"Tenant {locked.slug!r} is {locked.status}; {action} needs it to be "
                f"{' or '.join(sorted(allowed_from))}."
            )
        from_status = locked.status
        locked.status = to_status
        locked.status_reason = reason
        locked.save(update_fields=["status", "status_reason", "updated_at"])
        _record_lifecycle(tenant=locked, action=action, from_status=from_status, reason=reason, actor=actor)
    return locked


def tenant_suspend(*, tenant: Tenant, reason: str, actor: Actor) -> Tenant:
    """Suspend an active tenant: its keys get 403 and its queued tasks are refused. Raises TenantStatusConflict."""
    suspended = _change_status(tenant=tenant, to_status=Tenant.Status.SUSPENDED, allowed_from={Tenant.Status.ACTIVE},
                               action="suspend", reason=reason, actor=actor)
    audit_event_record(tenant=suspended, actor=actor, action="tenant.suspend", target_type="tenant",
                       target_id=str(tenant.id), data={"reason": reason})
    return suspended


def tenant_reactivate(*, tenant: Tenant, actor: Actor) -> Tenant:
    """Reactivate a suspended tenant. Raises TenantStatusConflict."""
    active = _change_status(tenant=tenant, to_status=Tenant.Status.ACTIVE, allowed_from={Tenant.Status.SUSPENDED},
                            action="reactivate", reason="", actor=actor)
    audit_event_record(tenant=active, actor=actor, action="tenant.reactivate", target_type="tenant",
                       target_id=str(tenant.id))
    return active


def tenant_tier_change(*, tenant: Tenant, sla_tier: str, actor: Actor) -> Tenant:
    """Move a tenant to another SLA tier: its quotas, rate limits and run queue change with the next request
    (billing/plans.py; docs/quotas.md). Audit-logged; a change to the same tier changes and records nothing.
    Raises InvalidInput for an unknown tier, TenantStatusConflict for a deleted tenant."""
    if sla_tier not in Tenant.SlaTier.values:
        raise InvalidInput(f"sla_tier {sla_tier!r} is not one of {', '.join(Tenant.SlaTier.values)}.",
                           extra={"errors": {"sla_tier": [f"Choose one of {', '.join(Tenant.SlaTier.values)}."]}})
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.status == Tenant.Status.DELETED:
            raise TenantStatusConflict(f"Tenant {locked.slug!r} is deleted; its tier cannot change.")
        from_tier = locked.sla_tier
        if from_tier == sla_tier:
            return locked
        locked.sla_tier = sla_tier
        locked.save(update_fields=["sla_tier", "updated_at"])
        audit_event_record(tenant=locked, actor=actor, action="tenant.tier_change", target_type="tenant",
                           target_id=str(locked.id), data={"from": from_tier, "to": sla_tier})
    return locked


def tenant_delete(*, tenant: Tenant, actor: Actor) -> Tenant:
    """Delete a tenant: drop its schema (all its data) and database role, revoke its keys, keep a tombstone row.

    Irreversible. Raises TenantStatusConflict when already deleted. The slug is never reused.
    """
    deleted = _change_status(
        tenant=tenant, to_status=Tenant.Status.DELETED,
        allowed_from={Tenant.Status.ACTIVE, Tenant.Status.SUSPENDED}, action="delete", reason="", actor=actor,
    )
    now = timezone.now()
    with transaction.atomic():
        ApiKey.objects.filter(tenant=deleted, revoked_at__isnull=True).update(revoked_at=now)
        Domain.objects.filter(tenant=deleted).delete()
        connection.set_schema_to_public()
        _schema_drop(deleted.schema_name)
    return deleted


def _schema_drop(schema_name: str) -> None:
    """Drop a tenant's schema with all its data, and its database role (as the owner)."""
    with db_roles.owner_context(), connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE')
    if db_roles.roles_enabled():
        db_roles.tenant_role_drop(tenant_schema=schema_name)


# --- API keys ------------------------------------------------------------------------------------

def api_key_create(
    *, tenant: Tenant, name: str, scopes: list[str], expires_at: datetime | None, actor: Actor,
    granting_scopes: list[str] | None,
) -> IssuedKey:
    """Issue a key for ``tenant``. ``granting_scopes`` are the creating key's (None: the platform itself).

    Raises UnknownScope, ScopeEscalation (asking for a scope the creator lacks), InvalidInput.
    """
    if tenant.status != Tenant.Status.ACTIVE:
        raise TenantStatusConflict(f"Tenant {tenant.slug!r} is {tenant.status}; keys can only be issued to an "
                                   "active tenant.")
    unknown = scope_registry.unknown_scopes(scopes)
    if unknown:
        raise UnknownScope(
            f"Unknown scopes: {', '.join(unknown)}. Valid scopes: {', '.join(scope_registry.ALL_SCOPES)}.",
            extra={"errors": {"scopes": [f"unknown scope {s!r}" for s in unknown]}},
        )
    if not scopes:
        raise InvalidInput("A key needs at least one scope.", extra={"errors": {"scopes": ["must not be empty"]}})
    if granting_scopes is not None:
        beyond = sorted(set(scopes) - set(granting_scopes))
        if beyond:
            raise ScopeEscalation(f"This key cannot grant scopes it does not hold: {', '.join(beyond)}.")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("expires_at is in the past; give a future time or omit it.",
                           extra={"errors": {"expires_at": ["must be in the future"]}})
    generated = _hasher().generate(ApiKey.PREFIX)
    created_by = actor.id if actor.kind == "api_key" else None
    key = ApiKey.objects.create(
        tenant=tenant, name=name, scopes=sorted(set(scopes)), expires_at=expires_at,
        lookup_id=generated.lookup_id, secret_hash=generated.secret_hash, created_by_key_id=created_by,
    )
    audit_event_record(tenant=tenant, actor=actor, action="api_key.create", target_type="api_key",
                       target_id=str(key.id), data={"name": name, "scopes": key.scopes,
                                                    "expires_at": expires_at.isoformat() if expires_at else None})
    return IssuedKey(key=key, plaintext=generated.plaintext)


def api_key_revoke(*, tenant: Tenant, key_id, actor: Actor) -> ApiKey:
    """Revoke one of the tenant's keys; it stops working at once. Raises ApiKeyNotFound, ApiKeyAlreadyRevoked."""
    key = api_key_get(tenant=tenant, key_id=key_id)
    updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if not updated:
        raise ApiKeyAlreadyRevoked(f"API key {key_id} was already revoked.")
    key.refresh_from_db()
    audit_event_record(tenant=tenant, actor=actor, action="api_key.revoke", target_type="api_key",
                       target_id=str(key.id), data={"name": key.name})
    return key


def _authenticate(model: type[ApiKey] | type[OperatorKey], raw: str) -> ApiKey | OperatorKey:
    parsed = parse_key(raw)
    hasher = _hasher()
    if parsed is None or parsed.prefix != model.PREFIX:
        raise InvalidCredentials(f"The bearer token is not a valid {model._meta.verbose_name}.")
    queryset = model.objects.select_related("tenant") if model is ApiKey else model.objects
    key = queryset.filter(lookup_id=parsed.lookup_id).first()
    if key is None:
        hasher.verify(parsed.secret, "0" * 64)  # same work as a real check, so timing reveals nothing
        raise InvalidCredentials(f"The bearer token is not a valid {model._meta.verbose_name}.")
    if not hasher.verify(parsed.secret, key.secret_hash):
        raise InvalidCredentials(f"The bearer token is not a valid {model._meta.verbose_name}.")
    now = timezone.now()
    if key.revoked_at is not None:
        raise CredentialRevoked(f"This key ({key.lookup_id}) was revoked; create a new key.")
    if key.expires_at is not None and key.expires_at <= now:
        raise CredentialExpired(f"This key ({key.lookup_id}) expired at {key.expires_at.isoformat()}; "
                                "create a new key.")
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        model.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def api_key_authenticate(*, raw: str) -> ApiKey:
    """The live key behind a presented bearer token, with its tenant.

    Raises InvalidCredentials, CredentialRevoked, CredentialExpired (401) and TenantSuspended (403).
    Verification is constant-time. Updates last_used_at at most once a minute.
    """
    key = _authenticate(ApiKey, raw)
    assert isinstance(key, ApiKey)
    if key.tenant.status == Tenant.Status.SUSPENDED:
        reason = f" ({key.tenant.status_reason})" if key.tenant.status_reason else ""
        raise TenantSuspended(f"Tenant {key.tenant.slug!r} is suspended{reason}; its keys are refused until "
                              "the platform operator reactivates it.")
    if key.tenant.status != Tenant.Status.ACTIVE:
        raise InvalidCredentials("The bearer token is not a valid api key.")
    return key


def operator_key_create(*, name: str, replace_existing: bool = False) -> IssuedKey:
    """Issue a platform operator key (management command only; there is no API to mint one).

    With ``replace_existing`` the live operator keys of the same name are revoked in the same transaction.
    """
    generated = _hasher().generate(OperatorKey.PREFIX)
    with transaction.atomic():
        if replace_existing:
            OperatorKey.objects.filter(name=name, revoked_at__isnull=True).update(revoked_at=timezone.now())
        key = OperatorKey.objects.create(name=name, lookup_id=generated.lookup_id,
                                         secret_hash=generated.secret_hash)
    return IssuedKey(key=key, plaintext=generated.plaintext)


def operator_key_authenticate(*, raw: str) -> OperatorKey:
    """The live operator key behind a bearer token. Raises InvalidCredentials, CredentialRevoked, CredentialExpired."""
    key = _authenticate(OperatorKey, raw)
    assert isinstance(key, OperatorKey)
    return key


# --- Stream tokens: short-lived JWTs for clients that cannot send a header (browsers' WebSocket, EventSource)

STREAM_TOKEN_AUDIENCE = "agentplane:stream"
STREAM_TOKEN_ISSUER = "agentplane"
STREAM_SCOPES = ("runs:read", "runs:write", "approvals:write")
STREAM_CREDENTIAL_KINDS = ("api_key", "oauth_token")


@dataclass(frozen=True)
class IssuedStreamToken:
    token: str
    expires_at: datetime
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class StreamGrant:
    """Who may stream what: a live credential of an active tenant, the scopes granted, and the run (None: any)."""

    tenant: Tenant
    key_id: str | None  # the API key's id; None when the credential is an OAuth access token
    scopes: frozenset[str]
    run_id: str | None
    actor: Actor


def _stream_secret() -> bytes:
    # A key of its own, derived from the server secret: a stream token can never pass as anything else.
    return hmac.new(settings.SECRET_KEY.encode(), b"agentplane stream tokens v1", hashlib.sha256).digest()


def stream_token_issue(*, tenant: Tenant, credential: str, held_scopes: frozenset[str], run_id: str | None,
                       actor: Actor, scopes: list[str] | None = None, ttl_seconds: int = 300) -> IssuedStreamToken:
    """A signed token (JWT, HS256) that lets a client stream one run (or every run with ``run_id`` None) with
    at most the streaming scopes the caller holds (``held_scopes``), for ``ttl_seconds``. ``credential`` is the
    caller's ("api_key:<id>" or "oauth_token:<id>"): every use of the token re-checks it. Recorded in the
    tenant's audit log (called in the tenant's schema). Raises ScopeEscalation, UnknownScope."""
    kind, _, subject = credential.partition(":")
    if kind not in STREAM_CREDENTIAL_KINDS or not subject:
        raise InvalidCredentials("Stream tokens are issued to API keys and OAuth access tokens only.")
    granted = [scope for scope in STREAM_SCOPES if scope in held_scopes]
    if scopes is not None:
        unknown = [scope for scope in scopes if scope not in STREAM_SCOPES]
        if unknown:
            raise UnknownScope(f"Not a streaming scope: {', '.join(unknown)}; choose from {', '.join(STREAM_SCOPES)}.")
        missing = [scope for scope in scopes if scope not in granted]
        if missing:
            raise ScopeEscalation(f"You lack {', '.join(missing)}; a token cannot grant more than its credential.")
        granted = [scope for scope in STREAM_SCOPES if scope in scopes]
    now = timezone.now()
    expires_at = now + timedelta(seconds=ttl_seconds)
    claims = {"iss": STREAM_TOKEN_ISSUER, "aud": STREAM_TOKEN_AUDIENCE, "sub": subject, "knd": kind,
              "tid": str(tenant.id), "scp": granted, "run": run_id, "iat": int(now.timestamp()),
              "exp": int(expires_at.timestamp()), "jti": secrets.token_hex(8)}
    token = jwt.encode(claims, _stream_secret(), algorithm="HS256")
    audit_event_record(tenant=tenant, actor=actor, action="stream_token.issue", target_type="run",
                       target_id=run_id or "", data={"token_id": claims["jti"], "scopes": granted,
                                                     "ttl_seconds": ttl_seconds})
    return IssuedStreamToken(token=token, expires_at=expires_at, scopes=tuple(granted))


def stream_token_authenticate(*, raw: str) -> StreamGrant:
    """The grant behind a stream token, checked against its credential now: a revoked or expired key or access
    token, a suspended tenant or a removed member ends its tokens at once. Raises InvalidCredentials,
    CredentialExpired, CredentialRevoked, TenantSuspended."""
    try:
        claims = jwt.decode(raw, _stream_secret(), algorithms=["HS256"], audience=STREAM_TOKEN_AUDIENCE,
                            issuer=STREAM_TOKEN_ISSUER, options={"require": ["exp", "sub", "tid", "aud"]})
    except jwt.ExpiredSignatureError:
        raise CredentialExpired("This stream token expired; ask POST /v1/runs/{id}/stream-token for a new one.") \
            from None
    except jwt.PyJWTError:
        raise InvalidCredentials("The bearer token is neither an API key nor a valid stream token.") from None
    requested = frozenset(claims.get("scp") or ())
    if claims.get("knd") == "oauth_token":
        # Imported here: the OAuth server builds on this module.
        from control_plane.oauth import services as oauth_services

        grant = oauth_services.access_token_recheck(access_token_id=int(claims["sub"]), tenant_id=claims["tid"])
        return StreamGrant(tenant=grant.tenant, key_id=None, scopes=requested & grant.scopes,
                           run_id=claims.get("run"), actor=grant.actor)
    key = ApiKey.objects.select_related("tenant").filter(id=claims["sub"], tenant_id=claims["tid"]).first()
    if key is None:
        raise InvalidCredentials("The stream token's key no longer exists.")
    if key.revoked_at is not None:
        raise CredentialRevoked(f"The key behind this stream token ({key.lookup_id}) was revoked.")
    if key.expires_at is not None and key.expires_at <= timezone.now():
        raise CredentialExpired(f"The key behind this stream token ({key.lookup_id}) expired.")
    if key.tenant.status == Tenant.Status.SUSPENDED:
        raise TenantSuspended(f"Tenant {key.tenant.slug!r} is suspended; its tokens are refused.")
    if key.tenant.status != Tenant.Status.ACTIVE:
        raise InvalidCredentials("The stream token's tenant is not active.")
    scopes = requested & frozenset(key.scopes)  # never more than the key has now
    return StreamGrant(tenant=key.tenant, key_id=str(key.id), scopes=scopes, run_id=claims.get("run"),
                       actor=Actor(kind="api_key", id=str(key.id)))
