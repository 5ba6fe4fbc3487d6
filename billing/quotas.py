"""Quotas and rate limits of the SLA tiers (``billing/plans.py``), enforced when work is admitted.

- API requests: a token bucket per tenant (``requests_per_second``, ``request_burst``); one token a request.
- Runs started: a token bucket per tenant (``runs_per_minute / 60`` a second, burst ``runs_per_minute``).
- Runs at once: counted by the data plane under a per-tenant lock at run start; ``concurrent_runs_check``.
- Tokens per month: the budgets' check (not here); ``quota_usage_get`` shows the plan's number.

The buckets live in Redis (``common.token_bucket``). Redis failing never refuses a request: the limiter then
lets it through and logs a warning (fail open; the run quota's count is in Postgres and still holds).
The tenant's tier is read on every check, so a tier change applies to the next request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from billing.errors import ConcurrentRunsExceeded, RequestRateLimited, RunRateExceeded
from billing.plans import Plan, plan_for
from common.token_bucket import BucketResult, TokenBucket

logger = logging.getLogger("agentplane.quotas")

# Without knowing when a run will finish, a refused start is told to try again after this many seconds.
CONCURRENT_RUNS_RETRY_AFTER = 5
UPGRADE_HINT = {"standard": "the Professional tier", "professional": "the Enterprise tier", "enterprise": ""}


def _upgrade(tier: str) -> str:
    target = UPGRADE_HINT.get(tier, "")
    return f", or upgrade to {target}" if target else ", or ask us to raise your limits"


def request_bucket(plan: Plan) -> dict[str, float]:
    return {"rate": plan.requests_per_second, "burst": plan.request_burst}


def run_bucket(plan: Plan) -> dict[str, float]:
    return {"rate": plan.runs_per_minute / 60.0, "burst": plan.runs_per_minute}


class TierLimiter:
    """The tenants' token buckets (API requests, runs started) in one Redis, sized by each tenant's tier."""

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket

    def request_admit(self, *, tenant: Any) -> BucketResult | None:
        """Take one API request token. Raises RequestRateLimited when the bucket is empty; None when Redis
        failed (the request goes through)."""
        plan = plan_for(tenant.sla_tier)
        result = self._take(f"api:{tenant.id}", what="API request", tenant=tenant, **request_bucket(plan))
        if result is not None and not result.allowed:
            error = RequestRateLimited(
                f"Tenant {tenant.slug!r} ({plan.tier} tier) sent more than {plan.requests_per_second:g} requests "
                f"a second (bursts up to {plan.request_burst}); retry in {result.retry_after} s{_upgrade(plan.tier)}.",
                extra={"retry_after": result.retry_after, "limit": plan.request_burst,
                       "rate_per_second": plan.requests_per_second, "tier": plan.tier})
            error.bucket = result  # for the RateLimit-* headers of the 429
            raise error
        return result

    def run_rate_admit(self, *, tenant: Any) -> BucketResult | None:
        """Take one run-start token. Raises RunRateExceeded when the tenant started its tier's runs per minute;
        None when Redis failed (the run starts)."""
        plan = plan_for(tenant.sla_tier)
        result = self._take(f"runs:{tenant.id}", what="run start", tenant=tenant, **run_bucket(plan))
        if result is not None and not result.allowed:
            raise RunRateExceeded(
                f"Tenant {tenant.slug!r} ({plan.tier} tier) may start {plan.runs_per_minute} runs a minute and has "
                f"started them; retry in {result.retry_after} s{_upgrade(plan.tier)}.",
                extra={"retry_after": result.retry_after, "limit": plan.runs_per_minute, "tier": plan.tier})
        return result

    def run_rate_refund(self, *, tenant: Any) -> None:
        """Give back the run-start token of a start that did not happen (its transaction failed)."""
        plan = plan_for(tenant.sla_tier)
        try:
            self.bucket.refund(f"runs:{tenant.id}", **run_bucket(plan))
        except redis.RedisError as error:
            logger.warning("A run-start token of tenant %s was not given back: Redis failed (%s).", tenant.slug,
                           type(error).__name__)

    def levels(self, *, tenant: Any) -> dict[str, BucketResult | None]:
        """The buckets' levels now, taking nothing (None for a bucket Redis could not read)."""
        plan = plan_for(tenant.sla_tier)
        return {"requests": self._peek(f"api:{tenant.id}", **request_bucket(plan)),
                "run_starts": self._peek(f"runs:{tenant.id}", **run_bucket(plan))}

    def reset(self, *, tenant: Any) -> None:
        """Refill the tenant's buckets (tests, an operator's relief)."""
        self.bucket.reset(f"api:{tenant.id}")
        self.bucket.reset(f"runs:{tenant.id}")

    def _take(self, name: str, *, what: str, tenant: Any, rate: float, burst: float) -> BucketResult | None:
        try:
            return self.bucket.take(name, rate=rate, burst=burst)
        except redis.RedisError as error:
            logger.warning("Rate limiting of %s is off for this %s: Redis failed (%s).", tenant.slug, what,
                           type(error).__name__)
            return None

    def _peek(self, name: str, *, rate: float, burst: float) -> BucketResult | None:
        try:
            return self.bucket.peek(name, rate=rate, burst=burst)
        except redis.RedisError:
            return None


