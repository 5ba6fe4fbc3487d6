"""The SLA tiers' limits through the API: request rate (429 rate_limited), runs per minute (429
run_rate_exceeded), runs at once (429 concurrent_runs_exceeded), the quota endpoint and the operator's tier
change. Real Redis and Postgres; the buckets live under a key prefix of each test's own.

These tests never commit (no worker runs), so started runs stay queued: each holds a slot of the quota.
"""

from __future__ import annotations

import json
import logging
import uuid

import pytest
import redis
from django_tenants.utils import schema_context

from billing.models import BillingAccount
from billing.wiring import tier_limiter
from conftest import bearer
from control_plane.audit.models import AuditEvent
from data_plane import services as data_services
from data_plane.models import Run
from tenants.selectors import tenant_get

SPEC = {"instructions": "Be exact.", "models": ["openai/gpt-4o-mini"]}


@pytest.fixture
def limits(settings):
    """Tier limits on (the test settings turn them off for the rest of the suite), in buckets of this test's own."""
    settings.TIER_LIMITS_ENABLED = True
    settings.RATE_LIMIT_KEY_PREFIX = prefix = f"{settings.RATE_LIMIT_KEY_PREFIX}-quotas-{uuid.uuid4().hex[:8]}"
    connection = redis.Redis.from_url(settings.RATE_LIMIT_REDIS_URL)
    yield tier_limiter()
    keys = list(connection.scan_iter(f"{prefix}:*"))
    if keys:
        connection.delete(*keys)


def post(client, path, body, key):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def create_agent(client, key) -> str:
    response = post(client, "/v1/agents", {"name": f"calc-{uuid.uuid4().hex[:6]}", "spec": SPEC}, key)
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def start(client, key, agent_id):
    return post(client, "/v1/runs", {"agent_id": agent_id, "input": "What is 6*7?"}, key)


def run_count(tenant) -> int:
    with schema_context(tenant.schema):
        return Run.objects.count()


def empty_request_bucket(limiter, tenant) -> None:
    """Take every whole token of the tenant's request bucket (standard tier: 20, refilled at 10 a second)."""
    level = limiter.bucket.peek(f"api:{tenant.id}", rate=10, burst=20)
    limiter.bucket.take(f"api:{tenant.id}", rate=10, burst=20, n=level.remaining)


def test_every_answer_says_where_the_tenants_request_bucket_stands(client, tenant_a, limits):
    response = client.get("/v1/tenant", **bearer(tenant_a.key))
    assert response.status_code == 200
    assert (response["RateLimit-Limit"], response["RateLimit-Remaining"], response["RateLimit-Reset"]) == \
        ("20", "19", "1")
    # a refused permission still spent its token
    denied = client.get("/v1/platform/tenants", **bearer(tenant_a.key))
    assert denied.status_code == 401 and "RateLimit-Limit" not in denied  # an operator route: not a tenant's
    assert client.get("/v1/tenant", **bearer(tenant_a.key))["RateLimit-Remaining"] == "18"


def test_past_its_burst_a_tenant_gets_429_rate_limited_with_retry_after_and_nothing_changes(client, tenant_a,
                                                                                           tenant_b, limits):
    # given tenant A's bucket emptied
    empty_request_bucket(limits, tenant_a.tenant)
    # when A asks again (the loop: a token may have come back in the meantime)
    for _ in range(20):
        response = client.get("/v1/tenant", **bearer(tenant_a.key))
        if response.status_code == 429:
            break
    # then
    assert response.status_code == 429
    assert response["Retry-After"] == "1"
    assert (response["RateLimit-Limit"], response["RateLimit-Remaining"]) == ("20", "0")
    body = response.json()
    assert {k: body[k] for k in ("status", "code", "detail", "retry_after", "limit", "rate_per_second", "tier")} == {
        "status": 429, "code": "rate_limited", "retry_after": 1, "limit": 20, "rate_per_second": 10.0,
        "tier": "standard",
        "detail": f"Tenant {tenant_a.tenant.slug!r} (standard tier) sent more than 10 requests a second (bursts up "
                  "to 20); retry in 1 s, or upgrade to the Professional tier."}
    # a write refused for the rate changes nothing
    empty_request_bucket(limits, tenant_a.tenant)
    refused = post(client, "/v1/agents", {"name": "refused", "spec": SPEC}, tenant_a.key)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    with schema_context(tenant_a.schema):
        from data_plane.models import Agent

        assert Agent.objects.filter(name="refused").count() == 0
    # and tenant B's bucket is its own
    other = client.get("/v1/tenant", **bearer(tenant_b.key))
    assert other.status_code == 200 and other["RateLimit-Remaining"] == "19"


