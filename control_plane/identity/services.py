"""Writes for portal users: sign-in, passwords, TOTP, memberships and invitations (public schema).

Passwords go through Django's hashers (Argon2id first, settings.PASSWORD_HASHERS) and validators; no
password, token, TOTP secret or code is ever logged or put in an audit event. Changes to who is in a tenant
are recorded in that tenant's audit log with the acting user (or key) as actor.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from uuid import UUID

import pyotp
from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from common.actors import Actor
from common.crypto import SecretBox
from common.errors import InvalidInput
from control_plane.audit.services import audit_event_record
from control_plane.identity import selectors
from control_plane.identity.errors import (
    AlreadyMember,
    InvalidLogin,
    InvalidTotpCode,
    InvitationNotFound,
    InvitationNotPending,
    LastOwner,
    PasswordRequired,
    RoleNotGrantable,
    TotpRequired,
    TotpStateConflict,
    UnknownRole,
    WrongPassword,
)
from control_plane.identity.models import Invitation, Membership, RecoveryCode, TotpDevice
from control_plane.identity.throttling import login_limiter
from tenants import roles
from tenants.errors import TenantStatusConflict
from tenants.models import Tenant

logger = logging.getLogger(__name__)

INVITATION_TTL = timedelta(days=7)
RECOVERY_CODE_COUNT = 10
TOTP_ISSUER = "Agentplane"
RECOVERY_CODE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def normalize_email(email: str) -> str:
    return email.strip().lower()


def user_actor(user: User) -> Actor:
    """The actor of a portal user's changes: kind user, id the user's pk, label the email."""
    return Actor(kind="user", id=str(user.pk), label=user.email)


def _validated_password(password: str, *, user: User) -> None:
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise InvalidInput("The password is too weak: " + " ".join(exc.messages),
                           extra={"errors": {"password": exc.messages}}) from None


def _audit_for_user_tenants(*, user: User, action: str) -> None:
    """A change to a user's own credentials, recorded in each tenant the user belongs to (tenant admins see
    that a member turned off their authenticator)."""
    for membership in selectors.membership_list_for_user(user_id=user.pk):
        audit_event_record(tenant=membership.tenant, actor=user_actor(user), action=action, target_type="user",
                           target_id=str(user.pk))


# --- Sign-in and passwords -----------------------------------------------------------------------

@sensitive_variables("password", "totp_code")
def user_sign_in(*, email: str, password: str, totp_code: str | None, address: str) -> User:
    """The active user with this email and password (and, when the user has TOTP, a valid code or recovery
    code). Raises LoginRateLimited, InvalidLogin (never saying whether the email exists), TotpRequired,
    InvalidTotpCode. Failures count against the email and the client address."""
    email = normalize_email(email)
    limiter = login_limiter()
    limiter.check(email=email, address=address)
    # ModelBackend hashes the password even for an unknown email, so timing tells nothing either.
    user = authenticate(username=email, password=password)
    if user is None or not user.is_active:
        limiter.failure(email=email, address=address)
        raise InvalidLogin("The email or password is incorrect.")
    if selectors.user_has_totp(user_id=user.pk):
        if not totp_code:
            raise TotpRequired("This account uses an authenticator app: send totp_code (a 6-digit code or a "
                               "recovery code) with the email and password.")
        return user_sign_in_second_factor(user_id=user.pk, code=totp_code, address=address)
    limiter.success(email=email)
    return user


@sensitive_variables("code")
def user_sign_in_second_factor(*, user_id: int, code: str, address: str) -> User:
    """The second step of a sign-in whose password was just verified: a TOTP code (each good once) or a
    recovery code (used up). Raises LoginRateLimited, InvalidLogin, InvalidTotpCode."""
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        raise InvalidLogin("The email or password is incorrect.")
    limiter = login_limiter()
    limiter.check(email=user.username, address=address)
    if not _second_factor_accept(user=user, code=code):
        limiter.failure(email=user.username, address=address)
        raise InvalidTotpCode("The authenticator code is wrong, expired or already used; enter the current code "
                              "(or a recovery code).")
    limiter.success(email=user.username)
    return user


@sensitive_variables("current_password", "new_password")
def user_password_change(*, user: User, current_password: str, new_password: str, address: str) -> None:
    """Change the user's password after checking the current one. Every other session of the user stops
    working (their session hash no longer matches); the caller keeps its own with update_session_auth_hash.
    Raises LoginRateLimited, WrongPassword, InvalidInput (a weak password)."""
    limiter = login_limiter()
    limiter.check(email=user.username, address=address)
    if not user.check_password(current_password):
        limiter.failure(email=user.username, address=address)
        raise WrongPassword("The current password is incorrect.")
    _validated_password(new_password, user=user)
    user.set_password(new_password)
    user.save(update_fields=["password"])
    _audit_for_user_tenants(user=user, action="user.password_change")


# --- TOTP ----------------------------------------------------------------------------------------

def _totp_box() -> SecretBox:
    # The one place that knows how TOTP secrets are sealed (the key scheme is being replaced by envelope keys).
    return SecretBox(settings.SECRETS_KEY)


def _totp_bound_to(user_id: int) -> str:
    return f"identity.totp:{user_id}"


def _totp_secret(device: TotpDevice) -> str:
    return _totp_box().open(device.sealed_secret, bound_to=_totp_bound_to(device.user_id))


def _recovery_code_hash(code: str) -> str:
    normalized = code.replace("-", "").replace(" ", "").upper()
    return hashlib.sha256(f"agentplane recovery code v1:{normalized}".encode()).hexdigest()


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_CODE_ALPHABET) for _ in range(16))  # 80 random bits
    return "-".join(raw[i:i + 4] for i in range(0, 16, 4))


@dataclass(frozen=True)
class TotpSetup:
    secret: str
    provisioning_uri: str


@sensitive_variables("secret")
def totp_setup(*, user: User) -> TotpSetup:
    """Start enabling TOTP: a new secret (sealed at rest), shown once, enabled only by totp_confirm.
    Replaces a setup not yet confirmed. Raises TotpStateConflict when TOTP is already enabled."""
    if selectors.user_has_totp(user_id=user.pk):
        raise TotpStateConflict("Two-factor authentication is already enabled; disable it first to set up "
                                "another authenticator.")
    secret = pyotp.random_base32()
    sealed = _totp_box().seal(secret, bound_to=_totp_bound_to(user.pk))
    TotpDevice.objects.update_or_create(user=user, defaults={"sealed_secret": sealed, "confirmed_at": None,
                                                             "last_used_step": None})
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)
    return TotpSetup(secret=secret, provisioning_uri=uri)


def _totp_step_matching(*, secret: str, code: str, now: datetime) -> int | None:
    """The time step (current, previous or next: one step of clock drift) whose code is ``code``."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _totp_code_accept(*, device: TotpDevice, code: str) -> bool:
    step = _totp_step_matching(secret=_totp_secret(device), code=code, now=timezone.now())
    if step is None:
        return False
    # Conditional update: of two requests with the same code, one wins; an older step never follows a newer.
    fresh = Q(last_used_step__isnull=True) | Q(last_used_step__lt=step)
    return TotpDevice.objects.filter(fresh, pk=device.pk).update(last_used_step=step) == 1


