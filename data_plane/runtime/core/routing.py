"""Model routing: which models an LLM call goes to, and why. Pure: no clock, no IO, same inputs same answer.

A policy has two tiers, ``cheap`` and ``strong``, each an ordered tuple of models (the first preferred, the
rest its fallbacks when a provider is rate limited or down). Its ordered ``rules`` match on the run's task
kind, the call's input size in tokens, the number of tools offered and the complexity estimate; the first
rule that matches names the tier. When none matches, the complexity estimate decides: at or above
``complexity_threshold`` the strong tier, below it the cheap one. ``fallbacks`` optionally lets a tier fall
back across tiers (``{"cheap": "strong"}``: when every cheap model is unavailable, the strong ones follow).

``estimate_complexity`` is a deterministic heuristic over the request (its length, how many questions or
steps it asks for, reasoning and code cues, the tools offered and the conversation's depth): a score from 0
to 1 and each factor's contribution, so a decision can always be explained.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

TIERS = ("cheap", "strong")
DEFAULT_COMPLEXITY_THRESHOLD = 0.5
MAX_MODELS_PER_TIER = 8
MAX_RULES = 50
MAX_RULE_NAME = 100

# Each factor's weight in the complexity score (they add up to 1) and the count at which it is full.
COMPLEXITY_WEIGHTS: Mapping[str, float] = {"length": 0.25, "questions": 0.2, "reasoning": 0.3, "code": 0.15,
                                           "tools": 0.05, "depth": 0.05}
_FULL_LENGTH_TOKENS = 800  # a request this long (about four characters a token) has the whole length weight
_FULL_QUESTIONS = 4  # questions or steps beyond the first
_FULL_REASONING = 3  # distinct reasoning cues
_FULL_CODE = 2  # distinct code cues
_FULL_TOOLS = 8
_FULL_DEPTH = 12  # messages before the latest

_REASONING_CUES = ("why", "explain", "analyze", "analyse", "analysis", "compare", "contrast", "evaluate", "prove",
                   "derive", "reason", "reasoning", "trade-off", "trade-offs", "tradeoff", "tradeoffs",
                   "pros and cons", "plan", "design", "strategy", "optimize", "optimise", "diagnose", "justify",
                   "step by step", "assess", "architecture", "root cause")
_CODE_CUES = ("```", "def ", "class ", "function", "traceback", "stack trace", "exception", "sql", "regex",
              "refactor", "implement", "algorithm", "compile", "debug", "python", "javascript", "typescript")
_STEP_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+\S", re.MULTILINE)
_STEP_WORDS = re.compile(r"\b(?:then|next|finally|afterwards|after that)\b")


def _cue_pattern(cue: str) -> re.Pattern[str]:
    """A cue as a whole word or phrase (``plan`` does not match ``planet``); symbols match as they are."""
    if not cue[0].isalnum():
        return re.compile(re.escape(cue))
    tail = r"\b" if cue[-1].isalnum() else ""
    return re.compile(r"\b" + re.escape(cue) + tail)


_REASONING_PATTERNS = tuple((cue, _cue_pattern(cue)) for cue in _REASONING_CUES)
_CODE_PATTERNS = tuple((cue, _cue_pattern(cue)) for cue in _CODE_CUES)


class RoutingPolicyInvalid(ValueError):
    """A routing policy document with problems: ``errors`` lists each (path, code, message)."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['path']}: {e['message']}" if e["path"] else e["message"] for e in errors))


# --- Complexity -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Complexity:
    """A request's complexity from 0 to 1, and each factor's contribution to it (they add up to the score)."""

    score: float
    factors: Mapping[str, float]
    cues: tuple[str, ...] = ()  # the reasoning and code cues found, for the explanation

    def explain(self) -> str:
        """The factors that contributed, largest first: ``reasoning 0.30, code 0.15``."""
        parts = [f"{name} {value:.2f}" for name, value in sorted(self.factors.items(), key=lambda kv: (-kv[1], kv[0]))
                 if value >= 0.005]
        return ", ".join(parts) if parts else "no complexity factor"

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "factors": dict(self.factors), "cues": list(self.cues)}


