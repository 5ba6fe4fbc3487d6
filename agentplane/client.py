"""The client: REST calls with httpx, a run's stream over a websocket (or server-sent events).

Synchronous on purpose: a tenant's script or web app can iterate a run's events in a plain ``for`` loop.
Control methods (``approve``, ``pause``...) are sent over the same socket and wait for their
acknowledgement; call them from the thread that iterates. Events that arrive while waiting are kept and
yielded next, in order.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

# Messages that are not a run's events: they move no cursor a caller cares about.
_TRANSPORT = {"stream.opened", "stream.idle", "ack", "error", "stream.lagged"}


class AgentplaneError(Exception):
    """The API said no: ``code`` (stable), ``status`` (HTTP, or the websocket close code's) and a message
    that says what to fix."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Event:
    """One message of a run's stream. ``seq`` numbers durable events 1, 2, 3...; a ``message.delta`` carries
    the seq of the durable event before it and its own number ``n``. ``id`` is the cursor to resume after it."""

    type: str
    id: str
    run_id: str
    seq: int
    data: dict[str, Any]
    ts: str = ""
    n: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, message: dict[str, Any]) -> Event:
        return cls(type=message["type"], id=message.get("id", ""), run_id=message.get("run_id", ""),
                   seq=message.get("seq", 0), data=message.get("data") or {}, ts=message.get("ts", ""),
                   n=message.get("n"), raw=message)


class Client:
    """Agentplane's API for one tenant, with one API key."""

    def __init__(self, base_url: str, *, api_key: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.http = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- REST --------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise AgentplaneError(body.get("code", "http_error"), body.get("detail", response.text[:500]),
                                  response.status_code)
        return response.json() if response.content else None

    def create_agent(self, *, name: str, spec: dict[str, Any], description: str = "") -> dict[str, Any]:
        return self.request("POST", "/v1/agents", json={"name": name, "spec": spec, "description": description})

    def start_run(self, *, agent_id: str, input: str, values: dict[str, Any] | None = None,
                  version: int | None = None, end_user: str = "", task_kind: str = "",
                  attachments: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"agent_id": agent_id, "input": input, "values": values or {}}
        if version is not None:
            body["version"] = version
        for name, value in (("end_user", end_user), ("task_kind", task_kind), ("attachments", attachments)):
            if value:
                body[name] = value
        return self.request("POST", "/v1/runs", json=body)

    def give_feedback(self, run_id: str, *, score: float, comment: str = "") -> dict[str, Any]:
        """Score a finished run from 0 to 1; a low score makes an agent that reflects learn a lesson."""
        return self.request("POST", f"/v1/runs/{run_id}/feedback", json={"score": score, "comment": comment})

    # --- Long-term memory ------------------------------------------------------------------------------

    def remember(self, text: str, **fields: Any) -> dict[str, Any]:
        """Write one memory (fields: kind, agent, end_user, tags, metadata, ttl_seconds); a near-duplicate
        updates the existing one (the answer says ``merged``)."""
        return self.request("POST", "/v1/memories", json={"text": text, **fields})

    def search_memories(self, query: str, **filters: Any) -> list[dict[str, Any]]:
        """Hybrid search (filters: k, agent, end_user, kinds, tags, mode, min_similarity)."""
        return self.request("POST", "/v1/memories/search", json={"query": query, **filters})["results"]

    def forget(self, *, end_user: str | None = None, agent: str | None = None, everything: bool = False) -> int:
        """Delete every memory of an end user (or an agent, or all); returns how many."""
        body = {k: v for k, v in (("end_user", end_user), ("agent", agent)) if v}
        return self.request("POST", "/v1/memories/forget", json={**body, "everything": everything})["deleted"]

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/runs/{run_id}")

    def send_message(self, run_id: str, text: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/runs/{run_id}/messages", json={"text": text})

    # --- Streams -----------------------------------------------------------------------------------------

    def stream(self, run_id: str, *, after: str | None = None, follow: bool = False,
               max_reconnects: int = 20) -> RunStream:
        """The run's events over a websocket, from after ``after`` (an event's id; None: from the start).
        Iteration ends after the run's latest ``run.finished`` unless ``follow``."""
        return RunStream(self, run_id, after=after, follow=follow, max_reconnects=max_reconnects)

    def stream_sse(self, run_id: str, *, after: str | None = None, follow: bool = False,
                   max_reconnects: int = 20) -> SseStream:
        """The same events as server-sent events over HTTP, for where websockets cannot go."""
        return SseStream(self, run_id, after=after, follow=follow, max_reconnects=max_reconnects)

    def _stream_url(self, run_id: str, *, scheme: str, after: str | None, follow: bool) -> str:
        base = self.base_url
        if scheme == "ws":
            base = "ws" + base.removeprefix("http")  # http -> ws, https -> wss
        query = {k: v for k, v in {"after": after, "follow": "true" if follow else None}.items() if v}
        return f"{base}/v1/runs/{run_id}/stream" + (f"?{urlencode(query)}" if query else "")


class _Resuming:
    """What both transports share: the cursor, when to stop, and how long to wait before reconnecting."""

    def __init__(self, client: Client, run_id: str, *, after: str | None, follow: bool, max_reconnects: int) -> None:
        self.client, self.run_id, self.follow = client, run_id, follow
        self.cursor = after
        self.max_reconnects = max_reconnects
        self.reconnects = 0  # how many times this stream had to reconnect (and resumed)
        self.last_seq_at_open: int | None = None
        self.finished = False

    def _backoff(self, failures: int) -> None:
        if failures > self.max_reconnects:
            raise AgentplaneError("stream_unavailable", f"Could not reach the stream of run {self.run_id} after "
                                  f"{self.max_reconnects} attempts; resume later with after={self.cursor!r}.", 503)
        time.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)) * (0.5 + random.random() / 2))

    def _accept(self, message: dict[str, Any]) -> Event | None:
        """The event to hand to the caller, or None for a transport message. Moves the cursor."""
        kind = message.get("type")
        if kind == "stream.opened":
            if self.last_seq_at_open is None:  # the first connection's view: later ones only resume
                self.last_seq_at_open = message["data"].get("last_seq", 0)
            return None
        if kind == "error":
            raise AgentplaneError(message.get("code", "error"), message.get("message", ""),
                                  message.get("status", 400))
        if kind in _TRANSPORT:
            return None
        if message.get("id"):
            self.cursor = message["id"]
        event = Event.from_json(message)
        if event.type == "run.finished" and not self.follow and event.seq >= (self.last_seq_at_open or 0):
            self.finished = True
        return event