def _second_factor_accept(*, user: User, code: str) -> bool:
    """A 6-digit TOTP code (used at most once) or an unused recovery code (then used up)."""
    code = code.strip().replace(" ", "")
    device = TotpDevice.objects.filter(user=user, confirmed_at__isnull=False).first()
    if device is None:
        return False
    if code.isdigit() and len(code) == 6:
        return _totp_code_accept(device=device, code=code)
    used = RecoveryCode.objects.filter(user=user, code_hash=_recovery_code_hash(code), used_at__isnull=True)
    return used.update(used_at=timezone.now()) == 1


def totp_confirm(*, user: User, code: str) -> list[str]:
    """Enable TOTP with a code from the authenticator just set up; returns 10 single-use recovery codes
    (shown once, only their hashes kept). Raises TotpStateConflict, InvalidTotpCode."""
    device = TotpDevice.objects.filter(user=user).first()
    if device is None:
        raise TotpStateConflict("No authenticator is being set up; call POST /v1/auth/totp/setup first.")
    if device.is_enabled:
        raise TotpStateConflict("Two-factor authentication is already enabled.")
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6 and _totp_code_accept(device=device, code=code)):
        raise InvalidTotpCode("The code does not match the authenticator just set up; enter the current code.")
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    with transaction.atomic():
        TotpDevice.objects.filter(pk=device.pk).update(confirmed_at=timezone.now())
        RecoveryCode.objects.filter(user=user).delete()
        RecoveryCode.objects.bulk_create([RecoveryCode(user=user, code_hash=_recovery_code_hash(c)) for c in codes])
    _audit_for_user_tenants(user=user, action="user.totp_enable")
    return codes


def totp_disable(*, user: User, code: str) -> None:
    """Turn TOTP off, proven with a current code or a recovery code. Raises TotpStateConflict, InvalidTotpCode."""
    if not selectors.user_has_totp(user_id=user.pk):
        raise TotpStateConflict("Two-factor authentication is not enabled.")
    if not _second_factor_accept(user=user, code=code):
        raise InvalidTotpCode("The code is wrong, expired or already used; enter the current code or a recovery "
                              "code.")
    with transaction.atomic():
        TotpDevice.objects.filter(user=user).delete()
        RecoveryCode.objects.filter(user=user).delete()
    _audit_for_user_tenants(user=user, action="user.totp_disable")


