"""Publishing a commit's events: a Redis that hangs costs one commit its send timeout, not every commit."""

from __future__ import annotations

import socket
import threading
import time
import uuid

from django.test import override_settings

from data_plane import streams


def test_a_publish_that_times_out_pauses_publishing_instead_of_making_every_commit_wait():
    # given: a "Redis" that accepts connections, reads what it is sent and never answers
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    received: list[bytes] = []
    stop = threading.Event()

    def serve(connection: socket.socket) -> None:
        connection.settimeout(0.2)
        while not stop.is_set():
            try:
                data = connection.recv(65536)
            except OSError:
                continue
            if not data:
                return
            received.append(data)

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection = server.accept()[0]
            except OSError:
                continue
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    layer = {"BACKEND": "common.channel_layer.FastGroupRedisChannelLayer",
             "CONFIG": {"hosts": [f"redis://127.0.0.1:{server.getsockname()[1]}"]}}
    events = [{"seq": 1, "type": "run.status", "data": {"status": "running"}, "ts": "now"}]
    streams._publish_paused_until = 0.0
    try:
        with override_settings(CHANNEL_LAYERS={"default": layer}):
            from channels.layers import get_channel_layer

            get_channel_layer().blocking_timeout = 0.5
            # when: a commit publishes (it waits out the timeout and does not raise), then 20 more do
            for _ in range(21):
                streams.run_publish(tenant_schema="t_hangs", run_id=uuid.uuid4(), events=events)
        # then: only the first publish reached "Redis" (its connection's handshake, where it waited); the others
        # were dropped without connecting, and publishing is paused
        assert b"".join(received).count(b"HELLO") == 1
        assert streams._publish_paused_until > time.monotonic()
    finally:
        streams._publish_paused_until = 0.0
        stop.set()
        server.close()
