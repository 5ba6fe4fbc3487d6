"""Failed sign-ins counted in Redis, per email and per client address, in a fixed window.

Small on purpose: ``login_limiter()`` is the one place to swap for a general authentication rate limiter.
Emails are hashed before they become Redis keys, so the counters hold no addresses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings

from control_plane.identity.errors import LoginRateLimited


@dataclass(frozen=True)
class LoginLimiter:
    client: redis.Redis
    prefix: str
    max_failures_per_email: int
    max_failures_per_address: int
    window_seconds: int

    def _keys(self, *, email: str, address: str) -> tuple[tuple[str, int], tuple[str, int]]:
        digest = hashlib.sha256(email.encode()).hexdigest()[:32]
        return ((f"{self.prefix}:email:{digest}", self.max_failures_per_email),
                (f"{self.prefix}:addr:{address}", self.max_failures_per_address))

    def check(self, *, email: str, address: str) -> None:
        """Raise LoginRateLimited (with the seconds to wait) when either counter is at its limit."""
        keys = self._keys(email=email, address=address)
        with self.client.pipeline() as pipe:
            for key, _ in keys:
                pipe.get(key)
                pipe.ttl(key)
            replies = pipe.execute()
        for index, (_, limit) in enumerate(keys):
            count, ttl = int(replies[2 * index] or 0), int(replies[2 * index + 1])
            if count >= limit:
                wait = ttl if ttl > 0 else self.window_seconds
                raise LoginRateLimited(f"Too many failed sign-in attempts; wait {wait} seconds and try again.",
                                       extra={"retry_after": wait})

    def failure(self, *, email: str, address: str) -> None:
        """Count one failed attempt against the email and the address (the window starts at the first)."""
        with self.client.pipeline() as pipe:
            for key, _ in self._keys(email=email, address=address):
                pipe.incr(key)
                pipe.expire(key, self.window_seconds, nx=True)
            pipe.execute()

    def success(self, *, email: str) -> None:
        """A successful sign-in clears the email's count (not the address's: one address, many guesses)."""
        self.client.delete(self._keys(email=email, address="")[0][0])


@cache
def login_limiter() -> LoginLimiter:
    return LoginLimiter(
        client=redis.Redis.from_url(settings.LOGIN_RATE_LIMIT_REDIS_URL, socket_timeout=2, socket_connect_timeout=2),
        prefix=settings.LOGIN_RATE_LIMIT_PREFIX,
        max_failures_per_email=settings.LOGIN_MAX_FAILURES_PER_EMAIL,
        max_failures_per_address=settings.LOGIN_MAX_FAILURES_PER_ADDRESS,
        window_seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS,
    )
