"""The supported server (`python -m control_plane.serve`) as a real process: TLS 1.3 only, security headers,
request and websocket message limits, and no secrets in its logs."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django_tenants.utils import schema_context
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import destroy_tenant, provision_for_test
from control_plane.tls import self_signed_certificate_write
from data_plane.tests.factories import PingFactory
from tests.processes import LOG_DIR, free_port, log_tail, process_env, running, wait_for

pytestmark = [pytest.mark.server]

MAX_REQUEST_BYTES = 4096
MAX_UPLOAD_REQUEST_BYTES = 65536
WEBSOCKET_MAX_MESSAGE_BYTES = 4096
A_KEY = "agp_0123456789ab_" + "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr"
A_JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJub2JvZHkiLCJ0aWQiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZS14eXo"


@dataclass(frozen=True)
class TlsServer:
    url: str
    host: str
    port: int
    cert: Path
    log: Path


def tls13_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


@pytest.fixture(scope="module")
def tls_server(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[TlsServer]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    self_signed_certificate_write(cert_path=cert, key_path=key)
    port = free_port()
    log = LOG_DIR / "serve-tls.log"
    with django_db_blocker.unblock():
        env = process_env(TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key), MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES),
                          MAX_UPLOAD_REQUEST_BYTES=str(MAX_UPLOAD_REQUEST_BYTES),
                          WEBSOCKET_MAX_MESSAGE_BYTES=str(WEBSOCKET_MAX_MESSAGE_BYTES), LOG_LEVEL="INFO")
    server = TlsServer(url=f"https://127.0.0.1:{port}", host="127.0.0.1", port=port, cert=cert, log=log)

    def answers() -> bool:
        try:
            return httpx.get(f"{server.url}/healthz", verify=tls13_context(cert), timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    with running([sys.executable, "-m", "control_plane.serve", "--host", "127.0.0.1", "--port", str(port)],
                 log_path=log, env=env):
        wait_for(answers, timeout=60, what=f"the TLS server to answer; log:\n{log_tail(log)}", interval=0.2)
        yield server


# --- TLS 1.3 only ---------------------------------------------------------------------------------------

def test_a_tls12_client_is_refused_in_the_handshake(tls_server):
    # given: a client that speaks at most TLS 1.2
    context = ssl.create_default_context(cafile=str(tls_server.cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    # when / then: the handshake fails (the server offers no TLS 1.2)
    with socket.create_connection((tls_server.host, tls_server.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError) as failure:
            context.wrap_socket(raw, server_hostname="localhost")
    assert "VERSION" in failure.value.reason.upper() or "ALERT" in failure.value.reason.upper()


def test_a_tls13_client_gets_healthz_with_hsts_and_security_headers(tls_server):
    # given: a TLS 1.3 client that trusts the server's certificate
    with socket.create_connection((tls_server.host, tls_server.port), timeout=5) as raw:
        with tls13_context(tls_server.cert).wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
    # when
    response = httpx.get(f"{tls_server.url}/healthz", verify=tls13_context(tls_server.cert))
    # then
    assert response.status_code == 200
    assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert response.headers["content-security-policy"] == ("default-src 'none'; frame-ancestors 'none'; "
                                                           "base-uri 'none'; form-action 'none'")
    assert "camera=()" in response.headers["permissions-policy"]
    assert response.headers["cache-control"] == "no-store"


def test_a_wss_handshake_over_tls13_reaches_the_consumer(tls_server):
    async def scenario() -> tuple[dict, int]:
        url = f"wss://127.0.0.1:{tls_server.port}/v1/pings/{uuid.uuid4()}/events"
        async with connect(url, ssl=tls13_context(tls_server.cert), server_hostname="localhost",
                           additional_headers={"Authorization": "Bearer not-a-key"}, open_timeout=10) as ws:
            message = json.loads(await ws.recv())
            await ws.wait_closed()
            return message, ws.close_code

    message, close_code = asyncio.run(scenario())
    assert message["code"] == "invalid_credentials"
    assert close_code == 4401


# --- Security headers on API responses and the reference pages ----------------------------------------

def test_api_errors_carry_no_store_and_the_strict_policy(tls_server):
    response = httpx.get(f"{tls_server.url}/v1/tenant", headers={"Authorization": "Bearer nope"},
                         verify=tls13_context(tls_server.cert))
    assert response.status_code == 401
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["strict-transport-security"].startswith("max-age=31536000")


@pytest.mark.parametrize("page", ["/v1/docs", "/v1/redoc"])
def test_the_reference_pages_load_only_same_origin_scripts_that_exist(tls_server, page):
    # given / when
    with httpx.Client(base_url=tls_server.url, verify=tls13_context(tls_server.cert)) as client:
        response = client.get(page)
        # then: the page policy lets same-origin scripts, styles and Redoc's blob worker run, nothing else
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "worker-src 'self' blob:" in policy
        assert "frame-ancestors 'none'" in policy
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", response.text, flags=re.S)
        assert scripts
        for attributes, inline in scripts:
            assert inline.strip() == "", f"an inline script the policy would block: {inline[:80]!r}"
            source = re.search(r'src="([^"]+)"', attributes).group(1)
            assert source.startswith("/"), f"a script from another origin: {source}"
            asset = client.get(source)
            assert asset.status_code == 200, source
            assert "javascript" in asset.headers["content-type"]
        assert client.get("/v1/openapi.json").status_code == 200


def test_the_sign_in_page_may_post_its_form_to_this_origin_only(tls_server):
    # when
    response = httpx.get(f"{tls_server.url}/accounts/login/", verify=tls13_context(tls_server.cert))
    # then: a browser submits the sign-in form (form-action 'none' would block it) and nothing else runs
    assert response.status_code == 200 and 'name="password"' in response.text
    policy = response.headers["content-security-policy"]
    assert policy.endswith("form-action 'self'") and "script-src 'self'" in policy


# --- Request size limits --------------------------------------------------------------------------------

def raw_tls_exchange(server: TlsServer, request: bytes, *, chunks: list[bytes] = (), timeout: float = 5) -> bytes:
    """Send a request head (and body chunks), then read the answer until the server closes."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as raw:
        with tls13_context(server.cert).wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request)
            for chunk in chunks:
                tls.sendall(chunk)
            received = b""
            try:
                while data := tls.recv(65536):
                    received += data
            except (ssl.SSLError, ConnectionResetError):
                pass
            return received