class RunStream(_Resuming):
    """A run's events over a websocket; reconnects and resumes by itself. Use as a context manager."""

    connection: ClientConnection | None = None

    def __init__(self, client: Client, run_id: str, **kwargs: Any) -> None:
        super().__init__(client, run_id, **kwargs)
        self._pending: deque[dict[str, Any]] = deque()

    def __enter__(self) -> RunStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def __iter__(self) -> Iterator[Event]:
        while not self.finished:
            event = self._accept(self._next_message())
            if event is not None:
                yield event

    def _connect(self) -> None:
        failures = 0
        while True:
            url = self.client._stream_url(self.run_id, scheme="ws", after=self.cursor, follow=self.follow)
            try:
                self.connection = connect(url, additional_headers={"Authorization": f"Bearer {self.client.api_key}"},
                                          open_timeout=10, max_size=2 ** 24, legacy=True)
                return
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if isinstance(exc, InvalidURI):
                    raise
                failures += 1
                self._backoff(failures)

    def _next_message(self) -> dict[str, Any]:
        if self._pending:
            return self._pending.popleft()
        failures = 0
        while True:
            if self.connection is None:
                self._connect()
            assert self.connection is not None
            try:
                message = json.loads(self.connection.recv())
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                self.connection = None
                if code is not None and 4400 <= code < 4600 and code != 4408:
                    raise AgentplaneError("stream_closed", f"The server closed the stream ({code}).", code - 4000) \
                        from None
                failures += 1
                self.reconnects += 1
                self._backoff(failures)
                continue
            if message.get("type") == "stream.lagged":  # resume from our cursor, at full speed
                self.close()
                self.reconnects += 1
                continue
            return message

    # --- control -----------------------------------------------------------------------------------------

    def control(self, action: str, **fields: Any) -> dict[str, Any]:
        """Send a control message and wait for its acknowledgement's data. Raises AgentplaneError."""
        if self.connection is None:
            self._connect()
        assert self.connection is not None
        reference = uuid.uuid4().hex[:12]
        self.connection.send(json.dumps({"type": action, "id": reference, **fields}))
        while True:
            try:
                message = json.loads(self.connection.recv(timeout=30))
            except (ConnectionClosed, TimeoutError):
                self.close()
                raise AgentplaneError("control_unconfirmed", f"The connection dropped before {action!r} was "
                                      "acknowledged; read the run's state (or its events) to see whether it took "
                                      "effect.", 503) from None
            if message.get("id") == reference and message.get("type") in ("ack", "error"):
                if message["type"] == "error":
                    raise AgentplaneError(message["code"], message["message"], message.get("status", 400))
                return message.get("data") or {}
            self._pending.append(message)

    def pause(self) -> dict[str, Any]:
        return self.control("pause")

    def resume(self) -> dict[str, Any]:
        return self.control("resume")

    def cancel(self, reason: str = "") -> dict[str, Any]:
        return self.control("cancel", reason=reason)

    def send_message(self, text: str) -> dict[str, Any]:
        """Continue a completed run's conversation; iterate on to follow its next turn."""
        self.follow_turn()
        return self.control("message", text=text)

    def follow_turn(self) -> None:
        """Iterate on past the current run.finished (until the next one)."""
        self.finished = False
        self.last_seq_at_open = 0

    def approve(self, approval_id: str | None = None, *, arguments: dict[str, Any] | None = None,
                comment: str = "") -> dict[str, Any]:
        """Approve the run's pending approval (or the one named), optionally with edited tool arguments
        ({call id: arguments})."""
        return self.control("approve", approval_id=approval_id, arguments=arguments or {}, comment=comment)

    def reject(self, approval_id: str | None = None, *, comment: str = "") -> dict[str, Any]:
        return self.control("reject", approval_id=approval_id, comment=comment)


class SseStream(_Resuming):
    """A run's events as server-sent events; reconnects with Last-Event-ID by itself."""

    def __iter__(self) -> Iterator[Event]:
        failures = 0
        while not self.finished:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": self.cursor} if self.cursor else {})}
            url = self.client._stream_url(self.run_id, scheme="http", after=None, follow=self.follow)
            try:
                with self.client.http.stream("GET", url, headers=headers, timeout=httpx.Timeout(30, read=60)) as r:
                    if r.status_code >= 400:
                        body = json.loads(r.read() or b"{}")
                        raise AgentplaneError(body.get("code", "http_error"), body.get("detail", ""), r.status_code)
                    failures = 0
                    data: list[str] = []
                    for line in r.iter_lines():
                        if line.startswith("data:"):
                            data.append(line[5:].lstrip())
                        elif line == "" and data:
                            event = self._accept(json.loads("\n".join(data)))
                            data = []
                            if event is not None:
                                yield event
                                if self.finished:
                                    return
                if not self.finished:  # the server ended the response (lagged, or a deploy): resume
                    self.reconnects += 1
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                self.reconnects += 1
                self._backoff(failures)
