from django.urls import path

from data_plane import apis

urlpatterns = [
    path("pings", apis.PingListCreateApi.as_view(), name="pings"),
    path("pings/<uuid:ping_id>", apis.PingDetailApi.as_view(), name="ping-detail"),
]