def test_with_redis_down_requests_and_runs_go_through_and_a_warning_is_logged(client, tenant_a, limits, settings,
                                                                               caplog):
    # given a Redis nobody answers at
    settings.RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"
    agent_id = create_agent(client, tenant_a.key)
    # when
    with caplog.at_level(logging.WARNING, logger="agentplane.quotas"):
        response = client.get("/v1/tenant", **bearer(tenant_a.key))
        started = start(client, tenant_a.key, agent_id)
    # then: answered, without the bucket's headers, and said so in the log
    assert response.status_code == 200 and "RateLimit-Limit" not in response
    assert started.status_code == 202
    messages = [record.getMessage() for record in caplog.records]
    assert f"Rate limiting of {tenant_a.tenant.slug} is off for this API request: Redis failed (ConnectionError)." \
        in messages
    assert f"Rate limiting of {tenant_a.tenant.slug} is off for this run start: Redis failed (ConnectionError)." \
        in messages


def test_past_its_runs_per_minute_a_start_gets_429_run_rate_exceeded_and_creates_nothing(client, tenant_a, limits):
    # given a standard tenant that started its 60 runs of the minute (one comes back a second)
    agent_id = create_agent(client, tenant_a.key)
    limits.bucket.take(f"runs:{tenant_a.tenant.id}", rate=1, burst=60, n=60)
    # when
    response = start(client, tenant_a.key, agent_id)
    # then
    assert response.status_code == 429
    assert response["Retry-After"] == "1"
    body = response.json()
    assert {k: body[k] for k in ("code", "detail", "limit", "tier", "retry_after")} == {
        "code": "run_rate_exceeded", "limit": 60, "tier": "standard", "retry_after": 1,
        "detail": f"Tenant {tenant_a.tenant.slug!r} (standard tier) may start 60 runs a minute and has started them; "
                  "retry in 1 s, or upgrade to the Professional tier."}
    assert run_count(tenant_a) == 0


def test_past_its_runs_at_once_a_start_gets_429_concurrent_runs_exceeded(client, tenant_a, limits):
    # given a standard tenant with 10 runs started (the tier's limit), one of them paused
    agent_id = create_agent(client, tenant_a.key)
    runs = [start(client, tenant_a.key, agent_id) for _ in range(10)]
    assert [r.status_code for r in runs] == [202] * 10
    assert client.post(f"/v1/runs/{runs[0].json()['id']}/pause", **bearer(tenant_a.key)).status_code == 200
    tokens_before = limits.bucket.peek(f"runs:{tenant_a.tenant.id}", rate=1, burst=60).tokens
    # when an 11th starts, and a fork of the first
    response = start(client, tenant_a.key, agent_id)
    checkpoint = client.get(f"/v1/runs/{runs[1].json()['id']}/checkpoints", **bearer(tenant_a.key)).json()[
        "results"][0]["id"]
    fork = post(client, f"/v1/runs/{runs[1].json()['id']}/checkpoints/{checkpoint}/fork", {}, tenant_a.key)
    # then both are refused, naming the limit, the count and the tier; nothing was created, no start was counted
    assert response.status_code == 429 and fork.status_code == 429
    assert response["Retry-After"] == "5"
    body = response.json()
    assert {k: body[k] for k in ("code", "detail", "limit", "current", "tier", "retry_after")} == {
        "code": "concurrent_runs_exceeded", "limit": 10, "current": 10, "tier": "standard", "retry_after": 5,
        "detail": f"Tenant {tenant_a.tenant.slug!r} has 10 runs queued, running, paused or waiting for approval; the "
                  "standard tier allows 10 at once. Wait for one to finish (or cancel one), or upgrade to the "
                  "Professional tier."}
    assert fork.json()["code"] == "concurrent_runs_exceeded"
    assert run_count(tenant_a) == 10
    assert limits.bucket.peek(f"runs:{tenant_a.tenant.id}", rate=1, burst=60).tokens >= tokens_before
    # a sub-run of a running parent is part of it: started, and not counted
    with schema_context(tenant_a.schema):
        child = data_services.run_create_child(tenant_schema=tenant_a.schema, parent_run_id=runs[1].json()["id"],
                                               parent_key="call-1", agent_name=Run.objects.get(
                                                   id=runs[1].json()["id"]).agent_version.agent.name, input="sub")
    assert child.status == "queued" and run_count(tenant_a) == 11
    # when one is cancelled, the next start is admitted
    assert post(client, f"/v1/runs/{runs[2].json()['id']}/cancel", {}, tenant_a.key).status_code == 200
    assert start(client, tenant_a.key, agent_id).status_code == 202
    assert start(client, tenant_a.key, agent_id).json()["code"] == "concurrent_runs_exceeded"


def test_the_quota_endpoint_shows_the_tier_its_limits_and_where_the_tenant_stands(client, tenant_a, limits,
                                                                                  settings):
    agent_id = create_agent(client, tenant_a.key)
    assert start(client, tenant_a.key, agent_id).status_code == 202
    limits.bucket.reset(f"api:{tenant_a.tenant.id}")
    response = client.get("/v1/quotas", **bearer(tenant_a.key))
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "tier": "standard", "concurrent_runs_limit": 10, "concurrent_runs": 1, "runs_per_minute_limit": 60,
        "tokens_per_month_limit": 20_000_000,
        "requests": {"rate_per_second": 10.0, "burst": 20, "remaining": 19, "full_in_seconds": 1},
        "run_starts": {"rate_per_second": 1.0, "burst": 60, "remaining": 59, "full_in_seconds": 1},
        "queue": f"{settings.RUN_QUEUE_PREFIX}runs.standard"}


