"""No secrets in logs: the redaction rules, the filter on every handler of the process, real failing requests
through the configured handler, and Django's error reports."""

from __future__ import annotations

import io
import logging
import sys
import uuid

import pytest
from django.db import connection
from django.test import RequestFactory
from django.views import debug

from common.log_redaction import SecretRedactingFilter, SecretSafeExceptionReporter, \
    SecretSafeExceptionReporterFilter, redact
from conftest import bearer, unique_slug
from tenants import db_roles, services

KEY = "agp_0123456789ab_" + "Kx9" * 13 + "Q"
OPERATOR_KEY = "agpop_fedcba987654_" + "Op7" * 13 + "Z"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrZXktaWQiLCJ0aWQiOiJ0ZW5hbnQifQ.aGVyZS1pcy10aGUtc2lnbmF0dXJl"


@pytest.mark.parametrize("text, expected", [
    (f"Authorization: Bearer {KEY}", "Authorization: Bearer agp_0123456789ab_[REDACTED]"),
    (f"operator {OPERATOR_KEY} failed", "operator agpop_fedcba987654_[REDACTED] failed"),
    (f"GET /v1/runs/1/stream?access_token={JWT}&after=3", "GET /v1/runs/1/stream?access_token=[REDACTED]&after=3"),
    (f"token {JWT}", "token [REDACTED]"),
    ("Authorization: Bearer opaque-Token-0123456789", "Authorization: Bearer [REDACTED]"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZDEyMw==", "Authorization: Basic [REDACTED]"),
    ('{"name": "bob", "password": "hunter2!"}', '{"name": "bob", "password": "[REDACTED]"}'),
    ("login password=hunter2 user=bob", "login password=[REDACTED] user=bob"),
    ("client_secret: s3cr3t-value", "client_secret: [REDACTED]"),
    ("postgres://agent:pa55word@db:5432/agentplane", "postgres://agent:[REDACTED]@db:5432/agentplane"),
    ("LLM key sk-proj-abcdefghijklmnop1234", "LLM key [REDACTED]"),
    ("stripe sk_live_51Habcdefghijk whsec_abcdefghijklmn", "stripe [REDACTED] [REDACTED]"),
    ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----",
     "-----BEGIN PRIVATE KEY-----[REDACTED]-----END PRIVATE KEY-----"),
    ("agp_truncated-key-material", "agp_[REDACTED]"),
])
def test_secrets_are_redacted(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "The bearer token is not a valid api key.",
    "This stream token expired; ask POST /v1/runs/{id}/stream-token for a new one.",
    "Run 8f2c completed in 3 steps, max_tokens=1000, 120 tokens: ok",
    "Unauthorized: /v1/tenant",
])
def test_ordinary_messages_are_left_alone(text):
    assert redact(text) == text


def test_our_handlers_redact_and_so_does_any_other_handler():
    # given: the handlers settings.LOGGING configured carry the filter
    for handler in logging.getLogger().handlers:
        if not type(handler).__module__.startswith("_pytest"):  # pytest's own capture handlers
            assert any(isinstance(f, SecretRedactingFilter) for f in handler.filters), f"{handler!r} does not redact"
    # and a handler a library adds on its own (like litellm's, which writes straight to stdout), without a filter
    stream = io.StringIO()
    library_logger = logging.getLogger("some_library")
    library_logger.addHandler(handler := logging.StreamHandler(stream))
    library_logger.propagate = False
    try:
        # when
        library_logger.warning("retrying with api_key=%s and %s", "sk-proj-abcdefghijklmnop1234", KEY)
        try:
            raise RuntimeError(f"rejected {JWT}")
        except RuntimeError:
            library_logger.exception("call failed")
    finally:
        library_logger.removeHandler(handler)
    # then
    output = stream.getvalue()
    assert "retrying with api_key=[REDACTED] and agp_0123456789ab_[REDACTED]" in output
    assert "RuntimeError: rejected [REDACTED]" in output
    assert "abcdefghijklmnop1234" not in output and JWT not in output and KEY not in output


@pytest.fixture
def console_output():
    """What the configured console handler (settings.LOGGING) writes."""
    handler = next(h for h in logging.getLogger().handlers if h.name == "console")
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield buffer
    handler.setStream(previous or sys.stderr)


def test_failing_requests_and_their_errors_leave_no_secret_in_the_log(client, tenant_a, console_output):
    # given: a tenant whose schema vanished (a real 500 on any of its requests), and requests carrying secrets
    broken = services.tenant_provision(name="Broken", slug=unique_slug("broken"), sla_tier="standard", domains=[],
                                       actor=services.Actor(kind="system", id="t"))
    with db_roles.owner_context(), connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA "{broken.tenant.schema_name}" CASCADE')
    broken_key = broken.admin_key.plaintext
    # when
    assert client.get("/v1/tenant", **bearer(KEY)).status_code == 401
    assert client.get("/v1/platform/tenants", **bearer(OPERATOR_KEY)).status_code == 401
    assert client.get("/v1/pings", **bearer(broken_key)).status_code == 500
    # and code that logs what it should not (the filter is the last line of defence)
    logging.getLogger("data_plane.example").error("calling %s with Authorization: Bearer %s", "mcp", KEY)
    try:
        raise RuntimeError(f"provider refused key {broken_key}")
    except RuntimeError:
        logging.getLogger("data_plane.example").exception("model call failed")
    # then
    output = console_output.getvalue()
    assert "Unauthorized: /v1/tenant" in output and "Internal Server Error: /v1/pings" in output
    assert "provider refused key agp_" in output and "Bearer agp_0123456789ab_[REDACTED]" in output
    for secret in (KEY.rsplit("_", 1)[1], OPERATOR_KEY.rsplit("_", 1)[1], JWT, broken_key.rsplit("_", 1)[1]):
        assert secret not in output


def test_a_failing_stream_token_leaves_no_secret_in_the_log(client, db, console_output):
    assert client.get(f"/v1/runs/{uuid.uuid4()}/stream", {"access_token": JWT}).status_code == 401
    output = console_output.getvalue()
    assert "Unauthorized: /v1/runs/" in output
    assert JWT.split(".")[2] not in output


def test_django_error_reports_hide_credentials():
    # given: a request with a key in its header and a stream token in its query, failing in code that holds a key
    request = RequestFactory().get("/v1/runs/1/stream", {"access_token": JWT}, HTTP_AUTHORIZATION=f"Bearer {KEY}")

    def authenticate(raw: str) -> None:
        raise ValueError("no such key")

    try:
        authenticate(KEY)
    except ValueError:
        exc_info = sys.exc_info()
    # when: the report Django mails or logs for a 500
    reporter = SecretSafeExceptionReporter(request, *exc_info)
    assert isinstance(reporter.filter, SecretSafeExceptionReporterFilter)  # DEFAULT_EXCEPTION_REPORTER_FILTER
    report = reporter.get_traceback_text() + reporter.get_traceback_html()
    # then: the reporter Django uses (DEFAULT_EXCEPTION_REPORTER) is ours
    assert debug.get_exception_reporter_class(request) is SecretSafeExceptionReporter
    assert "ValueError" in report
    assert KEY.rsplit("_", 1)[1] not in report
    assert JWT not in report and JWT.split(".")[2] not in report
