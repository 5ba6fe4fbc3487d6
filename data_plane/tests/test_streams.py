"""Publishing a commit's events: a Redis that hangs costs one commit its send timeout, not every commit."""

from __future__ import annotations

import socket
import threading
import time
import uuid

from django.test import override_settings

from data_plane import streams


def test_a_publish_that_times_out_pauses_publishing_instead_of_making_every_commit_wait():
    # given: a "Redis" that accepts connections and never answers
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    layer = {"BACKEND": "common.channel_layer.FastGroupRedisChannelLayer",
             "CONFIG": {"hosts": [f"redis://127.0.0.1:{server.getsockname()[1]}"]}}
    events = [{"seq": 1, "type": "run.status", "data": {"status": "running"}, "ts": "now"}]
    streams._publish_paused_until = 0.0
    try:
        with override_settings(CHANNEL_LAYERS={"default": layer}):
            from channels.layers import get_channel_layer

            get_channel_layer().blocking_timeout = 0.5
            started = time.monotonic()
            streams.run_publish(tenant_schema="t_hangs", run_id=uuid.uuid4(), events=events)  # waits out the timeout
            first = time.monotonic() - started
            started = time.monotonic()
            for _ in range(20):
                streams.run_publish(tenant_schema="t_hangs", run_id=uuid.uuid4(), events=events)
            rest = time.monotonic() - started
        # then: the first commit's publish gave up after its timeout, without raising; the next ones did not wait
        assert 0.4 < first < 5
        assert rest < 0.2
        assert streams._publish_paused_until > time.monotonic()
    finally:
        streams._publish_paused_until = 0.0
        stop.set()
        server.close()
        for connection in accepted:
            connection.close()
