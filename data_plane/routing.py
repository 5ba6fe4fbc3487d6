from django.urls import path

from data_plane.consumers import PingEventsConsumer

websocket_urlpatterns = [
    path("v1/pings/<uuid:ping_id>/events", PingEventsConsumer.as_asgi()),
]
