"""Model routing policies over the API: validated, audited, one default, explained; runs keep the routing they
started with; agents name policies that exist."""

from __future__ import annotations

import json

import pytest
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, bearer
from control_plane.audit.models import AuditEvent
from data_plane import services
from data_plane.models import RoutingPolicy, Run
from tenants.tests.factories import ApiKeyFactory

POLICY = {"tiers": {"cheap": ["openai/gpt-4o-mini"], "strong": ["openai/gpt-4o", "anthropic/claude-3-5-sonnet"]},
          "rules": [{"name": "code", "when": {"task_kinds": ["code"]}, "tier": "strong"}],
          "complexity_threshold": 0.5}
NORMALIZED = {"tiers": POLICY["tiers"], "rules": [{"name": "code", "when": {"task_kinds": ["code"]}, "tier": "strong"}],
              "complexity_threshold": 0.5}
SPEC = {"instructions": "Be exact.", "models": ["openai/gpt-4o-mini"]}
SIMPLE = "What is 2+2?"
COMPLEX = ("Explain why this Python function is slow, compare two fixes and design a step by step plan to refactor "
           "it. What are the trade-offs? How would you test it?")


def post(client, path, body, key):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def patch(client, path, body, key):
    return client.patch(path, json.dumps(body), content_type="application/json", **bearer(key))


def create(client, key, name="balanced", policy=POLICY, **extra) -> dict:
    response = post(client, "/v1/routing-policies", {"name": name, "policy": policy, **extra}, key)
    assert response.status_code == 201, response.json()
    return response.json()


def stored(tenant) -> list[tuple]:
    with schema_context(tenant.schema):
        return list(RoutingPolicy.objects.order_by("name").values_list("name", "is_default", "policy"))


def test_a_policy_is_created_normalized_listed_read_and_audited(client, tenant_a):
    # when
    created = create(client, tenant_a.key, description="Cheap first", is_default=True)
    # then
    assert (created["name"], created["description"], created["policy"], created["is_default"]) == (
        "balanced", "Cheap first", NORMALIZED, True)
    listed = client.get("/v1/routing-policies", **bearer(tenant_a.key)).json()["results"]
    assert [policy["id"] for policy in listed] == [created["id"]]
    assert client.get(f"/v1/routing-policies/{created['id']}", **bearer(tenant_a.key)).json() == created
    with schema_context(tenant_a.schema):
        audited = AuditEvent.objects.get(action="routing_policy.create")
    assert (audited.target_type, audited.target_id, audited.data) == (
        "routing_policy", created["id"], {"name": "balanced", "is_default": True, "policy": NORMALIZED})


def test_an_invalid_policy_is_400_naming_each_problem_and_creates_nothing(client, tenant_a):
    # when
    response = post(client, "/v1/routing-policies", {"name": "broken", "policy": {
        "tiers": {"cheap": [], "strong": ["gpt-4o"]}, "rules": [{"tier": "medium"}], "complexity_threshold": 2}},
        tenant_a.key)
    # then
    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "routing_policy_invalid"
    assert [(e["path"], e["message"]) for e in problem["errors"]["policy"]] == [
        ("tiers.cheap", "tiers.cheap is a list of 1 to 8 model names, the first preferred, then its fallbacks."),
        ("complexity_threshold", "complexity_threshold is a number from 0 to 1; got 2."),
        ("rules.0.tier", "tier is cheap or strong; got 'medium'.")]
    assert stored(tenant_a) == []


def test_a_name_is_taken_once(client, tenant_a):
    create(client, tenant_a.key)
    response = post(client, "/v1/routing-policies", {"name": "balanced", "policy": POLICY}, tenant_a.key)
    assert (response.status_code, response.json()["code"]) == (409, "routing_policy_name_taken")
    assert [row[0] for row in stored(tenant_a)] == ["balanced"]


