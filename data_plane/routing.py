from django.urls import path

from data_plane.consumers import PingEventsConsumer, RunStreamConsumer

websocket_urlpatterns = [
    path("v1/pings/<uuid:ping_id>/events", PingEventsConsumer.as_asgi()),
    path("v1/runs/<uuid:run_id>/stream", RunStreamConsumer.as_asgi()),
]