def concurrent_runs_check(*, tenant: Any, active_runs: int) -> None:
    """Refuse a run start when the tenant already has its tier's runs at once. Raises ConcurrentRunsExceeded.
    ``active_runs`` must be counted under the tenant's run-admission lock (the caller's transaction)."""
    plan = plan_for(tenant.sla_tier)
    if active_runs >= plan.concurrent_runs:
        raise ConcurrentRunsExceeded(
            f"Tenant {tenant.slug!r} has {active_runs} runs queued, running, paused or waiting for approval; the "
            f"{plan.tier} tier allows {plan.concurrent_runs} at once. Wait for one to finish (or cancel one)"
            f"{_upgrade(plan.tier)}.",
            extra={"retry_after": CONCURRENT_RUNS_RETRY_AFTER, "limit": plan.concurrent_runs,
                   "current": active_runs, "tier": plan.tier})


@dataclass(frozen=True)
class BucketLevel:
    rate_per_second: float
    burst: int
    remaining: int | None  # None: Redis could not be read
    full_in_seconds: int | None


@dataclass(frozen=True)
class QuotaUsage:
    tier: str
    concurrent_runs_limit: int
    concurrent_runs: int
    runs_per_minute_limit: int
    tokens_per_month_limit: int
    requests: BucketLevel
    run_starts: BucketLevel
    queue: str


def _level(result: BucketResult | None, *, rate: float, burst: float) -> BucketLevel:
    return BucketLevel(rate_per_second=rate, burst=int(burst), remaining=None if result is None else result.remaining,
                       full_in_seconds=None if result is None else result.reset)


def quota_usage_get(*, tenant: Any, limiter: TierLimiter | None, active_runs: int, queue: str) -> QuotaUsage:
    """The tenant's tier, its limits and where it stands: runs at once, and the buckets' levels (full when
    limits are off, unknown when Redis could not be read)."""
    plan = plan_for(tenant.sla_tier)
    buckets = {"requests": request_bucket(plan), "run_starts": run_bucket(plan)}
    if limiter is None:
        levels: dict[str, BucketResult | None] = {
            name: BucketResult(allowed=True, tokens=bucket["burst"], wait_seconds=0, full_in_seconds=0)
            for name, bucket in buckets.items()}
    else:
        levels = limiter.levels(tenant=tenant)
    return QuotaUsage(
        tier=plan.tier, concurrent_runs_limit=plan.concurrent_runs, concurrent_runs=active_runs,
        runs_per_minute_limit=plan.runs_per_minute, tokens_per_month_limit=plan.tokens_per_month, queue=queue,
        requests=_level(levels["requests"], **buckets["requests"]),
        run_starts=_level(levels["run_starts"], **buckets["run_starts"]))
