"""Builds billing's gateways from settings: the one place billing's admission reads them."""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings

from billing.quotas import TierLimiter
from common.token_bucket import TokenBucket


@lru_cache(maxsize=8)
def _tier_limiter(redis_url: str, key_prefix: str) -> TierLimiter:
    # short timeouts: a slow Redis must not hold up requests (the limiter fails open)
    client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    return TierLimiter(TokenBucket(client, key_prefix=f"{key_prefix}:tier"))


def tier_limiter() -> TierLimiter | None:
    """The tenants' tier buckets (RATE_LIMIT_REDIS_URL, RATE_LIMIT_KEY_PREFIX); None when TIER_LIMITS_ENABLED
    is false. One per configuration, per process."""
    if not settings.TIER_LIMITS_ENABLED:
        return None
    return _tier_limiter(settings.RATE_LIMIT_REDIS_URL, settings.RATE_LIMIT_KEY_PREFIX)
