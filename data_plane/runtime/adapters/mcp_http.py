"""MCP's streamable HTTP transport on aiohttp, under the SDK's own client session (``mcp.Client``).

The SDK's client session (JSON-RPC ids, the initialize handshake, the server's requests and notifications,
cancellation, result validation) costs about 0.1 ms of CPU a call; its streamable HTTP transport on httpx2
cost ten times that (a task group per message, httpcore and h11 in pure Python, headers and body in two
writes) and closed each POST's connection: it stops reading an event stream at the response, and a body
closed unread cannot go back to the pool, so every call paid a TCP connect and the server an accept.
This transport speaks the same protocol (2025-06-18, "Streamable HTTP") with aiohttp's C parser, reads each
event stream to its end so its connection is reused, and gives the session the same messages.

Per message from the session: a request is POSTed on a task of its own and its answer, a JSON body or an
event stream (``Accept: application/json, text/event-stream``), is handed back with the server's
notifications and requests met on the way; a notification or an answer of ours is POSTed in order (202).
The ``Mcp-Session-Id`` the server gives at initialize, and the ``MCP-Protocol-Version`` the session stamps,
go on every later request; after ``notifications/initialized`` a GET stream carries what the server sends
outside any request (a changed tool list). A 404 on a session means the server forgot it: the request
fails as a lost connection (``CONNECTION_CLOSED``) so the caller opens a new session, as the specification
asks. An event stream that ends before the answer is resumed with ``Last-Event-ID`` when the server gave
event ids. A redirect is followed only within the endpoint's origin and only when it keeps the method
(307/308), as the SDK does. Closing sends DELETE to end the server's session.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache

import aiohttp
import anyio
import anyio.to_thread
import httpx2
from aiohttp.helpers import get_env_proxy_for_url
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import (CONNECTION_CLOSED, INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, ErrorData,
                       JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse, RequestId,
                       jsonrpc_message_adapter)
from pydantic import ValidationError
from yarl import URL

logger = logging.getLogger(__name__)

ACCEPT = "application/json, text/event-stream"
SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
MAX_EVENT_BYTES = 1024 * 1024  # one server-sent event (the SDK's limit): a server cannot make us buffer more
MAX_REDIRECTS = 3
MAX_RESUMES = 2  # reconnections of one event stream (the SDK's)
RESUME_DELAY_MS = 1000  # before reconnecting, when the server gave no ``retry``
DRAIN_SECONDS = 1.0  # to read what follows an answer on its stream, so the connection can be reused
# Below the keep-alive of common servers (uvicorn: 5 s): a connection the server is about to close is not
# reused; a new one costs a fraction of a millisecond.
KEEPALIVE_SECONDS = 4.0
CLOSE_SECONDS = 5.0  # for the DELETE that ends the server's session


class EventTooLarge(Exception):
    """A server-sent event grew past MAX_EVENT_BYTES."""


@dataclass(frozen=True)
class ServerEvent:
    event: str
    data: bytes
    id: str | None


class EventParser:
    """Server-sent events (the WHATWG format) from the chunks of a body, as they arrive."""

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.pending = b""
        self.data: list[bytes] = []
        self.size = 0
        self.event = ""
        self.last_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        text = self.pending + chunk
        # A CR at the end may be half of a CRLF: keep it for the next chunk.
        held = b"\r" if text.endswith(b"\r") else b""
        if held:
            text = text[:-1]
        lines = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self.pending = lines.pop() + held
        events: list[ServerEvent] = []
        for line in lines:
            if not line:
                data = b"\n".join(self.data)
                if data:  # an event with no data is not dispatched: a priming event only marks a resumption point
                    events.append(ServerEvent(self.event or "message", data, self.last_id))
                self.data, self.size, self.event = [], 0, ""
                continue
            if line[0] == 0x3A:  # ":" a comment (a keep-alive ping)
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self.data.append(value)
                self.size += len(value)
            elif name == b"event":
                self.event = value.decode()
            elif name == b"id" and b"\0" not in value:
                self.last_id = value.decode()
            elif name == b"retry" and value.isdigit():
                self.retry_ms = int(value)
        if self.size + len(self.pending) > self.max_bytes:
            raise EventTooLarge(f"a server-sent event is over {self.max_bytes} bytes")
        return events


@cache
def _tls() -> ssl.SSLContext:
    """The same certificate trust as the SDK's httpx2 client had (built once: loading it takes a while)."""
    return httpx2.create_ssl_context()


