"""Public-schema models: a tenant's OAuth client application (django-oauth-toolkit's Application, swapped in
so it belongs to a tenant and carries the scopes it may ever get) and the keys that sign access tokens."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models
from oauth2_provider.models import AbstractApplication


class Application(AbstractApplication):
    """One client of one tenant. Its secret is stored hashed (DOT hashes it on save); shown once."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="oauth_applications")
    # The most any token of this client may carry: each token gets at most these, and a user's token at most
    # the user's current role in the tenant as well.
    scopes = ArrayField(models.CharField(max_length=64), default=list)
    created_by_kind = models.CharField(max_length=32, blank=True, default="")
    created_by_id = models.CharField(max_length=64, blank=True, default="")

    class Meta(AbstractApplication.Meta):
        swappable = "OAUTH2_PROVIDER_APPLICATION_MODEL"
        ordering = ["created"]
        indexes = [models.Index(fields=["tenant", "created"])]

    def is_usable(self, request: object) -> bool:
        """DOT asks before any grant: a suspended or deleted tenant's clients get no tokens."""
        return self.tenant.status == "active"


class SigningKey(models.Model):
    """An ES256 key pair that signs access tokens. One is current (signs new tokens); a superseded key keeps
    verifying until ``retire_at`` (when every token it signed has expired), then is neither published nor
    accepted. The private key is sealed at rest, bound to its kid."""

    kid = models.CharField(max_length=32, primary_key=True)
    algorithm = models.CharField(max_length=8, default="ES256")
    public_key_pem = models.TextField()
    private_key_sealed = models.TextField()
    is_current = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    superseded_at = models.DateTimeField(null=True, blank=True)
    retire_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["is_current"], condition=models.Q(is_current=True),
                                               name="oauth_one_current_signing_key")]

    def __str__(self) -> str:
        return f"SigningKey {self.kid}"
