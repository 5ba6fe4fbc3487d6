"""One base error for the whole product; each bounded context subclasses it in its own errors.py.

The DRF exception handler in ``common.problems`` turns any ``AppError`` into an RFC 9457 problem
document with ``http_status``, so views never build error responses by hand.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """A failure we expect and can explain to the caller."""

    code: str = "error"
    http_status: int = 400
    title: str = "Request failed"

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class InvalidInput(AppError):
    code = "invalid"
    http_status = 400
    title = "Invalid input"


class NotAuthenticated(AppError):
    code = "not_authenticated"
    http_status = 401
    title = "Not authenticated"


class PermissionDenied(AppError):
    code = "permission_denied"
    http_status = 403
    title = "Permission denied"


class NotFound(AppError):
    """Not found, or belongs to another tenant: the two are never told apart."""

    code = "not_found"
    http_status = 404
    title = "Not found"


class Conflict(AppError):
    code = "conflict"
    http_status = 409
    title = "Conflict with the current state"


class TransientError(AppError):
    """A failure that is worth retrying (network blip, broker restart, provider 5xx)."""

    code = "transient"
    http_status = 503
    title = "Temporarily unavailable"
