"""A guardrail policy: which check runs at which point, and what its finding makes happen. Pure Python.

A policy's JSON (what the API takes, stored per tenant and per agent)::

    {"actions": {"input": {"injection": "block", "secrets": "redact"},
                 "output": {"pii": "redact", "topic": "block"},
                 "tool_arguments": {"secrets": "require_approval"},
                 "tool_result": {"injection": "block"}},
     "injection": {"threshold": 0.5},
     "pii": {"kinds": ["email", "payment_card"]},
     "topics": {"colang": "...", "yaml": "..."},
     "output_schema": {...a JSON schema...},
     "max_input_characters": 20000, "max_output_characters": 20000}

Layers: the platform's defaults, then the tenant's policy, then the agent's; each layer overrides the one
below per point and check (``actions``) and per setting. An action ``off`` turns a check off at a point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guardrails.checks.base import POINTS

ACTIONS = ("off", "flag", "redact", "require_approval", "block")
# How strong an action is: one text's outcome is its checks' strongest action.
STRENGTH = {"allow": 0, "off": 0, "flag": 1, "redact": 2, "require_approval": 3, "block": 4}
CHECKS = ("injection", "pii", "secrets", "topic", "schema", "length")
REDACTABLE = ("pii", "secrets")  # the checks that say where their findings are
APPROVABLE_POINTS = ("tool_arguments",)  # a human approves a tool call before it runs
OUTPUT_ONLY = ("schema",)
PII_KINDS = ("email", "phone", "payment_card", "national_id", "iban", "ip_address")
MAX_CHARACTERS = 1_000_000
MAX_TOPIC_CONFIG_CHARACTERS = 100_000

DEFAULT_ACTIONS: dict[str, dict[str, str]] = {
    "input": {"injection": "block", "secrets": "redact", "topic": "block", "length": "block"},
    "output": {"secrets": "redact", "topic": "block", "schema": "block", "length": "block"},
    "tool_arguments": {"secrets": "block"},
    "tool_result": {"injection": "block", "secrets": "redact"},
}


class PolicyInvalid(Exception):
    """Every problem of a policy, each ``{"path", "message"}``."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Policy:
    """The effective policy of one agent (layers merged)."""

    actions: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: DEFAULT_ACTIONS)
    injection_threshold: float | None = None  # None: the trained model's own threshold
    pii_kinds: tuple[str, ...] = PII_KINDS
    topics_colang: str = ""
    topics_yaml: str = ""
    output_schema: Mapping[str, Any] | None = None
    max_input_characters: int = 20_000
    max_output_characters: int = 20_000

    def action(self, point: str, check: str) -> str:
        return self.actions.get(point, {}).get(check, "off")

    def checks_at(self, point: str, *, every: bool = False) -> tuple[str, ...]:
        """The checks that run at ``point``, in a fixed order (cheap ones first); with ``every``, also those
        the policy turned off there (a dry run shows every verdict)."""
        wanted = set(self.available_at(point)) if every else {
            check for check, action in self.actions.get(point, {}).items() if action != "off"}
        return tuple(check for check in self.available_at(point) if check in wanted)

    def available_at(self, point: str) -> tuple[str, ...]:
        """The checks that can judge a text at ``point`` under this policy's settings."""
        checks = ["length", "secrets", "pii", "schema", "injection", "topic"]
        if point not in ("input", "output"):
            checks = [c for c in checks if c not in ("length", "topic")]
        if point != "output" or self.output_schema is None:
            checks.remove("schema")
        if not (self.topics_colang or self.topics_yaml) and "topic" in checks:
            checks.remove("topic")
        return tuple(checks)

    def to_json(self) -> dict[str, Any]:
        return {"actions": {point: dict(self.actions.get(point, {})) for point in POINTS},
                "injection": {"threshold": self.injection_threshold}, "pii": {"kinds": list(self.pii_kinds)},
                "topics": {"colang": self.topics_colang, "yaml": self.topics_yaml},
                "output_schema": dict(self.output_schema) if self.output_schema is not None else None,
                "max_input_characters": self.max_input_characters,
                "max_output_characters": self.max_output_characters}


