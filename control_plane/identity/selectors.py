"""Reads of portal users, memberships and invitations (public schema). Never writes."""

from __future__ import annotations

import hashlib

from uuid import UUID

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone

from control_plane.identity.errors import InvitationNotFound, InvitationNotPending, MembershipNotFound
from control_plane.identity.models import Invitation, Membership, TotpDevice
from tenants import roles
from tenants.models import Tenant


def membership_list(*, tenant: Tenant) -> QuerySet[Membership]:
    """The tenant's members with their users, oldest first."""
    return Membership.objects.filter(tenant=tenant).select_related("user")


def membership_get(*, tenant: Tenant, membership_id: UUID) -> Membership:
    """One membership of ``tenant``. Raises MembershipNotFound, also for another tenant's."""
    try:
        return Membership.objects.select_related("user").get(tenant=tenant, id=membership_id)
    except Membership.DoesNotExist:
        raise MembershipNotFound(f"Member {membership_id} not found in this tenant.") from None


def membership_find(*, tenant: Tenant, user_id: int) -> Membership | None:
    """The user's membership in ``tenant``, or None."""
    return Membership.objects.filter(tenant=tenant, user_id=user_id).first()


def member_scopes(*, user_id: object, tenant_id: object) -> frozenset[str] | None:
    """The scopes the user's current role in the tenant holds; None when the user is not a member."""
    role = Membership.objects.filter(user_id=user_id, tenant_id=tenant_id).values_list("role", flat=True).first()
    return None if role is None else roles.scopes_for_role(role)


def membership_list_for_user(*, user_id: int) -> QuerySet[Membership]:
    """The user's memberships in tenants that still exist (active or suspended), with their tenants."""
    return (Membership.objects.filter(user_id=user_id).exclude(tenant__status=Tenant.Status.DELETED)
            .select_related("tenant").order_by("tenant__slug"))


def invitation_list_pending(*, tenant: Tenant) -> QuerySet[Invitation]:
    """The tenant's invitations not yet accepted, revoked or expired, newest first."""
    return Invitation.objects.filter(tenant=tenant, accepted_at__isnull=True, revoked_at__isnull=True,
                                     expires_at__gt=timezone.now())


def invitation_get(*, tenant: Tenant, invitation_id: UUID) -> Invitation:
    """One invitation of ``tenant``, in any state. Raises InvitationNotFound, also for another tenant's."""
    try:
        return Invitation.objects.get(tenant=tenant, id=invitation_id)
    except Invitation.DoesNotExist:
        raise InvitationNotFound(f"Invitation {invitation_id} not found in this tenant.") from None


def user_find_by_email(*, email: str) -> User | None:
    return User.objects.filter(username=email.strip().lower()).first()


def user_has_totp(*, user_id: int) -> bool:
    return TotpDevice.objects.filter(user_id=user_id, confirmed_at__isnull=False).exists()


def invitation_token_hash(token: str) -> str:
    """What is stored of an invitation's token. The token carries 256 random bits: a fast hash is enough, and
    lets the token be looked up."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def invitation_get_pending_by_token(*, token: str) -> Invitation:
    """The pending invitation behind a token, with its tenant. Raises InvitationNotFound, InvitationNotPending."""
    invitation = Invitation.objects.select_related("tenant").filter(token_hash=invitation_token_hash(token)).first()
    if invitation is None:
        raise InvitationNotFound("This invitation link is not valid; ask the tenant's admin for a new one.")
    if invitation.accepted_at or invitation.revoked_at or invitation.expires_at <= timezone.now():
        raise InvitationNotPending("This invitation is no longer valid; ask the tenant's admin for a new one.")
    return invitation
