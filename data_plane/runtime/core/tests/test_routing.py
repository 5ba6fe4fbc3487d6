"""Routing decisions, the complexity estimate and policy parsing: pure, table-driven."""

from __future__ import annotations

from dataclasses import replace

import pytest

from data_plane.runtime.core import machine
from data_plane.runtime.core.graph import GraphInvalid
from data_plane.runtime.core.messages import Usage
from data_plane.runtime.core.ports import ModelReply, with_fallback
from data_plane.runtime.core.messages import Message
from data_plane.runtime.core.routing import (
    Complexity,
    RouteFeatures,
    RoutingPolicyInvalid,
    RunRouting,
    estimate_complexity,
    policy_from_json,
    route,
)
from data_plane.runtime.core.spec import spec_from_json

SIMPLE = "What is 2+2?"
COMPLEX = ("Explain why this Python function is slow, compare two fixes and design a step by step plan to refactor "
           "it. What are the trade-offs? How would you test it?")

POLICY = policy_from_json({
    "tiers": {"cheap": ["gpt-4o-mini", "claude-3-haiku-20240307"], "strong": ["gpt-4o"]},
    "rules": [
        {"name": "code is strong", "when": {"task_kinds": ["code", "sql"]}, "tier": "strong"},
        {"name": "long inputs", "when": {"min_input_tokens": 4000}, "tier": "strong"},
        {"name": "many tools", "when": {"min_tools": 10, "max_complexity": 0.9}, "tier": "strong"},
        {"name": "small talk", "when": {"task_kinds": ["chat"], "max_input_tokens": 200}, "tier": "cheap"},
    ],
    "complexity_threshold": 0.5,
})


def features(task_kind: str = "", input_tokens: int = 100, tools: int = 0, score: float = 0.0) -> RouteFeatures:
    return RouteFeatures(task_kind=task_kind, input_tokens=input_tokens, tools=tools,
                         complexity=Complexity(score=score, factors={"reasoning": score}))


@pytest.mark.parametrize("given, tier, rule, reason", [
    (features(task_kind="code"), "strong", "code is strong", "rule 'code is strong' matched (task kind in (code, sql))"),
    (features(task_kind="sql", score=0.0), "strong", "code is strong",
     "rule 'code is strong' matched (task kind in (code, sql))"),
    (features(input_tokens=4000), "strong", "long inputs", "rule 'long inputs' matched (input tokens >= 4000)"),
    (features(input_tokens=3999), "cheap", None, "complexity 0.00 < 0.50 (no complexity factor)"),
    (features(tools=10, score=0.2), "strong", "many tools",
     "rule 'many tools' matched (tools >= 10, complexity <= 0.9)"),
    (features(tools=10, score=0.95), "strong", None, "complexity 0.95 >= 0.50 (reasoning 0.95)"),
    (features(task_kind="chat", input_tokens=150, score=0.8), "cheap", "small talk",
     "rule 'small talk' matched (task kind in (chat), input tokens <= 200)"),
    (features(task_kind="chat", input_tokens=201, score=0.8), "strong", None,
     "complexity 0.80 >= 0.50 (reasoning 0.80)"),
    (features(score=0.5), "strong", None, "complexity 0.50 >= 0.50 (reasoning 0.50)"),
    (features(score=0.49), "cheap", None, "complexity 0.49 < 0.50 (reasoning 0.49)"),
])
def test_the_first_matching_rule_decides_else_the_complexity(given, tier, rule, reason):
    decision = route(POLICY, given)
    assert (decision.tier, decision.rule, decision.reason) == (tier, rule, reason)
    assert decision.models == (("gpt-4o",) if tier == "strong" else ("gpt-4o-mini", "claude-3-haiku-20240307"))
    assert decision.model == decision.models[0]
    assert decision.complexity == given.complexity.score


def test_a_rule_without_a_name_is_named_by_its_position():
    policy = policy_from_json({"tiers": {"cheap": ["a"], "strong": ["b"]},
                               "rules": [{"when": {"min_tools": 99}, "tier": "cheap"}, {"tier": "strong"}]})
    decision = route(policy, features())
    assert (decision.tier, decision.rule, decision.reason) == ("strong", "rules.1", "rule 'rules.1' matched (always)")