class StreamableHttp:
    """One MCP session's transport to one endpoint; ``connect()`` is what ``mcp.Client`` takes as a server."""

    def __init__(self, url: str, *, headers: Mapping[str, str], connect_seconds: float, read_seconds: float,
                 max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.url = URL(url)
        self.headers = dict(headers)  # the server's credentials: on every request
        self.timeout = aiohttp.ClientTimeout(total=None, connect=connect_seconds, sock_connect=connect_seconds,
                                             sock_read=read_seconds)
        self.max_event_bytes = max_event_bytes
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._inbox: MemoryObjectSendStream[SessionMessage | Exception] | None = None
        self._tasks: TaskGroup | None = None
        self._proxy: URL | None = None
        self._proxy_auth: aiohttp.BasicAuth | None = None

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[tuple[MemoryObjectReceiveStream[SessionMessage | Exception],
                                                   MemoryObjectSendStream[SessionMessage]]]:
        inbox, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_stream, outbox = anyio.create_memory_object_stream[SessionMessage](0)
        # The proxy from the environment (HTTPS_PROXY, NO_PROXY), as httpx2 honoured it: looked up once, since
        # aiohttp's trust_env looks it up (and .netrc) in a thread on every request, half a millisecond each.
        with contextlib.suppress(LookupError):
            self._proxy, self._proxy_auth = await anyio.to_thread.run_sync(get_env_proxy_for_url, self.url)
        connector = aiohttp.TCPConnector(ssl=_tls(), keepalive_timeout=KEEPALIVE_SECONDS)
        http = aiohttp.ClientSession(connector=connector, headers=self.headers, timeout=self.timeout)
        async with inbox, http:
            self._http, self._inbox = http, inbox
            try:
                async with anyio.create_task_group() as tasks:
                    self._tasks = tasks
                    tasks.start_soon(self._send_all, outbox)
                    try:
                        yield read_stream, write_stream
                    finally:
                        await self._terminate()
                        tasks.cancel_scope.cancel()
            finally:
                self._http = self._inbox = self._tasks = None

    # --- from the session to the server ------------------------------------------------------------------------

    async def _send_all(self, outbox: MemoryObjectReceiveStream[SessionMessage]) -> None:
        async with outbox:
            async for item in outbox:
                message = item.message
                metadata = item.metadata if isinstance(item.metadata, ClientMessageMetadata) else None
                headers = metadata.headers if metadata is not None and metadata.headers else {}
                if isinstance(message, JSONRPCRequest) and message.method == "initialize":
                    self.protocol_version = None  # negotiated by this request: nothing to claim yet
                elif version := headers.get(VERSION_HEADER):
                    self.protocol_version = version
                if isinstance(message, JSONRPCRequest):
                    assert self._tasks is not None
                    self._tasks.start_soon(self._request, message, headers)
                else:  # a notification, or our answer to the server's request: in order, answered 202
                    await self._one_way(message, headers)
                    if isinstance(message, JSONRPCNotification) and message.method == "notifications/initialized":
                        assert self._tasks is not None
                        self._tasks.start_soon(self._listen)

    def _request_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"accept": ACCEPT, "content-type": "application/json"}
        if self.session_id:
            headers[SESSION_HEADER] = self.session_id
        if self.protocol_version:
            headers[VERSION_HEADER] = self.protocol_version
        if extra:
            headers.update(extra)
        return headers

    @asynccontextmanager
    async def _open(self, method: str, headers: Mapping[str, str],
                    body: bytes | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response to ``method`` on the endpoint, after redirects within its origin that keep the method."""
        assert self._http is not None
        url = self.url
        for _ in range(MAX_REDIRECTS):
            response = await self._http.request(method, url, data=body, headers=headers, allow_redirects=False,
                                                proxy=self._proxy, proxy_auth=self._proxy_auth)
            location = response.headers.get("location") if response.status in (307, 308) else None
            target = url.join(URL(location)) if location else None
            if target is None or target.origin() != url.origin():
                break
            await response.read()  # a small body: read, so its connection is reused
            response.release()
            url = target
        try:
            yield response
        finally:
            response.release()

    async def _one_way(self, message: JSONRPCNotification | JSONRPCResponse | JSONRPCError,
                       extra: Mapping[str, str]) -> None:
        try:
            async with self._open("POST", self._request_headers(extra), _encode(message)) as response:
                await response.read()
                if response.status >= 400:
                    logger.warning("MCP server %s answered %s with HTTP %d", self.url, _describe(message),
                                   response.status)
        except Exception as exc:  # a lost notification: the session goes on; its requests find out
            logger.warning("Sending %s to MCP server %s failed: %s", _describe(message), self.url, exc)

    async def _request(self, message: JSONRPCRequest, extra: Mapping[str, str]) -> None:
        request_id = message.id
        try:
            async with self._open("POST", self._request_headers(extra), _encode(message)) as response:
                status, kind = response.status, response.content_type
                if 300 <= status < 400:
                    await self._fail(request_id, INVALID_REQUEST,
                                     f"the server redirected to {response.headers.get('location')!r}, which was not"
                                     " followed: use that URL as the endpoint if it is the intended server")
                elif status >= 400:
                    await self._refused(request_id, response)
                elif status == 202 or kind not in ("application/json", "text/event-stream"):
                    await self._fail(request_id, INVALID_REQUEST,
                                     f"the server answered a request with HTTP {status} ({kind or 'no body'})")
                else:
                    if message.method == "initialize" and (session_id := response.headers.get(SESSION_HEADER)):
                        self.session_id = session_id
                    if kind == "application/json":
                        await self._answer_from_body(request_id, await response.read())
                    else:
                        await self._answer_from_events(request_id, response)
        except EventTooLarge as exc:
            await self._fail(request_id, INTERNAL_ERROR, str(exc))
        except Exception as exc:  # connection refused or lost, read timeout, a broken stream: a fresh session may do
            await self._fail(request_id, CONNECTION_CLOSED, f"{type(exc).__name__}: {exc}".rstrip(": "))

    async def _refused(self, request_id: RequestId, response: aiohttp.ClientResponse) -> None:
        body = await response.read()
        if response.status == 404 and self.session_id is not None:
            # The server no longer knows the session (restarted, or expired it): lost, like a dropped connection.
            await self._fail(request_id, CONNECTION_CLOSED, f"the server no longer knows MCP session "
                                                            f"{self.session_id} (HTTP 404)")
            return
        if response.content_type == "application/json":
            try:
                parsed = jsonrpc_message_adapter.validate_json(body, by_name=False)
            except ValidationError:
                parsed = None
            if isinstance(parsed, JSONRPCError):  # the server's own words, under this request's id
                await self._deliver(JSONRPCError(jsonrpc="2.0", id=request_id, error=parsed.error))
                return
        if response.status == 404:  # no session yet: the HTTP spelling of "no such method" (a legacy server)
            await self._fail(request_id, METHOD_NOT_FOUND, "Not Found")
        else:
            await self._fail(request_id, INTERNAL_ERROR, f"the server answered HTTP {response.status}")

    async def _answer_from_body(self, request_id: RequestId, body: bytes) -> None:
        try:
            message = jsonrpc_message_adapter.validate_json(body, by_name=False)
        except ValidationError as exc:
            await self._fail(request_id, PARSE_ERROR, f"the server's JSON answer is not JSON-RPC: {exc}"[:500])
            return
        await self._deliver(message)

    async def _answer_from_events(self, request_id: RequestId, response: aiohttp.ClientResponse) -> None:
        parser = EventParser(self.max_event_bytes)
        if await self._relay(parser, response, request_id):
            return
        for _ in range(MAX_RESUMES):
            if parser.last_id is None:
                break
            await anyio.sleep((parser.retry_ms if parser.retry_ms is not None else RESUME_DELAY_MS) / 1000)
            logger.info("Resuming the event stream of MCP request %r after event %s", request_id, parser.last_id)
            try:
                async with self._open("GET", self._request_headers({"last-event-id": parser.last_id})) as resumed:
                    if resumed.status == 200 and resumed.content_type == "text/event-stream" \
                            and await self._relay(parser, resumed, request_id):
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
        await self._fail(request_id, CONNECTION_CLOSED, "the server's event stream ended without an answer")

    async def _relay(self, parser: EventParser, response: aiohttp.ClientResponse, request_id: RequestId) -> bool:
        """Hand on the stream's messages until the answer to ``request_id``; True once it came. Reads on to
        the end of the stream (briefly) so that its connection goes back to the pool."""
        async for chunk in response.content.iter_any():
            for event in parser.feed(chunk):
                if event.event == "message" and await self._deliver_event(event, request_id):
                    with anyio.move_on_after(DRAIN_SECONDS):
                        try:
                            async for _ in response.content.iter_any():
                                pass
                        except Exception:  # answered already: the connection is dropped instead of reused
                            pass
                    return True
        return False

    async def _deliver_event(self, event: ServerEvent, request_id: RequestId | None) -> bool:
        """Hand on one event's message; True if it is the answer to ``request_id``."""
        try:
            message = jsonrpc_message_adapter.validate_json(event.data, by_name=False)
        except ValidationError as exc:
            if request_id is None:
                await self._deliver(exc)
                return False
            await self._fail(request_id, PARSE_ERROR, f"the server sent an event that is not JSON-RPC: {exc}"[:500])
            return True
        if request_id is not None and isinstance(message, JSONRPCResponse | JSONRPCError):
            message.id = request_id  # an answer on this request's stream is this request's, as the SDK reads it
            await self._deliver(message)
            return True
        await self._deliver(message)
        return False

    async def _listen(self) -> None:
        """The GET stream: what the server sends outside any request; reconnected when it ends."""
        failures = 0
        last_id: str | None = None
        while failures < MAX_RESUMES and self.session_id is not None:
            parser = EventParser(self.max_event_bytes)
            try:
                headers = self._request_headers({"last-event-id": last_id} if last_id else None)
                async with self._open("GET", headers) as response:
                    if response.status != 200 or response.content_type != "text/event-stream":
                        return  # the server offers none (405)
                    async for chunk in response.content.iter_any():
                        for event in parser.feed(chunk):
                            if event.event == "message":
                                await self._deliver_event(event, None)
                failures = 0
            except Exception as exc:  # the session goes on without it; its requests still have their answers
                logger.debug("The GET stream of MCP server %s failed: %s", self.url, exc)
                failures += 1
            last_id = parser.last_id or last_id
            await anyio.sleep((parser.retry_ms if parser.retry_ms is not None else RESUME_DELAY_MS) / 1000)

    async def _terminate(self) -> None:
        if self.session_id is None:
            return
        with anyio.move_on_after(CLOSE_SECONDS):
            try:
                async with self._open("DELETE", self._request_headers()) as response:
                    await response.read()
            except Exception as exc:  # the server ends the session on its own in time
                logger.debug("Ending MCP session %s at %s failed: %s", self.session_id, self.url, exc)

    # --- from the server to the session ------------------------------------------------------------------------

    async def _deliver(self, item: SessionMessage | JSONRPCRequest | JSONRPCNotification | JSONRPCResponse
                       | JSONRPCError | Exception) -> None:
        if self._inbox is None:
            return
        if not isinstance(item, SessionMessage | Exception):
            item = SessionMessage(item)
        try:
            await self._inbox.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            logger.debug("An MCP message from %s arrived after its session closed", self.url)

    async def _fail(self, request_id: RequestId, code: int, message: str) -> None:
        await self._deliver(JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message)))


def _encode(message: JSONRPCRequest | JSONRPCNotification | JSONRPCResponse | JSONRPCError) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_unset=True).encode()


def _describe(message: JSONRPCNotification | JSONRPCResponse | JSONRPCError) -> str:
    return getattr(message, "method", None) or f"the answer to request {getattr(message, 'id', '?')!r}"
