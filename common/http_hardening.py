"""ASGI middleware for every HTTP response, whatever app answers it (Django or the MCP endpoint): request body
limits and security headers. Pure ASGI, so it works under any ASGI server; ``control_plane.serve`` also
enforces the body limits inside Daphne, before a body is buffered (docs/security-transport.md).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from common.problems import PROBLEM_CONTENT_TYPE, problem

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class BodyLimits:
    """The largest request body per path: ``default`` for the JSON API, ``by_path`` for exact paths that take
    more (file uploads)."""

    default: int
    by_path: Mapping[str, int] = field(default_factory=dict)

    def for_path(self, path: str) -> int:
        return self.by_path.get(path.rstrip("/") or "/", self.default)


def too_large_problem(*, limit: int, path: str) -> bytes:
    """The 413 problem document naming the limit."""
    return json.dumps(problem(
        status=413, code="request_too_large", title="Content Too Large",
        detail=f"The request body is larger than {limit} bytes, the limit for {path}; send less data per request "
               "(or a smaller file).", limit_bytes=limit)).encode()


async def _send_too_large(send: Send, *, limit: int, path: str) -> None:
    body = too_large_problem(limit=limit, path=path)
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """413 for a body over the path's limit: at once when its Content-Length says so, or as soon as the bytes
    received pass the limit (chunked or streamed bodies); the app then sees a disconnect, never the body."""

    def __init__(self, app: App, *, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limit = self.limits.for_path(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await _send_too_large(send, limit=limit, path=path)
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # whatever the app answers to a body it never got whole; the 413 follows
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if too_large and not started:
            await _send_too_large(send, limit=limit, path=path)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# --- Security headers ----------------------------------------------------------------------------------

# JSON and everything else that is not a page: nothing may load, frame or submit anywhere.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# Our HTML pages (the API reference: Swagger UI and Redoc from our own static files; the portal's sign-in,
# invitation and OAuth consent pages): scripts and the schema from this origin only; inline styles (both
# reference pages set style attributes), data: images and Redoc's blob: worker; forms post to this origin.
def page_csp(*, form_targets: tuple[str, ...] = ()) -> str:
    """The policy of an HTML page; ``form_targets`` are further origins a form's submission may end at (the
    OAuth consent form redirects to the client's redirect URI, and browsers check redirects of a submission)."""
    form_action = " ".join(("'self'", *form_targets))
    return ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; manifest-src 'self'; "
            f"frame-ancestors 'none'; base-uri 'none'; form-action {form_action}")


PAGE_CSP = page_csp()
PERMISSIONS_POLICY = ("accelerometer=(), autoplay=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), "
                      "magnetometer=(), microphone=(), midi=(), payment=(), usb=(), xr-spatial-tracking=()")


@dataclass(frozen=True)
class SecurityHeaderSettings:
    hsts_seconds: int = 0
    hsts_include_subdomains: bool = True
    hsts_preload: bool = False
    # the X-Forwarded-Proto of a TLS-terminating proxy says whether the client's connection was https
    trust_forwarded_proto: bool = False
    referrer_policy: str = "no-referrer"
    static_prefix: str = "/static/"


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response (those an app set itself are kept, except that API
    responses are always ``Cache-Control: no-store``: they carry credentials or tenant data)."""

    def __init__(self, app: App, *, settings: SecurityHeaderSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_static = scope.get("path", "").startswith(self.settings.static_prefix)
        is_secure = scope.get("scheme") == "https" or (
            self.settings.trust_forwarded_proto and _header(scope, b"x-forwarded-proto") == b"https")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._headers(list(message.get("headers", [])),
                                                                is_static=is_static, is_secure=is_secure)}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _headers(self, headers: list[tuple[bytes, bytes]], *, is_static: bool,
                 is_secure: bool) -> list[tuple[bytes, bytes]]:
        present = {name.lower() for name, _ in headers}
        content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
        wanted: dict[bytes, str] = {
            b"x-content-type-options": "nosniff",
            b"x-frame-options": "DENY",
            b"referrer-policy": self.settings.referrer_policy,
            b"cross-origin-opener-policy": "same-origin",
            b"permissions-policy": PERMISSIONS_POLICY,
            b"content-security-policy": PAGE_CSP if content_type.startswith(b"text/html") else API_CSP,
        }
        if is_secure and self.settings.hsts_seconds > 0:
            value = f"max-age={self.settings.hsts_seconds}"
            value += "; includeSubDomains" if self.settings.hsts_include_subdomains else ""
            value += "; preload" if self.settings.hsts_preload else ""
            wanted[b"strict-transport-security"] = value
        if not is_static:
            headers = [(name, value) for name, value in headers if name.lower() != b"cache-control"]
            present.discard(b"cache-control")
            wanted[b"cache-control"] = "no-store"
        return headers + [(name, value.encode()) for name, value in wanted.items() if name not in present]


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None