# --- Members -------------------------------------------------------------------------------------

def _require_role(role: str) -> None:
    if role not in roles.ROLES:
        raise UnknownRole(f"Unknown role {role!r}; choose one of {', '.join(roles.ROLES)}.",
                          extra={"errors": {"role": [f"one of {', '.join(roles.ROLES)}"]}})


def _require_grantable(*, granter_role: str | None, role: str, what: str) -> None:
    """``granter_role`` None is the platform itself (provisioning), which may grant anything."""
    if granter_role is not None and not roles.can_grant(granter_role=granter_role, role=role):
        raise RoleNotGrantable(f"A member with role {granter_role!r} cannot {what} a membership of role {role!r}.")


def _other_owners_remain(*, tenant: Tenant, membership: Membership) -> bool:
    """Whether the tenant keeps an owner without ``membership``. Locks the owners' rows, so two owners
    demoting each other at once cannot leave the tenant with none."""
    owners = list(Membership.objects.select_for_update().filter(tenant=tenant, role=roles.OWNER)
                  .values_list("id", flat=True))
    return any(owner_id != membership.id for owner_id in owners)


def membership_role_change(*, tenant: Tenant, membership_id: UUID, role: str, actor: Actor,
                           granter_role: str) -> Membership:
    """Give a member another role. The granter must be allowed to grant both the old and the new role; the
    last owner stays an owner. Raises MembershipNotFound, UnknownRole, RoleNotGrantable, LastOwner."""
    _require_role(role)
    with transaction.atomic():
        membership = selectors.membership_get(tenant=tenant, membership_id=membership_id)
        _require_grantable(granter_role=granter_role, role=membership.role, what="change")
        _require_grantable(granter_role=granter_role, role=role, what="grant")
        previous = membership.role
        if previous == role:
            return membership
        if previous == roles.OWNER and not _other_owners_remain(tenant=tenant, membership=membership):
            raise LastOwner(f"{membership.user.email} is the tenant's last owner; make another member an owner "
                            "first.")
        membership.role = role
        membership.save(update_fields=["role", "updated_at"])
        audit_event_record(tenant=tenant, actor=actor, action="member.role_change", target_type="member",
                           target_id=str(membership.id),
                           data={"email": membership.user.email, "from_role": previous, "to_role": role})
    return membership


def membership_remove(*, tenant: Tenant, membership_id: UUID, actor: Actor, granter_role: str) -> None:
    """Remove a member from the tenant (the user account stays). Raises MembershipNotFound, RoleNotGrantable,
    LastOwner. The user's next request to this tenant is refused."""
    with transaction.atomic():
        membership = selectors.membership_get(tenant=tenant, membership_id=membership_id)
        _require_grantable(granter_role=granter_role, role=membership.role, what="remove")
        if membership.role == roles.OWNER and not _other_owners_remain(tenant=tenant, membership=membership):
            raise LastOwner(f"{membership.user.email} is the tenant's last owner and cannot be removed; make "
                            "another member an owner first.")
        membership.delete()
        audit_event_record(tenant=tenant, actor=actor, action="member.remove", target_type="member",
                           target_id=str(membership_id), data={"email": membership.user.email,
                                                                 "role": membership.role})


# --- Invitations ---------------------------------------------------------------------------------

def _invitation_email_send(*, tenant_name: str, email: str, role: str, token: str, expires_at: datetime) -> None:
    link = f"{settings.INVITATION_ACCEPT_URL}?token={token}"
    send_mail(
        subject=f"You are invited to {tenant_name} on Agentplane",
        message=(f"You have been invited to join {tenant_name} on Agentplane as {role}.\n\n"
                 f"Accept the invitation here (the link works once, until {expires_at:%Y-%m-%d %H:%M} UTC):\n"
                 f"{link}\n\nIf you did not expect this invitation, ignore this email."),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[email],
    )


@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    token: str  # only for the email; never returned by the API