def validate_policy(data: Any, *, topic_problems: Any = None) -> dict[str, Any]:
    """A policy layer as given (only the keys it sets), checked. Raises PolicyInvalid with every problem.

    ``topic_problems(colang, yaml) -> [{"path", "message"}]`` checks a topic configuration (NeMo's parser);
    when None, the topic texts are only checked for their shape."""
    errors: list[dict[str, str]] = []

    def error(path: str, message: str) -> None:
        errors.append({"path": path, "message": message})

    if not isinstance(data, dict):
        raise PolicyInvalid([{"path": "", "message": "A policy is a JSON object (actions, injection, pii, topics, "
                                                      "output_schema, max_input_characters, max_output_characters)."}])
    known = {"actions", "injection", "pii", "topics", "output_schema", "max_input_characters",
             "max_output_characters"}
    for key in sorted(set(data) - known):
        error(key, f"Unknown setting; a policy has {', '.join(sorted(known))}.")
    actions = data.get("actions", {})
    if not isinstance(actions, dict):
        error("actions", f"actions maps a point ({', '.join(POINTS)}) to checks and their actions.")
        actions = {}
    for point, checks in actions.items():
        if point not in POINTS:
            error(f"actions.{point}", f"Unknown point; the points are {', '.join(POINTS)}.")
            continue
        if not isinstance(checks, dict):
            error(f"actions.{point}", f"Map each check ({', '.join(CHECKS)}) to an action ({', '.join(ACTIONS)}).")
            continue
        for check, action in checks.items():
            path = f"actions.{point}.{check}"
            if check not in CHECKS:
                error(path, f"Unknown check; the checks are {', '.join(CHECKS)}.")
            elif action not in ACTIONS:
                error(path, f"Unknown action {action!r}; the actions are {', '.join(ACTIONS)}.")
            elif action == "redact" and check not in REDACTABLE:
                error(path, f"Only {' and '.join(REDACTABLE)} findings can be redacted; {check} can flag, block "
                            f"or require approval.")
            elif action == "require_approval" and point not in APPROVABLE_POINTS:
                error(path, "require_approval holds a tool call for a human before it runs, so it applies at "
                            "tool_arguments; at other points choose block, redact or flag.")
            elif check in OUTPUT_ONLY and point != "output" and action != "off":
                error(path, "schema validates the agent's final answer against output_schema: set it at output.")
            elif check == "topic" and point in ("tool_arguments", "tool_result") and action != "off":
                error(path, "Topic rails judge what the user asks and what the agent answers: set them at input "
                            "or output.")
    injection = data.get("injection", {})
    if not isinstance(injection, dict) or set(injection) - {"threshold"}:
        error("injection", "injection takes {\"threshold\": a number from 0 to 1, or null for the model's own}.")
    elif injection.get("threshold") is not None:
        threshold = injection["threshold"]
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold < 1:
            error("injection.threshold", "threshold is a number between 0 and 1 (higher blocks less).")
    pii = data.get("pii", {})
    if not isinstance(pii, dict) or set(pii) - {"kinds"}:
        error("pii", "pii takes {\"kinds\": [...]}.")
    elif "kinds" in pii:
        kinds = pii["kinds"]
        if not isinstance(kinds, list) or not kinds or any(kind not in PII_KINDS for kind in kinds):
            error("pii.kinds", f"kinds is a non-empty list of {', '.join(PII_KINDS)}.")
    topics = data.get("topics")
    if topics is not None:
        if not isinstance(topics, dict) or set(topics) - {"colang", "yaml"} or not all(
                isinstance(topics.get(k, ""), str) for k in ("colang", "yaml")):
            error("topics", "topics takes {\"colang\": Colang 1.0 flows, \"yaml\": the rails configuration}, "
                            "both text.")
        elif sum(len(topics.get(k, "")) for k in ("colang", "yaml")) > MAX_TOPIC_CONFIG_CHARACTERS:
            error("topics", f"The topic configuration is longer than {MAX_TOPIC_CONFIG_CHARACTERS} characters.")
        elif topic_problems is not None and (topics.get("colang") or topics.get("yaml")):
            for problem in topic_problems(topics.get("colang", ""), topics.get("yaml", "")):
                error(f"topics.{problem['path']}", problem["message"])
    schema = data.get("output_schema")
    if schema is not None:
        if not isinstance(schema, dict):
            error("output_schema", "output_schema is a JSON schema object (or null for none).")
        else:
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                error("output_schema", f"Not a valid JSON schema: {exc.message}")
    for name in ("max_input_characters", "max_output_characters"):
        if name in data:
            value = data[name]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CHARACTERS:
                error(name, f"{name} is a whole number from 1 to {MAX_CHARACTERS}.")
    if errors:
        raise PolicyInvalid(errors)
    return data


def merged(*layers: Mapping[str, Any]) -> Policy:
    """The effective policy: the defaults, then each layer (validated JSON) over the one before."""
    actions = {point: dict(DEFAULT_ACTIONS.get(point, {})) for point in POINTS}
    settings: dict[str, Any] = {}
    for layer in layers:
        for point, checks in (layer.get("actions") or {}).items():
            actions[point].update(checks)
        if "injection" in layer and "threshold" in layer["injection"]:
            settings["injection_threshold"] = layer["injection"]["threshold"]
        if "kinds" in (layer.get("pii") or {}):
            settings["pii_kinds"] = tuple(layer["pii"]["kinds"])
        if layer.get("topics") is not None:
            settings["topics_colang"] = layer["topics"].get("colang", "")
            settings["topics_yaml"] = layer["topics"].get("yaml", "")
        if "output_schema" in layer:
            settings["output_schema"] = layer["output_schema"]
        for name in ("max_input_characters", "max_output_characters"):
            if name in layer:
                settings[name] = layer[name]
    return Policy(actions=actions, **settings)
