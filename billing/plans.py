"""The SLA tiers as plans: what each tier may use, how it is served and what it costs. Pure data.

One table for every part of the business control plane: quotas and rate limits (admission), the Celery
queue a tenant's runs go to, the availability it is promised (SLOs, credits), and its price (Stripe and the
finance reports). The tiers and their availability and credits are the requirements' (docs/requirements);
the quotas and prices are ours. ``plan_for`` is the one way to read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Plan:
    tier: str
    # Quotas: runs at once (queued, running or waiting), runs started per minute, LLM tokens per calendar month.
    concurrent_runs: int
    runs_per_minute: int
    tokens_per_month: int
    # API rate limit: a token bucket per tenant, refilled at ``requests_per_second`` up to ``request_burst``.
    requests_per_second: float
    request_burst: int
    # The Celery queue of the tier's run steps: a burst of one tier's tenants cannot delay another tier's runs.
    queue: str
    # SLA: monthly availability promised, and the service credit (share of the month's fee) when it is missed.
    availability_target: float
    credit_percent: int
    support: str
    # Price: a monthly fee, and metered LLM usage per million tokens (input, output and cached alike).
    monthly_fee_usd: Decimal
    usage_usd_per_million_tokens: Decimal


PLANS: dict[str, Plan] = {
    "standard": Plan(tier="standard", concurrent_runs=10, runs_per_minute=60, tokens_per_month=20_000_000,
                     requests_per_second=10.0, request_burst=20, queue="runs.standard",
                     availability_target=0.995, credit_percent=0, support="Business hours",
                     monthly_fee_usd=Decimal("99"), usage_usd_per_million_tokens=Decimal("4.00")),
    "professional": Plan(tier="professional", concurrent_runs=100, runs_per_minute=600, tokens_per_month=500_000_000,
                         requests_per_second=50.0, request_burst=100, queue="runs.professional",
                         availability_target=0.999, credit_percent=10, support="24/7",
                         monthly_fee_usd=Decimal("499"), usage_usd_per_million_tokens=Decimal("3.50")),
    "enterprise": Plan(tier="enterprise", concurrent_runs=1000, runs_per_minute=6000,
                       tokens_per_month=10_000_000_000, requests_per_second=200.0, request_burst=400,
                       queue="runs.enterprise", availability_target=0.9995, credit_percent=25,
                       support="24/7 + dedicated", monthly_fee_usd=Decimal("2000"),
                       usage_usd_per_million_tokens=Decimal("3.00")),
}

TIERS: tuple[str, ...] = tuple(PLANS)


def plan_for(tier: str) -> Plan:
    """The plan of an SLA tier. Raises KeyError for a tier that does not exist."""
    return PLANS[tier]
