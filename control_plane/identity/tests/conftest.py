from __future__ import annotations

from collections.abc import Iterator

import pytest

from control_plane.identity.throttling import login_limiter


@pytest.fixture(autouse=True)
def _no_failed_sign_ins_counted() -> Iterator[None]:
    """Each test starts with no failed sign-ins counted (the counters live in the tests' Redis database)."""
    def clear() -> None:
        login_limiter.cache_clear()
        limiter = login_limiter()
        for key in limiter.client.scan_iter(f"{limiter.prefix}:*"):
            limiter.client.delete(key)
    clear()
    yield
    clear()
