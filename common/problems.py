"""RFC 9457 problem details for every error the API returns: DRF's, ours, Django's 404/500.

Shape: ``{"type", "title", "status", "detail", "code", "errors"?, ...extra}`` served as
``application/problem+json``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from common.errors import AppError

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://docs.agentplane.dev/problems/"

_DRF_CODES: dict[type[drf_exceptions.APIException], str] = {
    drf_exceptions.ValidationError: "invalid",
    drf_exceptions.ParseError: "malformed_request",
    drf_exceptions.AuthenticationFailed: "not_authenticated",
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "rate_limited",
}


def problem(
    *, status: int, code: str, detail: str, title: str | None = None, errors: Any = None, **extra: Any
) -> dict[str, Any]:
    """Build a problem document; ``errors`` carries per-field messages for invalid input."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return body


def _validation_detail(errors: Any) -> str:
    """Turn DRF's nested error dict into one sentence that names the fields to fix."""
    if isinstance(errors, dict):
        parts = []
        for field, messages in errors.items():
            text = "; ".join(str(m) for m in messages) if isinstance(messages, list) else str(messages)
            parts.append(text if field == "non_field_errors" else f"{field}: {text}")
        return "Fix these fields and retry: " + " | ".join(parts)
    if isinstance(errors, list):
        return "; ".join(str(e) for e in errors)
    return str(errors)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF EXCEPTION_HANDLER: every error becomes a problem document, unknown ones a logged 500."""
    headers: dict[str, str] = {}
    if isinstance(exc, AppError):
        body = problem(status=exc.http_status, code=exc.code, title=exc.title, detail=exc.message, **exc.extra)
        status = exc.http_status
        if status == 429 and "retry_after" in exc.extra:  # every rate limit says when to come back
            headers["Retry-After"] = str(int(exc.extra["retry_after"]))
    elif isinstance(exc, RequestDataTooBig):
        status = 413
        body = problem(status=413, code="request_too_large",
                       detail=f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes; "
                       "send less data per request.")
    elif isinstance(exc, SuspiciousOperation):
        status = 400
        body = problem(status=400, code="bad_request", detail="The request was refused as malformed; check it.")
    elif isinstance(exc, DjangoValidationError):
        body = problem(status=400, code="invalid", detail="; ".join(exc.messages))
        status = 400
    elif isinstance(exc, Http404):
        body = problem(status=404, code="not_found", detail=str(exc) or "Not found.")
        status = 404
    elif isinstance(exc, DjangoPermissionDenied):
        body = problem(status=403, code="permission_denied", detail=str(exc) or "Permission denied.")
        status = 403
    elif isinstance(exc, drf_exceptions.APIException):
        status = exc.status_code
        code = _DRF_CODES.get(type(exc), exc.default_code if isinstance(exc.default_code, str) else "error")
        if isinstance(exc, drf_exceptions.ValidationError):
            body = problem(status=status, code="invalid", detail=_validation_detail(exc.detail), errors=exc.detail)
        else:
            body = problem(status=status, code=code, detail=str(exc.detail))
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
    else:
        logger.exception("Unhandled error in %s", context.get("view").__class__.__name__, exc_info=exc)
        body = problem(
            status=500,
            code="internal_error",
            detail="An unexpected error occurred; it has been logged. Retry later, or contact support "
            "with the time of the request.",
        )
        status = 500
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="agentplane"')
    set_rollback()
    return Response(body, status=status, headers=headers, content_type=PROBLEM_CONTENT_TYPE)


def json_problem(status: int, code: str, detail: str) -> JsonResponse:
    """A problem document as a plain Django response (for views outside DRF)."""
    return JsonResponse(
        problem(status=status, code=code, detail=detail), status=status, content_type=PROBLEM_CONTENT_TYPE
    )


def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_problem(400, "bad_request", "The request could not be understood; check its syntax.")


def handler403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_problem(403, "permission_denied", "You are not allowed to access this resource.")


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_problem(
        404, "not_found", f"No resource at {request.path}. The API reference is at /v1/docs."
    )


def handler500(request: HttpRequest) -> JsonResponse:
    return json_problem(
        500, "internal_error", "An unexpected error occurred; it has been logged. Retry later."
    )