def test_a_declared_oversized_json_body_is_refused_before_it_is_sent(tls_server):
    # given: a request announcing 100 MB, whose body is never sent
    head = (b"POST /v1/api-keys HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
    # when
    answer = raw_tls_exchange(tls_server, head)
    # then: a 413 naming the limit, at once (no 100 Continue first)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Content Too Large"
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["code"] == "request_too_large"
    assert body["limit_bytes"] == MAX_REQUEST_BYTES
    assert f"larger than {MAX_REQUEST_BYTES} bytes" in body["detail"]


def test_a_chunked_body_is_refused_once_it_passes_the_limit(tls_server):
    # given: a chunked body whose terminating chunk never comes
    head = (b"POST /v1/api-keys HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (2000, b"x" * 2000)
    # when: three chunks (6000 bytes) pass the 4096-byte limit
    answer = raw_tls_exchange(tls_server, head, chunks=[chunk, chunk, chunk])
    # then
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["limit_bytes"] == MAX_REQUEST_BYTES


def test_uploads_keep_their_larger_limit(tls_server):
    # given: a body over the JSON limit but under the upload limit, to the upload endpoint
    files = {"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 10_000, "image/png")}
    with httpx.Client(base_url=tls_server.url, verify=tls13_context(tls_server.cert)) as client:
        # when
        upload = client.post("/v1/attachments", files=files, headers={"Authorization": "Bearer nope"})
        json_call = client.post("/v1/api-keys", content=b"{" + b" " * 10_000 + b"}",
                                headers={"Content-Type": "application/json"})
        too_big = client.post("/v1/attachments", files={"file": ("a.png", b"\0" * 70_000, "image/png")})
    # then: it passes the size check and reaches authentication; the same size to the JSON API does not
    assert upload.status_code == 401
    assert json_call.status_code == 413
    assert too_big.status_code == 413
    assert too_big.json()["limit_bytes"] == MAX_UPLOAD_REQUEST_BYTES


@pytest.fixture
def committed_tenant(committed):
    provisioned = provision_for_test("transport")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def test_an_oversized_websocket_message_gets_an_error_frame_and_close_4413(tls_server, committed_tenant):
    # given: a live ping stream
    with schema_context(committed_tenant.schema):
        ping = PingFactory()

    async def scenario() -> tuple[list[dict], int]:
        url = f"wss://127.0.0.1:{tls_server.port}/v1/pings/{ping.id}/events"
        messages = []
        async with connect(url, ssl=tls13_context(tls_server.cert), server_hostname="localhost",
                           additional_headers={"Authorization": f"Bearer {committed_tenant.key}"}) as ws:
            messages.append(json.loads(await ws.recv()))  # the ping's state
            # when: a message over WEBSOCKET_MAX_MESSAGE_BYTES
            await ws.send(json.dumps({"type": "hello", "text": "x" * (WEBSOCKET_MAX_MESSAGE_BYTES + 10)}))
            try:
                async with asyncio.timeout(10):
                    async for raw in ws:
                        messages.append(json.loads(raw))
            except ConnectionClosed:
                pass
            await ws.wait_closed()
            return messages, ws.close_code

    messages, close_code = asyncio.run(scenario())
    # then
    assert messages[0]["type"] == "ping.state"
    assert messages[-1]["code"] == "message_too_large"
    assert f"at most {WEBSOCKET_MAX_MESSAGE_BYTES} bytes" in messages[-1]["message"]
    assert close_code == 4413


# --- No secrets in the server's logs -------------------------------------------------------------------

def test_failing_requests_leave_no_secret_in_the_server_log(tls_server):
    # given: failing requests that carry secrets where servers log things (the URL, headers)
    with httpx.Client(base_url=tls_server.url, verify=tls13_context(tls_server.cert)) as client:
        assert client.get("/v1/tenant", headers={"Authorization": f"Bearer {A_KEY}"}).status_code == 401
        assert client.get(f"/v1/runs/{uuid.uuid4()}/stream", params={"access_token": A_JWT}).status_code == 401
        assert client.get("/v1/platform/tenants",
                          headers={"Authorization": "Bearer agpop_0123456789ab_" + "P" * 40}).status_code == 401
        assert client.get(f"/v1/nowhere?password=hunter2-{A_KEY}").status_code == 404
    # when
    wait_for(lambda: "/v1/nowhere" in tls_server.log.read_text(), timeout=10, what="the access log line")
    log = tls_server.log.read_text()
    # then: the requests are logged, their secrets are not
    assert "/v1/runs/" in log and "access_token=[REDACTED]" in log
    for secret in ("S3cr3tS3cr3t", A_JWT, A_JWT.split(".")[2], "P" * 40, "hunter2"):
        assert secret not in log
