"""Serve the platform (HTTP and websockets) with Daphne: ``python -m control_plane.serve``.

With ``TLS_CERT_FILE`` and ``TLS_KEY_FILE`` set (or ``--self-signed DIR`` for local use) it serves TLS 1.3 and
nothing older; without them, plain HTTP (behind a TLS-terminating proxy). Besides what ``daphne`` does, it
refuses request bodies over their limit inside Twisted, before they are buffered (Daphne reads a whole body
before the app sees any of it), caps websocket messages, and writes its access log through Python logging,
so the secrets filter applies to it. See docs/security-transport.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daphne.server import Server  # installs the asyncio reactor: it must come before any other Twisted import
from daphne.http_protocol import HTTPFactory, WebRequest  # noqa: I001
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint

from control_plane.tls import Tls13ContextFactory, self_signed_certificate_write

if TYPE_CHECKING:
    from common.http_hardening import BodyLimits

logger = logging.getLogger("agentplane.serve")
access_logger = logging.getLogger("daphne.access")

# After a refused body the connection stays open this long, its bytes dropped, so the client can read the 413
# before the close (closing on unread bytes resets the connection, and the client may never see the answer;
# aborted, since a TLS connection would wait for its producer to finish first).
REFUSED_BODY_LINGER_SECONDS = 2.0


class LimitedWebRequest(WebRequest):
    """Daphne's request, refusing a body over its path's limit: at once when Content-Length says it is too
    large (before any 100 Continue), or as soon as the received bytes pass the limit (chunked bodies)."""

    _body_refused = False
    _body_received = 0
    _body_limit = 0
    _body_path = "/"

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted's interface)
        raw_path = getattr(self.channel, "_path", b"/").split(b"?", 1)[0]
        self._body_path = raw_path.decode("latin-1")
        self._body_limit = self.channel.factory.body_limits.for_path(self._body_path)
        if length is not None and length > self._body_limit:
            super().gotLength(0)
            self._refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self._body_refused:
            return
        self._body_received += len(data)
        if self._body_received > self._body_limit:
            self._refuse_body()
            return
        super().handleContentChunk(data)

    def process(self) -> Any:
        if self._body_refused:
            return None  # never reaches the app
        return super().process()

    def _refuse_body(self) -> None:
        from common.http_hardening import too_large_problem  # Django's settings load only once main() set them

        self._body_refused = True
        self.requestHeaders.removeHeader(b"expect")  # no 100 Continue for a body we will not read
        body = too_large_problem(limit=self._body_limit, path=self._body_path)
        head = (b"HTTP/1.1 413 Content Too Large\r\ncontent-type: application/problem+json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n"
                b"cache-control: no-store\r\nx-content-type-options: nosniff\r\n\r\n")
        transport = self.channel.transport
        transport.write(head + body)
        reactor.callLater(REFUSED_BODY_LINGER_SECONDS, transport.abortConnection)
        self.server.log_action("http", "refused", {"path": self._body_path, "status": 413,
                                                   "client": self.client_addr, "limit": self._body_limit})


class LimitedHTTPFactory(HTTPFactory):
    def __init__(self, server: Server, *, body_limits: BodyLimits) -> None:
        super().__init__(server)
        self.body_limits = body_limits

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = LimitedWebRequest
        return protocol


def access_log(protocol: str, action: str, details: dict[str, Any]) -> None:
    """Daphne's access log through Python logging (logger ``daphne.access``), so secrets in URLs (a stream
    token in ``?access_token=``) are redacted like everywhere else."""
    client = details.get("client")
    client = ":".join(str(part) for part in client) if isinstance(client, (list, tuple)) else client or "-"
    if protocol == "http" and action == "complete":
        access_logger.info('%s "%s %s" %s %s %.0fms', client, details["method"], details["path"], details["status"],
                           details.get("size") or 0, (details.get("time_taken") or 0) * 1000)
    elif protocol == "http" and action == "refused":
        access_logger.info('%s "BODY %s" 413 refused over %s bytes', client, details["path"], details["limit"])
    elif protocol == "websocket" and action in ("connected", "rejected", "disconnected"):
        access_logger.info('%s "WS%s %s"', client, action.upper(), details["path"])


def _endpoint(*, host: str, port: int, context_factory: Any) -> Any:
    if context_factory is not None:
        return SSL4ServerEndpoint(reactor, port, context_factory, interface=host)
    return (TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint)(reactor, port, interface=host)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m control_plane.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=os.environ.get("SERVE_HOST", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8443 with TLS, 8000 without)")
    parser.add_argument("--self-signed", metavar="DIR", default=None,
                        help="local use: serve TLS with a self-signed certificate kept in DIR (made if missing); "
                             "ignored when TLS_CERT_FILE is set")
    parser.add_argument("--proxy-headers", action="store_true",
                        help="behind a proxy: take the client's address from X-Forwarded-For (and port, scheme)")
    parser.add_argument("--application", default="control_plane.asgi:application")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.base")
    if args.self_signed and not os.environ.get("TLS_CERT_FILE"):
        # before the settings load: they turn HSTS and secure cookies on when TLS is
        directory = Path(args.self_signed)
        os.environ["TLS_CERT_FILE"], os.environ["TLS_KEY_FILE"] = str(directory / "cert.pem"), str(directory / "key.pem")
        if not (directory / "cert.pem").exists() or not (directory / "key.pem").exists():
            self_signed_certificate_write(cert_path=directory / "cert.pem", key_path=directory / "key.pem")
    module_name, _, attribute = args.application.partition(":")
    __import__(module_name)
    application = getattr(sys.modules[module_name], attribute)  # sets Django up, and its logging

    from django.conf import settings

    from control_plane.hardening import body_limits

    cert_file, key_file = settings.TLS_CERT_FILE, settings.TLS_KEY_FILE
    context_factory = Tls13ContextFactory(cert_file=cert_file, key_file=key_file) if cert_file else None
    port = args.port if args.port is not None else (8443 if context_factory else 8000)
    limits = body_limits()

    server = Server(
        application=application,
        endpoints=["listened to below"],  # Daphne's endpoint strings cannot carry our TLS context
        action_logger=access_log,
        proxy_forwarded_address_header="X-Forwarded-For" if args.proxy_headers else None,
        proxy_forwarded_port_header="X-Forwarded-Port" if args.proxy_headers else None,
        proxy_forwarded_proto_header="X-Forwarded-Proto" if args.proxy_headers else None,
        # the consumers answer a message over WEBSOCKET_MAX_MESSAGE_BYTES with an error frame (close 4413); one
        # over twice that is closed by the protocol (1009) before it is buffered whole
        websocket_max_message_size=2 * settings.WEBSOCKET_MAX_MESSAGE_BYTES,
        websocket_max_frame_size=2 * settings.WEBSOCKET_MAX_MESSAGE_BYTES,
    )
    server.endpoints = []

    def listen() -> None:
        factory = LimitedHTTPFactory(server, body_limits=limits)
        listening = _endpoint(host=args.host, port=port, context_factory=context_factory).listen(factory)
        listening.addCallbacks(server.listen_success, server.listen_error)
        scheme = "https (TLS 1.3 only)" if context_factory else "http"
        logger.info("Serving %s on %s:%s; request bodies up to %s bytes (uploads %s), websocket messages up to %s "
                    "bytes.", scheme, args.host, port, limits.default, max(limits.by_path.values(), default=0),
                    settings.WEBSOCKET_MAX_MESSAGE_BYTES)

    server.ready_callable = listen
    server.run()


if __name__ == "__main__":
    main()