def test_an_operator_changes_a_tenants_tier_and_its_limits_change_at_once(client, tenant_a, limits, operator_key,
                                                                          settings):
    # given a standard tenant at its 10 runs at once
    agent_id = create_agent(client, tenant_a.key)
    for _ in range(10):
        assert start(client, tenant_a.key, agent_id).status_code == 202
    assert start(client, tenant_a.key, agent_id).status_code == 429
    # when the operator moves it to the professional tier
    response = client.patch(f"/v1/platform/tenants/{tenant_a.tenant.slug}", json.dumps({"sla_tier": "professional"}),
                            content_type="application/json", **bearer(operator_key))
    # then its next start is admitted, and its quotas and queue are the professional tier's
    assert response.status_code == 200 and response.json()["sla_tier"] == "professional"
    assert start(client, tenant_a.key, agent_id).status_code == 202
    quotas = client.get("/v1/quotas", **bearer(tenant_a.key)).json()
    assert (quotas["tier"], quotas["concurrent_runs_limit"], quotas["concurrent_runs"], quotas["requests"]["burst"],
            quotas["queue"]) == ("professional", 100, 11, 100, f"{settings.RUN_QUEUE_PREFIX}runs.professional")
    assert client.get("/v1/tenant", **bearer(tenant_a.key))["RateLimit-Limit"] == "100"
    with schema_context(tenant_a.schema):
        events = list(AuditEvent.objects.filter(action="tenant.tier_change").values_list("actor_kind", "data"))
    assert events == [("operator_key", {"from": "standard", "to": "professional"})]


def test_an_unknown_tier_is_refused_and_nothing_changes(client, tenant_a, operator_key):
    response = client.patch(f"/v1/platform/tenants/{tenant_a.tenant.slug}", json.dumps({"sla_tier": "gold"}),
                            content_type="application/json", **bearer(operator_key))
    assert response.status_code == 400
    assert response.json()["errors"] == {"sla_tier": ['"gold" is not a valid choice.']}
    assert tenant_get(slug=tenant_a.tenant.slug).sla_tier == "standard"
    with schema_context(tenant_a.schema):
        assert AuditEvent.objects.filter(action="tenant.tier_change").count() == 0


def test_a_tenant_paying_through_stripe_changes_tier_only_through_its_subscription(client, tenant_a, operator_key):
    # given tenant A with an active Stripe subscription on the standard tier
    BillingAccount.objects.create(tenant=tenant_a.tenant, tier="standard", status="active",
                                  stripe_customer_id="cus_quota", stripe_subscription_id="sub_quota")
    try:
        # when the operator changes the tier beside the subscription
        response = client.patch(f"/v1/platform/tenants/{tenant_a.tenant.slug}",
                                json.dumps({"sla_tier": "enterprise"}), content_type="application/json",
                                **bearer(operator_key))
        # then it is refused, pointing at the route that moves the subscription's prices too; nothing changed
        assert response.status_code == 409
        assert response.json()["detail"] == (
            f"Tenant {tenant_a.tenant.slug!r} pays through a Stripe subscription (standard); change its tier with "
            f"POST /v1/platform/tenants/{tenant_a.tenant.slug}/billing/tier so the subscription's prices change "
            "with it.")
        assert tenant_get(slug=tenant_a.tenant.slug).sla_tier == "standard"
        with schema_context(tenant_a.schema):
            assert AuditEvent.objects.filter(action="tenant.tier_change").count() == 0
    finally:
        BillingAccount.objects.filter(tenant=tenant_a.tenant).delete()


def test_a_tenant_key_cannot_change_its_own_tier(client, tenant_a):
    response = client.patch(f"/v1/platform/tenants/{tenant_a.tenant.slug}", json.dumps({"sla_tier": "enterprise"}),
                            content_type="application/json", **bearer(tenant_a.key))
    assert response.status_code == 401
    assert tenant_get(slug=tenant_a.tenant.slug).sla_tier == "standard"


def test_with_limits_off_nothing_is_counted_and_the_buckets_show_full(client, tenant_a):
    # the test settings' default (TIER_LIMITS_ENABLED=false)
    response = client.get("/v1/quotas", **bearer(tenant_a.key))
    assert response.status_code == 200 and "RateLimit-Limit" not in response
    body = response.json()
    assert (body["tier"], body["requests"], body["run_starts"]) == (
        "standard", {"rate_per_second": 10.0, "burst": 20, "remaining": 20, "full_in_seconds": 0},
        {"rate_per_second": 1.0, "burst": 60, "remaining": 60, "full_in_seconds": 0})
