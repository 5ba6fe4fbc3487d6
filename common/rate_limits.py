"""Limits on failed authentications, counted in Redis per client address and per presented credential id.

Only failures count, so a client using a valid key is never limited by them. Two limits, each a moving window
(the ``limits`` library's Redis strategy: exact, one Lua script per call):

- per client address: an address that has failed too often is refused (429) before its credential is even
  checked, so a sprayer costs us one Redis call, not a database lookup and a hash, per attempt;
- per presented credential id (the public part of a key, ``agp:<lookup id>``, or a stream token's key id):
  a failure past the limit is answered 429 instead of 401, from any address. A correct secret still passes,
  so nobody who merely knows a key's id can lock its owner out.

When a limit trips it is logged once per window (address and credential id, never the secret). Redis being
down never refuses anyone: the limiter then lets every attempt through and logs that it could not count.

Future login or OAuth endpoints use the same limiter: ``with limiter.attempt(address=..., credential_id=...):``
around the check that raises ``NotAuthenticated``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import redis
from limits import parse
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from common.errors import AppError, NotAuthenticated

logger = logging.getLogger("agentplane.security")


class AuthRateLimited(AppError):
    code = "rate_limited"
    http_status = 429
    title = "Too many failed authentications"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, extra={"retry_after": retry_after})  # the problem handler's Retry-After
        self.retry_after = retry_after


class AuthFailureLimiter:
    """Counts failed authentications in Redis; see the module docstring for the rules."""

    def __init__(self, *, per_address: str, per_credential: str, redis_url: str, key_prefix: str) -> None:
        self.per_address = parse(per_address)
        self.per_credential = parse(per_credential)
        # short timeouts: a slow Redis must not hold up authentication (it fails open)
        self._storage = RedisStorage(redis_url, key_prefix=key_prefix, socket_timeout=0.5,
                                     socket_connect_timeout=0.5)
        self._windows = MovingWindowRateLimiter(self._storage)
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._key_prefix = key_prefix

    def check(self, *, address: str | None) -> None:
        """Refuse an address that has failed too often. Raises AuthRateLimited. One Redis call (the address's
        block marker, set when its window filled), so valid requests pay next to nothing."""
        if not address:
            return
        try:
            retry_after = self._redis.ttl(self._marker("address", address))
        except redis.RedisError as error:
            logger.warning("Authentication rate limiting is off for this request: Redis failed (%s).",
                           type(error).__name__)
            return
        if retry_after is None or retry_after < 0:  # no marker (-2), or one without expiry (never set so)
            return
        raise AuthRateLimited(f"Too many failed authentications from {address}; retry in {max(1, retry_after)} s "
                              "with a valid credential.", retry_after=max(1, retry_after))

    def record_failure(self, *, address: str | None, credential_id: str | None) -> None:
        """Count one failed authentication. Raises AuthRateLimited when it goes past a limit."""
        try:
            for limit, kind, identifier in ((self.per_address, "address", address),
                                            (self.per_credential, "credential", credential_id)):
                if identifier and not self._windows.hit(limit, kind, identifier):
                    retry_after = self._retry_after(limit, kind, identifier)
                    self._trip(kind=kind, identifier=identifier, limit=str(limit), address=address,
                                   credential_id=credential_id, retry_after=retry_after)
                    what = f"from {address}" if kind == "address" else f"for credential {identifier}"
                    raise AuthRateLimited(f"Too many failed authentications {what}; retry in {retry_after} s "
                                          "with a valid credential.", retry_after=retry_after)
        except (redis.RedisError, StorageError) as error:
            logger.warning("A failed authentication was not counted: Redis failed (%s).", type(error).__name__)

    @contextmanager
    def attempt(self, *, address: str | None, credential_id: str | None) -> Iterator[None]:
        """Around one authentication: refuses a blocked address first; counts a NotAuthenticated raised inside
        (re-raised as is, or as AuthRateLimited when it went past a limit)."""
        self.check(address=address)
        try:
            yield
        except NotAuthenticated as error:
            try:
                self.record_failure(address=address, credential_id=credential_id)
            except AuthRateLimited as limited:
                raise limited from error
            raise

    def clear(self, *, address: str | None = None, credential_id: str | None = None) -> None:
        """Forget the failures of an address or a credential (an operator unblocking a client)."""
        if address:
            self._windows.clear(self.per_address, "address", address)
            self._redis.delete(self._marker("address", address))
        if credential_id:
            self._windows.clear(self.per_credential, "credential", credential_id)
            self._redis.delete(self._marker("credential", credential_id))

    def _retry_after(self, limit, kind: str, identifier: str) -> int:  # type: ignore[no-untyped-def]
        stats = self._windows.get_window_stats(limit, kind, identifier)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def _marker(self, kind: str, identifier: str) -> str:
        return f"{self._key_prefix}/tripped/{kind}/{identifier}"

    def _trip(self, *, kind: str, identifier: str, limit: str, address: str | None, credential_id: str | None,
              retry_after: int) -> None:
        """Mark the identifier blocked until its window has room again (``check`` reads the address's mark) and log
        it, once per window: an attack must not flood the logs as well."""
        if self._redis.set(self._marker(kind, identifier), b"1", nx=True, ex=retry_after):
            logger.warning("Authentication rate limit tripped (%s %s): limit %s, client address %s, credential %s; "
                           "refusing further failures for %s s.", kind, identifier, limit, address or "-",
                           credential_id or "-", retry_after)


@lru_cache(maxsize=8)
def auth_failure_limiter(*, per_address: str, per_credential: str, redis_url: str,
                         key_prefix: str) -> AuthFailureLimiter:
    """One limiter (and its Redis connection pool) per configuration, per process."""
    return AuthFailureLimiter(per_address=per_address, per_credential=per_credential, redis_url=redis_url,
                              key_prefix=key_prefix)
