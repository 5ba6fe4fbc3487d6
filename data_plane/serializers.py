"""Output shapes shared by the HTTP API, the websocket stream and the worker's notifications."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from data_plane.models import Ping


class PingOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    message = serializers.CharField()
    status = serializers.CharField()
    requested_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    worker = serializers.CharField(help_text="The Celery worker that answered.")
    observed_schema = serializers.CharField(help_text="The database schema the worker ran in.")
    deliveries = serializers.IntegerField()


def ping_data(ping: Ping) -> dict[str, Any]:
    return dict(PingOutputSerializer(ping).data)
