from django.apps import AppConfig


class DataPlaneConfig(AppConfig):
    name = "data_plane"
    default_auto_field = "django.db.models.BigAutoField"