def estimate_complexity(text: str, *, tools: int = 0, depth: int = 0) -> Complexity:
    """How complex the request ``text`` looks, from 0 (a one-line question) to 1. ``tools`` is how many tools
    the call offers; ``depth`` how many messages of the conversation came before the request."""
    lowered = text.lower()
    tokens = (len(text) + 3) // 4
    questions = lowered.count("?") + len(_STEP_LINE.findall(text)) + len(_STEP_WORDS.findall(lowered))
    reasoning = tuple(cue for cue, pattern in _REASONING_PATTERNS if pattern.search(lowered))
    code = tuple(cue for cue, pattern in _CODE_PATTERNS if pattern.search(lowered))
    fractions = {
        "length": min(1.0, tokens / _FULL_LENGTH_TOKENS),
        "questions": min(1.0, max(0, questions - 1) / _FULL_QUESTIONS),
        "reasoning": min(1.0, len(reasoning) / _FULL_REASONING),
        "code": min(1.0, len(code) / _FULL_CODE),
        "tools": min(1.0, max(0, tools) / _FULL_TOOLS),
        "depth": min(1.0, max(0, depth) / _FULL_DEPTH),
    }
    factors = {name: round(COMPLEXITY_WEIGHTS[name] * fraction, 3) for name, fraction in fractions.items()}
    return Complexity(score=round(min(1.0, sum(factors.values())), 3), factors=factors,
                      cues=tuple(cue.strip() for cue in reasoning + code))


# --- Policy -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RouteFeatures:
    """What a routing decision looks at, for one LLM call."""

    task_kind: str
    input_tokens: int
    tools: int
    complexity: Complexity

    def to_json(self) -> dict[str, Any]:
        return {"task_kind": self.task_kind, "input_tokens": self.input_tokens, "tools": self.tools,
                "complexity": self.complexity.score}


@dataclass(frozen=True)
class RouteRule:
    """Sends a call to ``tier`` when every condition given holds (bounds are inclusive; absent ones hold)."""

    tier: str
    name: str = ""
    task_kinds: tuple[str, ...] = ()
    min_input_tokens: int | None = None
    max_input_tokens: int | None = None
    min_tools: int | None = None
    max_tools: int | None = None
    min_complexity: float | None = None
    max_complexity: float | None = None

    def matches(self, features: RouteFeatures) -> bool:
        if self.task_kinds and features.task_kind not in self.task_kinds:
            return False
        ranges = ((self.min_input_tokens, self.max_input_tokens, features.input_tokens),
                  (self.min_tools, self.max_tools, features.tools),
                  (self.min_complexity, self.max_complexity, features.complexity.score))
        return all((low is None or value >= low) and (high is None or value <= high) for low, high, value in ranges)

    def describe(self) -> str:
        """The rule's conditions as text: ``task kind in (code), input tokens >= 2000``."""
        parts = [f"task kind in ({', '.join(self.task_kinds)})"] if self.task_kinds else []
        for label, low, high in (("input tokens", self.min_input_tokens, self.max_input_tokens),
                                 ("tools", self.min_tools, self.max_tools),
                                 ("complexity", self.min_complexity, self.max_complexity)):
            if low is not None:
                parts.append(f"{label} >= {low}")
            if high is not None:
                parts.append(f"{label} <= {high}")
        return ", ".join(parts) or "always"

    def to_json(self) -> dict[str, Any]:
        when: dict[str, Any] = {}
        if self.task_kinds:
            when["task_kinds"] = list(self.task_kinds)
        for name in _BOUNDS:
            value = getattr(self, name)
            if value is not None:
                when[name] = value
        data: dict[str, Any] = {"when": when, "tier": self.tier}
        if self.name:
            data = {"name": self.name, **data}
        return data


@dataclass(frozen=True)
class RoutingPolicy:
    cheap: tuple[str, ...]
    strong: tuple[str, ...]
    rules: tuple[RouteRule, ...] = ()
    complexity_threshold: float = DEFAULT_COMPLEXITY_THRESHOLD
    fallbacks: Mapping[str, str] = field(default_factory=dict)  # tier -> the tier whose models follow its own

    def tier_models(self, tier: str) -> tuple[str, ...]:
        """The models a call routed to ``tier`` may use, in order: the tier's, then its fallback tier's."""
        own = self.cheap if tier == "cheap" else self.strong
        other = self.fallbacks.get(tier)
        if other is None:
            return own
        return tuple(dict.fromkeys(own + (self.cheap if other == "cheap" else self.strong)))

    def all_models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.cheap + self.strong))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tiers": {"cheap": list(self.cheap), "strong": list(self.strong)},
                                "rules": [rule.to_json() for rule in self.rules],
                                "complexity_threshold": self.complexity_threshold}
        if self.fallbacks:
            data["fallbacks"] = dict(self.fallbacks)
        return data


@dataclass(frozen=True)
class RouteDecision:
    tier: str
    models: tuple[str, ...]
    rule: str | None  # the name of the rule that matched; None when the complexity estimate decided
    reason: str
    complexity: float
    features: RouteFeatures

    @property
    def model(self) -> str:
        return self.models[0]

    def to_json(self) -> dict[str, Any]:
        return {"tier": self.tier, "model": self.model, "models": list(self.models), "rule": self.rule,
                "reason": self.reason, "complexity": self.complexity, **{
                    key: value for key, value in self.features.to_json().items() if key != "complexity"}}


