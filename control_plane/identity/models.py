"""Public-schema models: a portal user (Django's own User, the email as username) belongs to tenants through
memberships, each with one role (tenants.roles)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

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
