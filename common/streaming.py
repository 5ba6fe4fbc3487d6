"""Streamed HTTP bodies that stay streamed under ASGI (exports: audit events, usage records)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest


def streamed_body(request: Any, chunks: Iterator[str]) -> Iterator[str] | AsyncIterator[str]:
    """``chunks`` as a StreamingHttpResponse body for ``request``: under ASGI a plain iterator would be read whole
    before the first byte is sent, so there each chunk is produced in the request's thread, one at a time."""
    return _async(chunks) if isinstance(request, ASGIRequest) else chunks


async def _async(chunks: Iterator[str]) -> AsyncIterator[str]:
    done = object()
    while (chunk := await sync_to_async(next, thread_sensitive=True)(chunks, done)) is not done:
        yield chunk  # type: ignore[misc]
