from django.apps import AppConfig


class EncryptionConfig(AppConfig):
    name = "control_plane.encryption"
    label = "encryption"
    default_auto_field = "django.db.models.BigAutoField"