@pytest.mark.parametrize("fallbacks, cheap, strong", [
    ({}, ("c1", "c2"), ("s1",)),
    ({"cheap": "strong"}, ("c1", "c2", "s1"), ("s1",)),
    ({"strong": "cheap"}, ("c1", "c2"), ("s1", "c1", "c2")),
    ({"cheap": "strong", "strong": "cheap"}, ("c1", "c2", "s1"), ("s1", "c1", "c2")),
])
def test_fallbacks_across_tiers_follow_the_tiers_own_models(fallbacks, cheap, strong):
    policy = policy_from_json({"tiers": {"cheap": ["c1", "c2"], "strong": ["s1"]}, "fallbacks": fallbacks})
    assert route(policy, features(score=0.1)).models == cheap
    assert route(policy, features(score=0.9)).models == strong


@pytest.mark.parametrize("text, tools, depth, score, factors", [
    (SIMPLE, 0, 0, 0.001, {"length": 0.001, "questions": 0.0, "reasoning": 0.0, "code": 0.0, "tools": 0.0,
                           "depth": 0.0}),
    ("", 0, 0, 0.0, {"length": 0.0, "questions": 0.0, "reasoning": 0.0, "code": 0.0, "tools": 0.0, "depth": 0.0}),
    (COMPLEX, 0, 0, 0.512, {"length": 0.012, "questions": 0.05, "reasoning": 0.3, "code": 0.15, "tools": 0.0,
                            "depth": 0.0}),
    ("Plan a trip to the planet Mars", 0, 0, 0.103, {"length": 0.003, "questions": 0.0, "reasoning": 0.1, "code": 0.0,
                                                     "tools": 0.0, "depth": 0.0}),
    # four step lines and a "then": five, four beyond the first, the whole weight
    ("1. Fetch the data\n2. Clean it\n3. Chart it\n- then mail it", 4, 6, 0.254,
     {"length": 0.004, "questions": 0.2, "reasoning": 0.0, "code": 0.0, "tools": 0.025, "depth": 0.025}),
    ("x" * 4000, 16, 24, 0.35, {"length": 0.25, "questions": 0.0, "reasoning": 0.0, "code": 0.0, "tools": 0.05,
                                "depth": 0.05}),
])
def test_the_complexity_estimate_is_explainable(text, tools, depth, score, factors):
    complexity = estimate_complexity(text, tools=tools, depth=depth)
    assert complexity.score == score
    assert dict(complexity.factors) == factors
    assert estimate_complexity(text, tools=tools, depth=depth) == complexity  # deterministic


def test_the_complexity_names_its_cues_and_explains_the_largest_factors_first():
    complexity = estimate_complexity(COMPLEX)
    assert complexity.cues == ("why", "explain", "compare", "trade-offs", "plan", "design", "step by step",
                               "function", "refactor", "python")
    assert complexity.explain() == "reasoning 0.30, code 0.15, questions 0.05, length 0.01"


@pytest.mark.parametrize("document, errors", [
    ("cheap", [("", "A routing policy is an object: tiers {cheap: [models], strong: [models]}, rules, "
                    "complexity_threshold and fallbacks.")]),
    ({}, [("tiers", 'tiers is an object with a cheap and a strong list of models, e.g. {"cheap": ["gpt-4o-mini"], '
                    '"strong": ["gpt-4o"]}.')]),
    ({"tiers": {"cheap": ["a"], "strong": []}},
     [("tiers.strong", "tiers.strong is a list of 1 to 8 model names, the first preferred, then its fallbacks.")]),
    ({"tiers": {"cheap": ["a", "a"], "strong": ["b"], "medium": ["c"]}},
     [("tiers.medium", "Unknown tier 'medium'; the tiers are cheap and strong."),
      ("tiers.cheap", "tiers.cheap names a model twice.")]),
    ({"tiers": {"cheap": ["a"], "strong": ["b"]}, "complexity_threshold": 1.5, "fallback": {}},
     [("fallback", "Unknown routing setting 'fallback'; the settings are tiers, rules, complexity_threshold, "
                   "fallbacks."),
      ("complexity_threshold", "complexity_threshold is a number from 0 to 1; got 1.5.")]),
    ({"tiers": {"cheap": ["a"], "strong": ["b"]}, "fallbacks": {"cheap": "cheap", "premium": "strong"}},
     [("fallbacks.cheap", "fallbacks.cheap names the other tier (strong); got 'cheap'."),
      ("fallbacks.premium", "Unknown tier 'premium'; the tiers are cheap and strong.")]),
    ({"tiers": {"cheap": ["a"], "strong": ["b"]}, "rules": [
        {"name": "r", "when": {"min_tools": -1, "max_complexity": 2, "colour": "red"}, "tier": "best"},
        {"name": "s", "when": {"min_input_tokens": 500, "max_input_tokens": 100, "task_kinds": "code"},
         "tier": "cheap"},
        "always strong"]},
     [("rules.0.tier", "tier is cheap or strong; got 'best'."),
      ("rules.0.when.colour", "Unknown condition 'colour'; the conditions are task_kinds, min_input_tokens, "
                              "max_input_tokens, min_tools, max_tools, min_complexity, max_complexity."),
      ("rules.0.when.min_tools", "min_tools is a whole number, 0 or more; got -1."),
      ("rules.0.when.max_complexity", "max_complexity is a number from 0 to 1; got 2."),
      ("rules.1.when.task_kinds", "task_kinds is a list of task kinds (the run's task_kind), any of which matches."),
      ("rules.1.when.min_input_tokens", "min_input_tokens (500) is above max_input_tokens (100): the rule could "
                                        "never match."),
      ("rules.2", 'A rule is an object: {"name": ..., "when": {...}, "tier": "cheap" or "strong"}.')]),
    ({"tiers": {"cheap": ["a"], "strong": ["b"]}, "rules": [{"name": "x", "tier": "cheap"},
                                                             {"name": "x", "tier": "strong"}]},
     [("rules", "Two rules are named 'x'; give each rule its own name.")]),
])
def test_an_invalid_policy_is_refused_with_every_problem_by_path(document, errors):
    with pytest.raises(RoutingPolicyInvalid) as refused:
        policy_from_json(document)
    assert [(e["path"], e["message"]) for e in refused.value.errors] == errors


