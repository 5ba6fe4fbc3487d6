from django.apps import AppConfig


class AuditAnchorConfig(AppConfig):
    """The public-schema half of the audit log: each tenant's chain head, and the SQL that links the chains."""

    name = "control_plane.audit_anchor"
    label = "audit_anchor"
    default_auto_field = "django.db.models.BigAutoField"
