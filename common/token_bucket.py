"""Token buckets in Redis: one atomic Lua script per take, timed by the Redis server's clock.

A bucket holds up to ``burst`` tokens and refills continuously at ``rate`` tokens a second; a take of ``n``
succeeds when ``n`` tokens are there (and removes them), else it is refused with the exact wait until they
will be. The whole read-refill-take-write runs as one script, so concurrent callers (many web processes)
never spend a token twice, and the time is Redis's own (``TIME``), so callers' clocks may disagree.

Why our own script: the ``limits`` library the project uses for failed authentications implements fixed,
moving and sliding windows only (no token bucket), and a window cannot express "burst of B, then R a second"
or give the wait for the next token. The script is the classic GCRA-like bucket in ~20 lines.

A bucket that has refilled to ``burst`` needs no state: its key expires then, so idle tenants cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import redis

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst, n (negative: give tokens back), now in microseconds
# ("" = the server's TIME). The state is a hash {tokens, ts}; numbers cross back as strings (Lua floats
# would be truncated to integers by the Redis protocol).
_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[4])
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate / 1000000)
local allowed = 0
local wait = 0
if n <= tokens then
  tokens = math.min(burst, tokens - n)
  allowed = 1
elseif n > burst then
  wait = -1
else
  wait = (n - tokens) / rate
end
local full_in = (burst - tokens) / rate
if full_in > 0 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(full_in * 1000) + 1000)
else
  redis.call('DEL', KEYS[1])
end
return {allowed, string.format('%.17g', tokens), string.format('%.17g', wait), string.format('%.17g', full_in)}
"""


@dataclass(frozen=True)
class BucketResult:
    """The outcome of one take: whether it was allowed, the tokens left after it, the seconds to wait until
    the tokens asked for are there (0 when allowed; ``math.inf`` when more than the burst was asked), and the
    seconds until the bucket is full again."""

    allowed: bool
    tokens: float
    wait_seconds: float
    full_in_seconds: float

    @property
    def retry_after(self) -> int:
        """The wait in whole seconds, rounded up (for Retry-After): at least 1 when refused."""
        if self.allowed:
            return 0
        return max(1, math.ceil(self.wait_seconds - 1e-9)) if math.isfinite(self.wait_seconds) else 2**31 - 1

    @property
    def remaining(self) -> int:
        """Whole tokens left (for RateLimit-Remaining)."""
        return max(0, math.floor(self.tokens + 1e-9))

    @property
    def reset(self) -> int:
        """Whole seconds until the bucket is full again (for RateLimit-Reset), rounded up."""
        return max(0, math.ceil(self.full_in_seconds - 1e-9))


class TokenBucket:
    """Token buckets under one key prefix in one Redis. ``now_microseconds`` replaces the server's clock (tests
    of the arithmetic); leave it None in production. Raises redis.RedisError when Redis fails: callers decide
    whether to fail open."""

    def __init__(self, client: redis.Redis, *, key_prefix: str,
                 now_microseconds: Callable[[], int] | None = None) -> None:
        self._client = client
        self._key_prefix = key_prefix
        self._script = client.register_script(_SCRIPT)
        self._now = now_microseconds

    def key(self, name: str) -> str:
        return f"{self._key_prefix}:{name}"

    def take(self, name: str, *, rate: float, burst: float, n: float = 1) -> BucketResult:
        """Take ``n`` tokens from the bucket ``name`` if they are there. Atomic."""
        if rate <= 0 or burst <= 0:
            raise ValueError(f"A token bucket needs a positive rate and burst (got rate={rate}, burst={burst}).")
        now = "" if self._now is None else str(int(self._now()))
        allowed, tokens, wait, full_in = self._script(keys=[self.key(name)], args=[repr(float(rate)),
                                                                                  repr(float(burst)),
                                                                                  repr(float(n)), now])
        wait_seconds = float(wait)
        return BucketResult(allowed=bool(int(allowed)), tokens=float(tokens),
                            wait_seconds=math.inf if wait_seconds < 0 else wait_seconds,
                            full_in_seconds=float(full_in))

    def peek(self, name: str, *, rate: float, burst: float) -> BucketResult:
        """The bucket's level now, taking nothing."""
        return self.take(name, rate=rate, burst=burst, n=0)

    def refund(self, name: str, *, rate: float, burst: float, n: float = 1) -> BucketResult:
        """Give back ``n`` tokens taken for work that did not happen (never above the burst)."""
        return self.take(name, rate=rate, burst=burst, n=-n)

    def reset(self, name: str) -> None:
        """Forget the bucket: it is full again."""
        self._client.delete(self.key(name))
