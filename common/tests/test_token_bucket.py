"""The Redis token bucket: refill, burst, waits and atomicity, on a real Redis.

Most tests pass the script a clock of their own (``now_microseconds``) so the arithmetic is checked with exact
values; one test uses the Redis server's clock, as production does.
"""

from __future__ import annotations

import math
import threading
import time
import uuid

import pytest
import redis
from django.conf import settings

from common.token_bucket import TokenBucket

SECOND = 1_000_000


@pytest.fixture
def client():
    connection = redis.Redis.from_url(settings.RATE_LIMIT_REDIS_URL)
    prefix = f"{settings.RATE_LIMIT_KEY_PREFIX}-bucket-test-{uuid.uuid4().hex[:8]}"
    yield connection, prefix
    keys = list(connection.scan_iter(f"{prefix}:*"))
    if keys:
        connection.delete(*keys)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * SECOND

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * SECOND)


def test_a_new_bucket_is_full_and_gives_its_burst_then_refuses_with_the_exact_wait(client):
    # given a bucket of burst 4 refilled at 2 tokens a second
    connection, prefix = client
    clock = Clock()
    bucket = TokenBucket(connection, key_prefix=prefix, now_microseconds=clock)
    # when the burst is taken at one instant
    taken = [bucket.take("b", rate=2, burst=4) for _ in range(4)]
    refused = bucket.take("b", rate=2, burst=4)
    # then
    assert [(r.allowed, r.tokens) for r in taken] == [(True, 3.0), (True, 2.0), (True, 1.0), (True, 0.0)]
    assert (refused.allowed, refused.tokens, refused.wait_seconds, refused.retry_after) == (False, 0.0, 0.5, 1)
    assert (refused.remaining, refused.full_in_seconds, refused.reset) == (0, 2.0, 2)


def test_tokens_come_back_at_the_rate_and_never_above_the_burst(client):
    connection, prefix = client
    clock = Clock()
    bucket = TokenBucket(connection, key_prefix=prefix, now_microseconds=clock)
    bucket.take("b", rate=2, burst=4, n=4)
    # a quarter second later: half a token, still not one
    clock.advance(0.25)
    early = bucket.take("b", rate=2, burst=4)
    assert (early.allowed, early.tokens, early.wait_seconds) == (False, 0.5, 0.25)
    # half a second after emptying: one token, taken
    clock.advance(0.25)
    assert (bucket.take("b", rate=2, burst=4).allowed, bucket.peek("b", rate=2, burst=4).tokens) == (True, 0.0)
    # an hour later: full, not 7200 tokens
    clock.advance(3600)
    full = bucket.peek("b", rate=2, burst=4)
    assert (full.allowed, full.tokens, full.full_in_seconds) == (True, 4.0, 0.0)


def test_a_slow_bucket_gives_a_long_retry_after_rounded_up(client):
    # runs per minute of the standard tier: 60 a minute, one a second
    connection, prefix = client
    clock = Clock()
    bucket = TokenBucket(connection, key_prefix=prefix, now_microseconds=clock)
    bucket.take("runs", rate=0.1, burst=3, n=3)
    clock.advance(2.5)
    refused = bucket.take("runs", rate=0.1, burst=3)
    assert refused.allowed is False
    assert math.isclose(refused.wait_seconds, 7.5) and refused.retry_after == 8
    assert refused.remaining == 0 and refused.reset == 28  # 2.75 tokens to go at 0.1/s = 27.5 s


def test_more_than_the_burst_is_never_allowed(client):
    connection, prefix = client
    bucket = TokenBucket(connection, key_prefix=prefix, now_microseconds=Clock())
    result = bucket.take("b", rate=10, burst=5, n=6)
    assert (result.allowed, result.wait_seconds, result.tokens) == (False, math.inf, 5.0)


def test_a_refund_gives_tokens_back_up_to_the_burst(client):
    connection, prefix = client
    clock = Clock()
    bucket = TokenBucket(connection, key_prefix=prefix, now_microseconds=clock)
    bucket.take("b", rate=1, burst=3, n=2)
    assert bucket.refund("b", rate=1, burst=3).tokens == 2.0
    assert bucket.refund("b", rate=1, burst=3, n=5).tokens == 3.0


def test_a_full_bucket_keeps_no_key_and_a_used_one_expires_when_it_would_be_full(client):
    connection, prefix = client
    clock = Clock()
    bucket = TokenBucket(connection, key_prefix=prefix, now_microseconds=clock)
    bucket.peek("idle", rate=2, burst=4)
    assert connection.exists(bucket.key("idle")) == 0
    bucket.take("used", rate=2, burst=4)  # full again in 0.5 s; the key lives that long plus a second
    assert 1000 < connection.pttl(bucket.key("used")) <= 1500


def test_the_redis_server_clock_refills_the_bucket(client):
    # given a bucket timed by Redis (no clock passed), emptied
    connection, prefix = client
    bucket = TokenBucket(connection, key_prefix=prefix)
    assert bucket.take("b", rate=10, burst=5, n=5).allowed is True
    refused = bucket.take("b", rate=10, burst=5)
    assert refused.allowed is False and 0 < refused.wait_seconds <= 0.1 and refused.retry_after == 1
    # when 0.3 s pass on the server's clock
    time.sleep(0.3)
    # then about 3 tokens came back (the wait measured by the server, not by us)
    level = bucket.peek("b", rate=10, burst=5)
    assert 2.9 <= level.tokens < 4.5, level


def test_concurrent_takes_never_spend_a_token_twice(client):
    # given a bucket of 20 that refills slower than the test runs (one token in ~17 minutes)
    connection, prefix = client
    bucket = TokenBucket(connection, key_prefix=prefix)
    outcomes: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def take_many() -> None:
        own = TokenBucket(redis.Redis.from_url(settings.RATE_LIMIT_REDIS_URL), key_prefix=prefix)
        start.wait()
        for _ in range(5):
            allowed = own.take("shared", rate=0.001, burst=20).allowed
            with lock:
                outcomes.append(allowed)

    # when 16 threads take 80 tokens at once
    threads = [threading.Thread(target=take_many) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then exactly the burst was granted
    assert (outcomes.count(True), outcomes.count(False)) == (20, 60)
    assert bucket.peek("shared", rate=0.001, burst=20).remaining == 0


def test_a_bucket_needs_a_positive_rate_and_burst(client):
    connection, prefix = client
    with pytest.raises(ValueError, match="positive rate and burst"):
        TokenBucket(connection, key_prefix=prefix).take("b", rate=0, burst=5)