def test_one_policy_is_the_default_at_a_time(client, tenant_a):
    first = create(client, tenant_a.key, name="first", is_default=True)
    second = create(client, tenant_a.key, name="second", is_default=True)
    assert [(row[0], row[1]) for row in stored(tenant_a)] == [("first", False), ("second", True)]
    changed = patch(client, f"/v1/routing-policies/{first['id']}", {"is_default": True}, tenant_a.key)
    assert changed.status_code == 200 and changed.json()["is_default"] is True
    assert [(row[0], row[1]) for row in stored(tenant_a)] == [("first", True), ("second", False)]
    assert second["id"] != first["id"]


def test_a_change_is_validated_and_audited(client, tenant_a):
    created = create(client, tenant_a.key)
    refused = patch(client, f"/v1/routing-policies/{created['id']}", {"policy": {"tiers": {}}}, tenant_a.key)
    assert (refused.status_code, refused.json()["code"]) == (400, "routing_policy_invalid")
    empty = patch(client, f"/v1/routing-policies/{created['id']}", {}, tenant_a.key)
    assert empty.status_code == 400
    assert stored(tenant_a) == [("balanced", False, NORMALIZED)]
    changed = patch(client, f"/v1/routing-policies/{created['id']}",
                    {"policy": {**POLICY, "complexity_threshold": 0.7}, "description": "stricter"}, tenant_a.key)
    assert changed.status_code == 200
    assert (changed.json()["policy"]["complexity_threshold"], changed.json()["description"]) == (0.7, "stricter")
    with schema_context(tenant_a.schema):
        audited = AuditEvent.objects.get(action="routing_policy.update")
    assert audited.data == {"name": "balanced", "policy": {**NORMALIZED, "complexity_threshold": 0.7},
                            "description": "stricter"}


@pytest.mark.parametrize("body, tier, model, rule, reason", [
    ({"input": SIMPLE}, "cheap", "openai/gpt-4o-mini", None, "complexity 0.00 < 0.50 (no complexity factor)"),
    ({"input": COMPLEX}, "strong", "openai/gpt-4o", None,
     "complexity 0.51 >= 0.50 (reasoning 0.30, code 0.15, questions 0.05, length 0.01)"),
    ({"input": SIMPLE, "task_kind": "code"}, "strong", "openai/gpt-4o", "code",
     "rule 'code' matched (task kind in (code))"),
])
def test_explain_shows_the_decision_for_an_input_without_calling_anything(client, tenant_a, body, tier, model, rule,
                                                                          reason):
    created = create(client, tenant_a.key)
    response = post(client, f"/v1/routing-policies/{created['id']}/explain", body, tenant_a.key)
    assert response.status_code == 200, response.json()
    decision = response.json()
    assert (decision["tier"], decision["model"], decision["rule"], decision["reason"]) == (tier, model, rule, reason)
    assert decision["models"] == POLICY["tiers"][tier]
    assert decision["policy"] == "tenant:balanced" and decision["threshold"] == 0.5
    assert set(decision["factors"]) == {"length", "questions", "reasoning", "code", "tools", "depth"}


def test_a_policy_an_agent_names_cannot_be_deleted_until_it_names_another(client, tenant_a):
    # given
    created = create(client, tenant_a.key)
    agent = post(client, "/v1/agents", {"name": "router", "spec": {**SPEC, "routing_policy": "balanced"}},
                 tenant_a.key)
    assert agent.status_code == 201, agent.json()
    # when
    refused = client.delete(f"/v1/routing-policies/{created['id']}", **bearer(tenant_a.key))
    # then
    assert (refused.status_code, refused.json()["code"], refused.json()["agents"]) == (
        409, "routing_policy_in_use", ["router"])
    assert [row[0] for row in stored(tenant_a)] == ["balanced"]
    # when the agent stops naming it
    assert patch(client, f"/v1/agents/{agent.json()['id']}", {"spec": SPEC}, tenant_a.key).status_code == 200
    deleted = client.delete(f"/v1/routing-policies/{created['id']}", **bearer(tenant_a.key))
    # then
    assert deleted.status_code == 204
    assert stored(tenant_a) == []
    with schema_context(tenant_a.schema):
        assert AuditEvent.objects.get(action="routing_policy.delete").data == {"name": "balanced"}


