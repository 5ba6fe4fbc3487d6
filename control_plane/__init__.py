"""The Django project: settings, URL root, ASGI/WSGI entry points and the Celery app."""

from control_plane.celery import app as celery_app

__all__ = ["celery_app"]
