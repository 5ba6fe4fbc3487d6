from django.apps import AppConfig


class OAuthConfig(AppConfig):
    name = "control_plane.oauth"
    label = "oauth"
    default_auto_field = "django.db.models.BigAutoField"
