from django.apps import AppConfig


class DataPlaneConfig(AppConfig):
    name = "data_plane"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from data_plane import sealing  # the encryption context re-seals what the data plane keeps sealed

        sealing.register()