def test_an_agent_naming_an_unknown_policy_is_refused(client, tenant_a):
    response = post(client, "/v1/agents", {"name": "lost", "spec": {**SPEC, "routing_policy": "lavish"}},
                    tenant_a.key)
    assert response.status_code == 400
    assert response.json()["code"] == "agent_spec_invalid"
    assert response.json()["errors"]["spec"] == [{
        "path": "routing_policy", "code": "invalid",
        "message": "No routing policy named 'lavish'; the tenant's policies: none yet; create one with "
                   "POST /v1/routing-policies."}]


def test_a_reader_key_reads_and_explains_but_cannot_change(client, tenant_a):
    created = create(client, tenant_a.key)
    reader = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["agents:read"]).plaintext
    assert client.get("/v1/routing-policies", **bearer(reader)).status_code == 200
    assert post(client, f"/v1/routing-policies/{created['id']}/explain", {"input": "hi"}, reader).status_code == 200
    for response in (post(client, "/v1/routing-policies", {"name": "x", "policy": POLICY}, reader),
                     patch(client, f"/v1/routing-policies/{created['id']}", {"description": "x"}, reader),
                     client.delete(f"/v1/routing-policies/{created['id']}", **bearer(reader))):
        assert (response.status_code, response.json()["code"]) == (403, "missing_scope")
    assert stored(tenant_a) == [("balanced", False, NORMALIZED)]


# --- the routing a run starts with -------------------------------------------------------------------

def start(tenant, name, spec, task_kind=""):
    agent = services.agent_create(tenant=tenant.tenant, name=name, description="", spec=spec, actor=TEST_ACTOR)
    return services.run_start(tenant=tenant.tenant, agent_id=agent.id, input="hi", actor=TEST_ACTOR,
                              task_kind=task_kind)


def test_a_run_keeps_the_routing_it_started_with(tenant_a):
    with schema_context(tenant_a.schema):
        # given: no routing anywhere
        plain = start(tenant_a, "plain", SPEC)
        # and a tenant default, a named policy, and an agent's own
        default = services.routing_policy_create(tenant=tenant_a.tenant, name="house", policy=POLICY,
                                                 is_default=True, actor=TEST_ACTOR)
        services.routing_policy_create(tenant=tenant_a.tenant, name="lavish", actor=TEST_ACTOR,
                                       policy={**POLICY, "complexity_threshold": 0.0})
        by_default = start(tenant_a, "defaulted", SPEC, task_kind="code")
        by_name = start(tenant_a, "named", {**SPEC, "routing_policy": "lavish"})
        own = start(tenant_a, "own", {**SPEC, "routing": {"tiers": {"cheap": ["a"], "strong": ["b"]}}})
        # when the default changes afterwards
        services.routing_policy_update(tenant=tenant_a.tenant, policy_id=default.id, actor=TEST_ACTOR,
                                       policy={**POLICY, "complexity_threshold": 0.9})
        # then each run has what it resolved to when it started
        routing = {run.id: Run.objects.get(id=run.id).routing for run in (plain, by_default, by_name, own)}
    assert routing[plain.id] is None
    assert routing[by_default.id] == {"policy": NORMALIZED, "source": "tenant default:house", "task_kind": "code"}
    assert routing[by_name.id] == {"policy": {**NORMALIZED, "complexity_threshold": 0.0}, "source": "tenant:lavish",
                                   "task_kind": ""}
    assert routing[own.id] == {"policy": {"tiers": {"cheap": ["a"], "strong": ["b"]}, "rules": [],
                                          "complexity_threshold": 0.5}, "source": "agent", "task_kind": ""}
