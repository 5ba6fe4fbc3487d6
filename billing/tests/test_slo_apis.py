"""GET /v1/slos (usage:read) and GET /v1/platform/slos (operator key)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from django_tenants.utils import schema_context

from billing.tests.test_slo_selectors import _started_run
from conftest import bearer
from data_plane.tests.factories import AgentVersionFactory
from tenants.tests.factories import ApiKeyFactory


def _slos(body: dict) -> dict[str, dict]:
    return {slo["name"]: slo for slo in body["slos"]}


def test_a_tenant_reads_its_slos(client, tenant_a):
    # given a run that started 150 ms after its creation and completed 1.5 s later, a minute ago
    with schema_context(tenant_a.schema):
        _started_run(AgentVersionFactory(), timezone.now() - timedelta(minutes=1), 150, 1_500)
    key = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["usage:read"])
    # when
    response = client.get("/v1/slos", **bearer(key.plaintext))
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    slos = _slos(body)
    assert (body["scope"], body["sla_tier"]) == (tenant_a.tenant.slug, "standard")
    assert {name: (slo["value"], slo["target"], slo["is_met"]) for name, slo in slos.items()
            if name != "availability"} == {
        "agent_start_latency_p50": (150.0, 200.0, True), "agent_start_latency_p99": (150.0, 1000.0, True),
        "turn_latency_p50": (1500.0, 2000.0, True), "turn_latency_p99": (1500.0, 10000.0, True),
        "error_rate": (0.0, 0.01, True), "tool_call_success_rate": (1.0, 0.995, True)}
    assert (slos["availability"]["value"], slos["availability"]["window"]["name"]) == (1.0, "month")
    assert slos["error_rate"]["error_budget"] == {"unit": "runs", "allowed": 0.01, "used": 0.0, "left": 0.01,
                                                  "left_fraction": 1.0}
    assert body["sla"]["is_met"] is True and body["sla"]["credit_usd_due"] == "0.00"


def test_a_custom_window_applies_to_every_slo(client, tenant_a):
    # given a run of two hours ago, outside the 5 minute and 1 hour windows
    now = timezone.now()
    with schema_context(tenant_a.schema):
        _started_run(AgentVersionFactory(), now - timedelta(hours=2), 400, 3_000)
    since = (now - timedelta(hours=3)).isoformat()
    # when
    default = client.get("/v1/slos", **bearer(tenant_a.key)).json()
    custom = client.get("/v1/slos", {"since": since}, **bearer(tenant_a.key)).json()
    # then
    assert _slos(default)["agent_start_latency_p50"]["value"] is None
    assert _slos(default)["agent_start_latency_p50"]["is_met"] is None
    assert {slo["window"]["name"] for slo in custom["slos"]} == {"custom"}
    assert (_slos(custom)["agent_start_latency_p50"]["value"], _slos(custom)["turn_latency_p50"]["value"]) == \
        (400.0, 3000.0)
    assert _slos(custom)["turn_latency_p50"]["is_met"] is False


def test_bad_windows_are_refused_with_what_to_fix(client, tenant_a):
    now = timezone.now()
    cases = [({"until": now.isoformat()}, "since", "A custom window needs since (until alone is not one)."),
             ({"since": (now + timedelta(hours=1)).isoformat()}, "since", "since must be before until and before now."),
             ({"since": (now - timedelta(days=40)).isoformat()}, "since",
              "A custom window spans at most 31 days; this one spans 40 days."),
             ({"since": (now + timedelta(hours=1)).isoformat(), "until": (now + timedelta(hours=2)).isoformat()},
              "since", "since must be before until and before now."),
             ({"month": "0000-01"}, "month", "Give the month as YYYY-MM (a year from 2000), for example 2026-03."),
             ({"month": "2026-13"}, "month", "Give the month as YYYY-MM (a year from 2000), for example 2026-03."),
             ({"month": "2999-01"}, "month", "2999-01 has not begun; give this or an earlier month.")]
    for params, field, message in cases:
        response = client.get("/v1/slos", params, **bearer(tenant_a.key))
        assert (response.status_code, response.json()["code"]) == (400, "invalid"), params
        assert response.json()["errors"][field] == [message], response.json()


def test_a_key_without_usage_read_is_refused(client, tenant_a):
    key = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:read"])
    response = client.get("/v1/slos", **bearer(key.plaintext))
    assert (response.status_code, response.json()["code"]) == (403, "missing_scope")


def test_an_operator_reads_every_tenants_slos_and_the_platforms(client, tenant_a, tenant_b, operator_key):
    # given a start of 100 ms in A and of 300 ms in B
    created = timezone.now() - timedelta(minutes=1)
    with schema_context(tenant_a.schema):
        _started_run(AgentVersionFactory(), created, 100, 1_000)
    with schema_context(tenant_b.schema):
        _started_run(AgentVersionFactory(), created, 300, 1_000)
    # when
    response = client.get("/v1/platform/slos", **bearer(operator_key))
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    starts = {report["scope"]: _slos(report)["agent_start_latency_p50"]["value"] for report in body["tenants"]}
    assert starts[tenant_a.tenant.slug] == 100.0 and starts[tenant_b.tenant.slug] == 300.0
    assert body["overall"]["scope"] == "platform" and body["overall"]["sla"] is None
    assert _slos(body["overall"])["agent_start_latency_p50"]["value"] == 200.0
    assert _slos(body["overall"])["agent_start_latency_p50"]["events"] == sum(
        _slos(report)["agent_start_latency_p50"]["events"] for report in body["tenants"])