def route(policy: RoutingPolicy, features: RouteFeatures) -> RouteDecision:
    """The tier and models for a call with these features: the first matching rule's tier, else the complexity
    estimate against the policy's threshold."""
    score = features.complexity.score
    for index, rule in enumerate(policy.rules):
        if rule.matches(features):
            name = rule.name or f"rules.{index}"
            return RouteDecision(tier=rule.tier, models=policy.tier_models(rule.tier), rule=name,
                                 reason=f"rule {name!r} matched ({rule.describe()})", complexity=score,
                                 features=features)
    threshold = policy.complexity_threshold
    tier = "strong" if score >= threshold else "cheap"
    comparison = ">=" if tier == "strong" else "<"
    return RouteDecision(tier=tier, models=policy.tier_models(tier), rule=None,
                         reason=f"complexity {score:.2f} {comparison} {threshold:.2f} "
                                f"({features.complexity.explain()})", complexity=score, features=features)


# --- A run's routing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunRouting:
    """The routing of one run, fixed when the run is created (so a recomputed step routes the same way): the
    policy it resolved to, where that came from (``agent``, ``tenant:<name>``) and the run's task kind."""

    policy: RoutingPolicy
    source: str
    task_kind: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy.to_json(), "source": self.source, "task_kind": self.task_kind}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRouting:
        return cls(policy=policy_from_json(data["policy"]), source=str(data.get("source", "")),
                   task_kind=str(data.get("task_kind", "")))


# --- Parsing --------------------------------------------------------------------------------------------

_BOUNDS = ("min_input_tokens", "max_input_tokens", "min_tools", "max_tools", "min_complexity", "max_complexity")
_POLICY_FIELDS = ("tiers", "rules", "complexity_threshold", "fallbacks")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def policy_from_json(data: Any) -> RoutingPolicy:
    """Parse and validate a routing policy. Raises RoutingPolicyInvalid listing every problem, by path."""
    errors: list[dict[str, str]] = []
    policy = parse_policy(data, lambda path, message: errors.append({"path": path, "code": "invalid",
                                                                     "message": message}))
    if errors or policy is None:
        raise RoutingPolicyInvalid(errors or [{"path": "", "code": "invalid", "message": "Not a routing policy."}])
    return policy


def parse_policy(data: Any, error: Callable[[str, str], None], prefix: str = "") -> RoutingPolicy | None:
    """The policy in ``data``; each problem goes to ``error`` (path under ``prefix``, message). None when the
    document has problems."""
    def at(path: str) -> str:
        return f"{prefix}.{path}" if prefix and path else (prefix or path)

    count = 0

    def fail(path: str, message: str) -> None:
        nonlocal count
        count += 1
        error(at(path), message)

    if not isinstance(data, dict):
        fail("", "A routing policy is an object: tiers {cheap: [models], strong: [models]}, rules, "
                 "complexity_threshold and fallbacks.")
        return None
    for unknown in sorted(set(data) - set(_POLICY_FIELDS)):
        fail(unknown, f"Unknown routing setting {unknown!r}; the settings are {', '.join(_POLICY_FIELDS)}.")
    tiers = data.get("tiers")
    models: dict[str, tuple[str, ...]] = {"cheap": (), "strong": ()}
    if not isinstance(tiers, dict):
        fail("tiers", "tiers is an object with a cheap and a strong list of models, e.g. "
                      '{"cheap": ["gpt-4o-mini"], "strong": ["gpt-4o"]}.')
    else:
        for unknown in sorted(set(tiers) - set(TIERS)):
            fail(f"tiers.{unknown}", f"Unknown tier {unknown!r}; the tiers are cheap and strong.")
        for tier in TIERS:
            listed = tiers.get(tier)
            if (not isinstance(listed, list) or not listed or len(listed) > MAX_MODELS_PER_TIER
                    or not all(isinstance(m, str) and m.strip() for m in listed)):
                fail(f"tiers.{tier}", f"tiers.{tier} is a list of 1 to {MAX_MODELS_PER_TIER} model names, the "
                                      "first preferred, then its fallbacks.")
            elif len(set(listed)) != len(listed):
                fail(f"tiers.{tier}", f"tiers.{tier} names a model twice.")
            else:
                models[tier] = tuple(m.strip() for m in listed)
    threshold = data.get("complexity_threshold", DEFAULT_COMPLEXITY_THRESHOLD)
    if not _is_number(threshold) or not 0 <= threshold <= 1:
        fail("complexity_threshold", f"complexity_threshold is a number from 0 to 1; got {threshold!r}.")
        threshold = DEFAULT_COMPLEXITY_THRESHOLD
    fallbacks = data.get("fallbacks") or {}
    if not isinstance(fallbacks, dict):
        fail("fallbacks", 'fallbacks maps a tier to the tier that follows it when all its models are unavailable, '
                          'e.g. {"cheap": "strong"}.')
        fallbacks = {}
    for tier, other in fallbacks.items():
        if tier not in TIERS:
            fail(f"fallbacks.{tier}", f"Unknown tier {tier!r}; the tiers are cheap and strong.")
        elif other not in TIERS or other == tier:
            fail(f"fallbacks.{tier}", f"fallbacks.{tier} names the other tier "
                                      f"({'strong' if tier == 'cheap' else 'cheap'}); got {other!r}.")
    rules: list[RouteRule] = []
    raw_rules = data.get("rules") or []
    if not isinstance(raw_rules, list) or len(raw_rules) > MAX_RULES:
        fail("rules", f"rules is a list of at most {MAX_RULES} rules, each "
                      '{"name": ..., "when": {...}, "tier": "cheap" or "strong"}; the first that matches decides.')
        raw_rules = []
    for index, raw in enumerate(raw_rules):
        rule = _parse_rule(raw, lambda path, message, i=index: fail(f"rules.{i}{'.' + path if path else ''}",
                                                                    message))
        if rule is not None:
            rules.append(rule)
    names = [rule.name for rule in rules if rule.name]
    for duplicate in sorted({name for name in names if names.count(name) > 1}):
        fail("rules", f"Two rules are named {duplicate!r}; give each rule its own name.")
    if count:
        return None
    return RoutingPolicy(cheap=models["cheap"], strong=models["strong"], rules=tuple(rules),
                         complexity_threshold=float(threshold), fallbacks=dict(fallbacks))


