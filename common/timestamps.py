"""Times as the API writes them."""

from __future__ import annotations

from datetime import datetime, timezone


def format_ts(value: datetime) -> str:
    """UTC, ISO 8601, with 'Z' (as DRF writes datetimes), so streamed and listed events compare equal."""
    text = value.astimezone(timezone.utc).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