def invitation_create(*, tenant: Tenant, email: str, role: str, actor: Actor,
                      granter_role: str | None) -> IssuedInvitation:
    """Invite ``email`` to the tenant in ``role``: a single-use token (only its hash kept) valid 7 days, sent
    by email after commit. A pending invitation to the same email is replaced (revoked). ``granter_role`` None
    is the platform (provisioning). Raises UnknownRole, RoleNotGrantable, AlreadyMember, TenantStatusConflict."""
    email = normalize_email(email)
    _require_role(role)
    _require_grantable(granter_role=granter_role, role=role, what="grant")
    if tenant.status != Tenant.Status.ACTIVE:
        raise TenantStatusConflict(f"Tenant {tenant.slug!r} is {tenant.status}; only an active tenant can invite.")
    if Membership.objects.filter(tenant=tenant, user__username=email).exists():
        raise AlreadyMember(f"{email} is already a member of this tenant; change their role instead.")
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    with transaction.atomic():
        replaced = list(selectors.invitation_list_pending(tenant=tenant).filter(email=email)
                        .values_list("id", flat=True))
        Invitation.objects.filter(id__in=replaced).update(revoked_at=now)
        invitation = Invitation.objects.create(
            tenant=tenant, email=email, role=role, token_hash=selectors.invitation_token_hash(token),
            invited_by=str(actor), created_at=now, expires_at=now + INVITATION_TTL)
        audit_event_record(tenant=tenant, actor=actor, action="invitation.create", target_type="invitation",
                           target_id=str(invitation.id),
                           data={"email": email, "role": role, "replaced": [str(i) for i in replaced]})
        transaction.on_commit(partial(_invitation_email_send, tenant_name=tenant.name, email=email, role=role,
                                      token=token, expires_at=invitation.expires_at))
    return IssuedInvitation(invitation=invitation, token=token)


def invitation_revoke(*, tenant: Tenant, invitation_id: UUID, actor: Actor, granter_role: str) -> Invitation:
    """Revoke a pending invitation; its link stops working. Raises InvitationNotFound, RoleNotGrantable,
    InvitationNotPending."""
    invitation = selectors.invitation_get(tenant=tenant, invitation_id=invitation_id)
    _require_grantable(granter_role=granter_role, role=invitation.role, what="revoke")
    now = timezone.now()
    updated = Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True,
                                        expires_at__gt=now).update(revoked_at=now)
    if not updated:
        raise InvitationNotPending(f"Invitation {invitation_id} is no longer pending (accepted, revoked or expired).")
    invitation.refresh_from_db()
    audit_event_record(tenant=tenant, actor=actor, action="invitation.revoke", target_type="invitation",
                       target_id=str(invitation.id), data={"email": invitation.email, "role": invitation.role})
    return invitation


@dataclass(frozen=True)
class AcceptedInvitation:
    membership: Membership
    user_created: bool


@sensitive_variables("token", "password")
def invitation_accept(*, token: str, password: str | None, name: str) -> AcceptedInvitation:
    """Use an invitation: create the user when the email is new (``password`` required, validated) or add the
    membership to the existing user (who then signs in with their own password; ``password`` is ignored).
    Raises InvitationNotFound, InvitationNotPending, PasswordRequired, InvalidInput, AlreadyMember,
    TenantStatusConflict."""
    with transaction.atomic():
        invitation = (Invitation.objects.select_for_update().select_related("tenant")
                      .filter(token_hash=selectors.invitation_token_hash(token)).first())
        if invitation is None:
            raise InvitationNotFound("This invitation link is not valid; ask the tenant's admin for a new one.")
        now = timezone.now()
        if invitation.accepted_at or invitation.revoked_at or invitation.expires_at <= now:
            state = ("already used" if invitation.accepted_at else "revoked" if invitation.revoked_at
                     else "expired")
            raise InvitationNotPending(f"This invitation is {state}; ask the tenant's admin for a new one.")
        tenant = invitation.tenant
        if tenant.status != Tenant.Status.ACTIVE:
            raise TenantStatusConflict(f"Tenant {tenant.slug!r} is {tenant.status}; its invitations cannot be used.")
        user = selectors.user_find_by_email(email=invitation.email)
        user_created = user is None
        if user is None:
            if not password:
                raise PasswordRequired("Choose a password for your new account: send password (and name).",
                                       extra={"errors": {"password": ["required for a new account"]}})
            user = User(username=invitation.email, email=invitation.email, first_name=name[:150])
            _validated_password(password, user=user)
            user.set_password(password)
            user.save()
        try:
            with transaction.atomic():
                membership = Membership.objects.create(user=user, tenant=tenant, role=invitation.role)
        except IntegrityError:
            raise AlreadyMember(f"{invitation.email} is already a member of {tenant.name}; sign in.") from None
        invitation.accepted_at = now
        invitation.accepted_by = user
        invitation.save(update_fields=["accepted_at", "accepted_by"])
        actor = user_actor(user)
        audit_event_record(tenant=tenant, actor=actor, action="invitation.accept", target_type="invitation",
                           target_id=str(invitation.id), data={"email": invitation.email, "role": invitation.role,
                                                               "user_created": user_created})
        audit_event_record(tenant=tenant, actor=actor, action="member.add", target_type="member",
                           target_id=str(membership.id), data={"email": invitation.email, "role": invitation.role})
    return AcceptedInvitation(membership=membership, user_created=user_created)

