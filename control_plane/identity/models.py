"""Public-schema models: a portal user (Django's own User, the email as username) belongs to tenants through
memberships, each with one role (tenants.roles)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants import roles


class Membership(models.Model):
    """A portal user's place in one tenant: the role decides the scopes (tenants.roles.ROLE_SCOPES)."""

    Role = models.TextChoices("Role", [(role, role) for role in roles.ROLES])

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="identity_one_membership_per_tenant")]

    @property
    def scopes(self) -> frozenset[str]:
        return roles.scopes_for_role(self.role)


class Invitation(models.Model):
    """An invitation to join a tenant in a role, sent by email. Only the token's hash is kept; it is used once."""

    Role = Membership.Role

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(max_length=254)  # lowercased
    role = models.CharField(max_length=16, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)  # sha256 hex of a 256-bit random token
    invited_by = models.CharField(max_length=200)  # the actor, "<kind>:<id>"
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "email"], name="identity_inv_tenant_email")]


class TotpDevice(models.Model):
    """A user's authenticator app (RFC 6238 TOTP): the shared secret sealed at rest, enabled once confirmed."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True,
                                related_name="totp_device")
    sealed_secret = models.TextField()
    confirmed_at = models.DateTimeField(null=True, blank=True)  # None: set up but not yet enabled
    # The time step of the last code accepted: a code is good once, and never an older one after it.
    last_used_step = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def is_enabled(self) -> bool:
        return self.confirmed_at is not None


class RecoveryCode(models.Model):
    """One single-use recovery code of a user with TOTP; only its hash is kept."""

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="recovery_codes")
    code_hash = models.CharField(max_length=64)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "code_hash"], name="identity_recovery_code_unique")]