def test_a_policy_round_trips_through_json():
    assert policy_from_json(POLICY.to_json()) == POLICY
    run_routing = RunRouting(policy=POLICY, source="tenant:default", task_kind="code")
    assert RunRouting.from_json(run_routing.to_json()) == run_routing


# --- the agent spec -------------------------------------------------------------------------------------

BASE = {"instructions": "x", "models": ["gpt-4o-mini"]}


def test_an_agent_spec_takes_its_own_routing_or_a_tenant_policy_by_name():
    own = spec_from_json({**BASE, "routing": POLICY.to_json()})
    assert own.routing == POLICY and own.routing_policy is None
    assert spec_from_json(own.to_json()) == own
    assert own.model_policy() == ("gpt-4o-mini", "claude-3-haiku-20240307", "gpt-4o")
    named = spec_from_json({**BASE, "routing_policy": "frugal"}, known_routing_policies={"frugal"})
    assert (named.routing, named.routing_policy, named.to_json()["routing_policy"]) == (None, "frugal", "frugal")
    assert "routing" not in spec_from_json(BASE).to_json()


@pytest.mark.parametrize("extra, known, errors", [
    ({"routing": {"tiers": {"cheap": ["a"]}, "rules": [{"tier": "fast"}]}}, None, [
        ("routing.tiers.strong", "tiers.strong is a list of 1 to 8 model names, the first preferred, then its "
                                 "fallbacks."),
        ("routing.rules.0.tier", "tier is cheap or strong; got 'fast'.")]),
    ({"routing": ["gpt-4o"]}, None, [
        ("routing", "A routing policy is an object: tiers {cheap: [models], strong: [models]}, rules, "
                    "complexity_threshold and fallbacks.")]),
    ({"routing": POLICY.to_json(), "routing_policy": "frugal"}, None, [
        ("routing_policy", "Give either routing (the agent's own policy) or routing_policy (the name of a tenant "
                           "policy), not both.")]),
    ({"routing_policy": "lavish"}, {"frugal", "balanced"}, [
        ("routing_policy", "No routing policy named 'lavish'; the tenant's policies: balanced, frugal.")]),
    ({"routing_policy": "lavish"}, set(), [
        ("routing_policy", "No routing policy named 'lavish'; the tenant's policies: none yet; create one with "
                           "POST /v1/routing-policies.")]),
    ({"routing_policy": 7}, None, [
        ("routing_policy", "routing_policy is the name of one of the tenant's routing policies.")]),
])
def test_an_agent_spec_with_bad_routing_is_refused_with_clear_errors(extra, known, errors):
    with pytest.raises(GraphInvalid) as refused:
        spec_from_json({**BASE, **extra}, known_routing_policies=known)
    assert [(e["path"], e["message"]) for e in refused.value.errors] == errors


