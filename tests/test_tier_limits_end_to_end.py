"""The SLA tiers under real concurrency: starts racing for the last slots of the runs-at-once quota, and run
steps on each tier's Celery queue served by real workers, so one tenant's burst cannot starve another tier.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from django.db import connection
from django_tenants.utils import schema_context

from billing.errors import ConcurrentRunsExceeded
from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.models import Run
from tenants import services as tenant_services
from tests.conftest import LOG_DIR, runtime_env
from tests.processes import celery_worker_args, log_tail, running, wait_for

ONE_NODE = {"entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}


@pytest.fixture
def standard(committed):
    provisioned = provision_for_test("std")
    yield provisioned
    destroy_tenant(provisioned.tenant)


@pytest.fixture
def enterprise(committed):
    provisioned = provision_for_test("ent")
    tenant = tenant_services.tenant_tier_change(tenant=provisioned.tenant, sla_tier="enterprise", actor=TEST_ACTOR)
    yield type(provisioned)(tenant=tenant, key=provisioned.key)
    destroy_tenant(tenant)


@pytest.fixture
def limits_on(settings):
    settings.TIER_LIMITS_ENABLED = True
    settings.RATE_LIMIT_KEY_PREFIX = prefix = f"{settings.RATE_LIMIT_KEY_PREFIX}-e2e-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(settings.RATE_LIMIT_REDIS_URL)
    yield
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)


def _agent(tenant, model: str):
    with schema_context(tenant.schema):
        return services.agent_create(tenant=tenant.tenant, name=f"agent-{uuid.uuid4().hex[:6]}", description="",
                                     actor=TEST_ACTOR, spec={"instructions": "x", "models": [model],
                                                             "graph": ONE_NODE})


def test_racing_starts_never_exceed_the_runs_at_once(standard, limits_on, settings):
    # given a standard tenant (10 runs at once) whose steps go to a queue nobody consumes
    settings.RUN_STEP_QUEUE = queue = f"agentplane-unconsumed-{uuid.uuid4().hex[:8]}"
    agent = _agent(standard, "openai/echo")
    barrier = threading.Barrier(24)

    def start(index: int) -> str:
        try:
            barrier.wait()
            with schema_context(standard.schema):
                services.run_start(tenant=standard.tenant, agent_id=agent.id, input=f"run {index}", actor=TEST_ACTOR)
            return "started"
        except ConcurrentRunsExceeded:
            return "refused"
        finally:
            connection.close()

    # when 24 starts race
    try:
        with ThreadPoolExecutor(24) as pool:
            outcomes = list(pool.map(start, range(24)))
    finally:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(queue)
    # then exactly the tier's 10 were admitted
    assert (outcomes.count("started"), outcomes.count("refused")) == (10, 14)
    with schema_context(standard.schema):
        assert Run.objects.count() == 10


def _statuses(tenant, run_ids) -> list[str]:
    with schema_context(tenant.schema):
        return list(Run.objects.filter(id__in=run_ids).values_list("status", flat=True))


@pytest.mark.worker
def test_a_burst_on_the_standard_queue_does_not_delay_an_enterprise_run(model_server, standard, enterprise,
                                                                         settings):
    # given one worker per tier's queue (queues named for this test only), and a slow model for the burst
    prefix = f"agentplane-starve-{uuid.uuid4().hex[:8]}-"
    settings.RUN_QUEUE_PREFIX = prefix
    slow = f"slow-{uuid.uuid4().hex[:6]}"
    httpx.post(model_server.removesuffix("/v1") + "/admin/scenarios", timeout=10, json={
        "name": slow, "turns": [{"content": "slow answer", "first_token_delay_ms": 1500}]}).raise_for_status()
    burst_agent = _agent(standard, f"openai/{slow}")
    quick_agent = _agent(enterprise, "openai/echo")
    env = runtime_env(model_server, RUN_QUEUE_PREFIX=prefix)
    logs = {tier: LOG_DIR / f"tier-{tier}.log" for tier in ("standard", "enterprise")}
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        with running(celery_worker_args(name="tier-standard") + ["-Q", f"{prefix}runs.standard"],
                     log_path=logs["standard"], env=env), \
             running(celery_worker_args(name="tier-enterprise") + ["-Q", f"{prefix}runs.enterprise"],
                     log_path=logs["enterprise"], env=env):
            for log in logs.values():
                wait_for(lambda log=log: "ready." in log.read_text(errors="replace") if log.exists() else None,
                         timeout=60, what=f"a tier's worker; log:\n{log_tail(log)}")
            # when the standard tenant starts a burst of 10 slow runs (~15 s of work for its queue's worker),
            # then the enterprise tenant starts one
            with schema_context(standard.schema):
                burst = [services.run_start(tenant=standard.tenant, agent_id=burst_agent.id, input=f"burst {i}",
                                            actor=TEST_ACTOR).id for i in range(10)]
            with schema_context(enterprise.schema):
                quick = services.run_start(tenant=enterprise.tenant, agent_id=quick_agent.id, input="hello",
                                           actor=TEST_ACTOR).id
            # then the enterprise run completes while most of the standard backlog is still waiting
            wait_for(lambda: _statuses(enterprise, [quick]) == ["completed"], timeout=30,
                     what=f"the enterprise run; log:\n{log_tail(logs['enterprise'])}")
            backlog = _statuses(standard, burst)
            pending = sum(1 for status in backlog if status in ("queued", "running"))
            assert pending >= 6, backlog
            assert broker.llen(f"{prefix}runs.standard") >= 5  # still on its queue, not taken by the other worker
            # and the standard tenant's runs are served too, by their own worker
            wait_for(lambda: backlog.clear() or _statuses(standard, burst).count("completed") >= 2, timeout=30,
                     what=f"standard runs to complete; log:\n{log_tail(logs['standard'])}")
            with schema_context(enterprise.schema):
                assert Run.objects.get(id=quick).output == "You said: hello"
    finally:
        broker.delete(*(f"{prefix}{tier}" for tier in ("runs.standard", "runs.professional", "runs.enterprise")))


def test_a_stream_opened_past_the_request_rate_is_refused_with_retry_after(standard, limits_on):
    # given the standard tenant's request bucket emptied (20, refilled at 10 a second)
    from billing.wiring import tier_limiter
    from tenants.asgi import stream_principal

    bucket = tier_limiter().bucket
    bucket.take(f"api:{standard.tenant.id}", rate=10, burst=20, n=20)
    # when it opens a stream (websocket or SSE: both resolve their caller here)
    for _ in range(20):  # a token may come back in the meantime
        resolved = stream_principal(authorization=f"Bearer {standard.key}", access_token=None)
        if "auth_error" in resolved:
            break
    # then it is refused with the wait, which the websocket closes with (4429) and SSE answers (Retry-After)
    error = resolved["auth_error"]
    assert (error["code"], error["status"], error["retry_after"]) == ("rate_limited", 429, 1)