def _parse_rule(raw: Any, fail: Callable[[str, str], None]) -> RouteRule | None:
    if not isinstance(raw, dict):
        fail("", 'A rule is an object: {"name": ..., "when": {...}, "tier": "cheap" or "strong"}.')
        return None
    problems = 0

    def problem(path: str, message: str) -> None:
        nonlocal problems
        problems += 1
        fail(path, message)

    for unknown in sorted(set(raw) - {"name", "when", "tier"}):
        problem(unknown, f"Unknown rule field {unknown!r}; a rule has name, when and tier.")
    tier = raw.get("tier")
    if tier not in TIERS:
        problem("tier", f"tier is cheap or strong; got {tier!r}.")
    name = raw.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_RULE_NAME:
        problem("name", f"name is a text of at most {MAX_RULE_NAME} characters.")
        name = ""
    when = raw.get("when", {})
    if not isinstance(when, dict):
        problem("when", "when is an object of conditions: task_kinds, min_input_tokens, max_input_tokens, "
                        "min_tools, max_tools, min_complexity, max_complexity.")
        return None
    for unknown in sorted(set(when) - {"task_kinds", *_BOUNDS}):
        problem(f"when.{unknown}", f"Unknown condition {unknown!r}; the conditions are task_kinds, "
                                   f"{', '.join(_BOUNDS)}.")
    kinds = when.get("task_kinds", [])
    if not isinstance(kinds, list) or not all(isinstance(k, str) and k for k in kinds):
        problem("when.task_kinds", "task_kinds is a list of task kinds (the run's task_kind), any of which matches.")
        kinds = []
    bounds: dict[str, Any] = {}
    for bound in _BOUNDS:
        if bound not in when or when[bound] is None:
            continue
        value = when[bound]
        if bound.endswith("complexity"):
            if not _is_number(value) or not 0 <= value <= 1:
                problem(f"when.{bound}", f"{bound} is a number from 0 to 1; got {value!r}.")
                continue
            bounds[bound] = float(value)
        elif not _is_count(value):
            problem(f"when.{bound}", f"{bound} is a whole number, 0 or more; got {value!r}.")
        else:
            bounds[bound] = value
    for low, high in (("min_input_tokens", "max_input_tokens"), ("min_tools", "max_tools"),
                      ("min_complexity", "max_complexity")):
        if low in bounds and high in bounds and bounds[low] > bounds[high]:
            problem(f"when.{low}", f"{low} ({bounds[low]}) is above {high} ({bounds[high]}): the rule could "
                                   "never match.")
    if problems:
        return None
    return RouteRule(tier=str(tier), name=name, task_kinds=tuple(kinds), **bounds)