# --- applied by the machine --------------------------------------------------------------------------

ONE_CALL = {"entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}


def routed_spec(task_kind: str = "", **spec):
    parsed = spec_from_json({**BASE, "graph": ONE_CALL, **spec})
    return replace(parsed, run_routing=RunRouting(policy=POLICY, source="tenant:balanced", task_kind=task_kind))


@pytest.mark.parametrize("text, task_kind, models, route_json", [
    (SIMPLE, "", ("gpt-4o-mini", "claude-3-haiku-20240307"), {
        "tier": "cheap", "model": "gpt-4o-mini", "models": ["gpt-4o-mini", "claude-3-haiku-20240307"], "rule": None,
        "reason": "complexity 0.00 < 0.50 (no complexity factor)", "complexity": 0.001, "task_kind": "",
        "input_tokens": 10, "tools": 0, "policy": "tenant:balanced"}),
    (COMPLEX, "", ("gpt-4o",), {
        "tier": "strong", "model": "gpt-4o", "models": ["gpt-4o"], "rule": None,
        "reason": "complexity 0.51 >= 0.50 (reasoning 0.30, code 0.15, questions 0.05, length 0.01)",
        "complexity": 0.512, "task_kind": "", "input_tokens": 46, "tools": 0, "policy": "tenant:balanced"}),
    (SIMPLE, "code", ("gpt-4o",), {
        "tier": "strong", "model": "gpt-4o", "models": ["gpt-4o"], "rule": "code is strong",
        "reason": "rule 'code is strong' matched (task kind in (code, sql))", "complexity": 0.001, "task_kind": "code",
        "input_tokens": 10, "tools": 0, "policy": "tenant:balanced"}),
])
def test_each_model_call_goes_to_the_routed_models_and_carries_the_decision(text, task_kind, models, route_json):
    spec = routed_spec(task_kind)
    state, commands = machine.start(spec, input=text, now=0.0)
    [call] = commands
    assert call.request.models == models
    assert call.request.metadata["route"] == route_json
    # recomputed (a crash, then the step again): the same models, the same decision
    assert machine.pending_commands(state, spec) == commands


def test_a_node_that_names_its_models_keeps_them_and_a_run_without_routing_uses_the_spec_models():
    graph = {"entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end", "models": ["o1"]},
                                          {"id": "end", "kind": "end"}]}
    [call] = machine.start(routed_spec(graph=graph), input=COMPLEX, now=0.0)[1]
    assert (call.request.models, "route" in call.request.metadata) == (("o1",), False)
    [plain] = machine.start(spec_from_json({**BASE, "graph": ONE_CALL, "routing": POLICY.to_json()}), input=COMPLEX,
                            now=0.0)[1]
    assert (plain.request.models, "route" in plain.request.metadata) == (("gpt-4o-mini",), False)


# --- fallbacks recorded on the reply -----------------------------------------------------------------

def test_a_reply_from_a_fallback_model_names_the_model_it_fell_back_from_and_the_errors():
    reply = ModelReply(message=Message(role="assistant", content="hi"), usage=Usage(model="b", attempts=3))
    fell = with_fallback(reply, ("a", "b"), ["a: RateLimitError (HTTP 429): slow down", "a: x" * 200])
    assert fell.usage.fell_back_from == "a"
    assert fell.usage.errors == ("a: RateLimitError (HTTP 429): slow down", ("a: x" * 200)[:300] + "…")
    assert with_fallback(reply, ("b",), []) is reply
    retried = with_fallback(reply, ("b",), ["b: APIError (HTTP 503): busy"])
    assert (retried.usage.fell_back_from, retried.usage.errors) == (None, ("b: APIError (HTTP 503): busy",))


def test_usage_json_stays_loadable_both_ways():
    old = {"model": "m", "input_tokens": 1, "output_tokens": 2, "cached_input_tokens": 0, "cost_usd": 0.1,
           "latency_ms": 3.0, "attempts": 1}
    assert Usage.from_json(old) == Usage(model="m", input_tokens=1, output_tokens=2, cost_usd=0.1, latency_ms=3.0)
    assert Usage.from_json(old).to_json() == old  # unchanged when nothing fell back
    fell = Usage(model="b", attempts=5, fell_back_from="a", errors=("a: down",))
    assert fell.to_json()["fell_back_from"] == "a" and fell.to_json()["errors"] == ["a: down"]
    assert Usage.from_json(fell.to_json()) == fell
