"""The rail pipeline: one interface at the four points (user input, model output, tool arguments, tool results).

``Pipeline(policy).run(text, point)`` runs the policy's checks for that point, cheap ones first, times each,
and turns each triggered verdict into the policy's action; the outcome's action is the strongest of them
(block > require_approval > redact > flag > allow). A redaction replaces what the checks that redact found,
whatever the other checks decided. Pure Python: no Django, no network (the checks are local).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from guardrails.checks.base import Check, Point, Span, Verdict, redact
from guardrails.policy import STRENGTH, Policy

STRONGEST_FIRST = sorted(STRENGTH, key=STRENGTH.__getitem__, reverse=True)


@dataclass(frozen=True)
class Decision:
    """One check's verdict at a point and what the policy makes of it (``allow`` when it did not trigger)."""

    point: str
    action: str
    verdict: Verdict
    latency_ms: float

    @property
    def check(self) -> str:
        return self.verdict.check

    def to_json(self, *, spans: bool = True) -> dict[str, Any]:
        data = {"point": self.point, "action": self.action, **self.verdict.to_json(),
                "latency_ms": round(self.latency_ms, 3)}
        if not spans:
            data.pop("spans")
        return data


@dataclass(frozen=True)
class Outcome:
    """What the rails made of one text: the action, the text to go on with, and every check's decision."""

    point: str
    action: str  # allow | flag | redact | require_approval | block
    text: str
    decisions: tuple[Decision, ...]
    latency_ms: float

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def acted(self) -> tuple[Decision, ...]:
        """The decisions that did something (every triggered check whose action is not ``off``)."""
        return tuple(decision for decision in self.decisions if decision.action != "allow")

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(reason for d in self.acted for reason in d.verdict.reasons))

    def explanation(self) -> str:
        """For the caller: which checks did what, never what they found."""
        strongest = [d for d in self.acted if d.action == self.action] or list(self.acted)
        parts = [f"{d.check} ({', '.join(d.verdict.reasons) or 'triggered'}): {d.verdict.message}".rstrip(": ")
                 for d in strongest]
        return "; ".join(parts)

    def to_json(self, *, spans: bool = False) -> dict[str, Any]:
        return {"point": self.point, "action": self.action, "reasons": list(self.reasons),
                "decisions": [d.to_json(spans=spans) for d in self.decisions],
                "latency_ms": round(self.latency_ms, 3)}


ALLOW = "allow"


class LengthCheck:
    """Texts longer than the policy allows at a point (input or output)."""

    name = "length"

    def __init__(self, *, max_input: int, max_output: int) -> None:
        self.limits = {"input": max_input, "output": max_output}

    def evaluate(self, text: str, *, point: Point) -> Verdict:
        limit = self.limits.get(point)
        if limit is None or len(text) <= limit:
            return Verdict(check=self.name, triggered=False)
        return Verdict(check=self.name, triggered=True, score=1.0, reasons=(f"length.{point}",),
                       message=f"{len(text)} characters, more than the {limit} allowed at {point}.")


class SchemaCheck:
    """The agent's answer must be JSON valid against the schema it declares (a fenced ```json block counts)."""

    name = "schema"

    def __init__(self, schema: dict[str, Any]) -> None:
        import jsonschema

        self.validator = jsonschema.Draft202012Validator(schema)

    def evaluate(self, text: str, *, point: Point) -> Verdict:
        if point != "output":
            return Verdict(check=self.name, triggered=False)
        body = text.strip()
        if body.startswith("```"):
            body = body.split("\n", 1)[1] if "\n" in body else ""
            body = body.rsplit("```", 1)[0]
        try:
            value = json.loads(body)
        except ValueError as exc:
            return Verdict(check=self.name, triggered=True, score=1.0, reasons=("schema.not_json",),
                           message=f"The answer is not JSON ({exc.msg} at line {exc.lineno}).")
        error = next(iter(sorted(self.validator.iter_errors(value), key=lambda e: list(e.path))), None)
        if error is None:
            return Verdict(check=self.name, triggered=False)
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        return Verdict(check=self.name, triggered=True, score=1.0, reasons=("schema.invalid",),
                       message=f"The answer does not match output_schema at {where}: {error.validator} "
                               f"{error.validator_value!r} failed.")


class _Checks:
    """Check instances shared by every pipeline of the process: models load once, configs build once."""

    def __init__(self, size: int = 256) -> None:
        self._lock = threading.Lock()
        self._made: OrderedDict[tuple[Any, ...], Check] = OrderedDict()
        self.size = size

    def get(self, key: tuple[Any, ...], make: Callable[[], Check]) -> Check:
        with self._lock:
            check = self._made.get(key)
            if check is not None:
                self._made.move_to_end(key)
                return check
        check = make()  # outside the lock: a topic configuration can take a while to build
        with self._lock:
            self._made[key] = check
            while len(self._made) > self.size:
                self._made.popitem(last=False)
        return check


CHECKS = _Checks()


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def check_for(name: str, policy: Policy) -> Check:
    """The check ``name`` configured as ``policy`` says (shared and cached)."""
    if name == "length":
        limits = (policy.max_input_characters, policy.max_output_characters)
        return CHECKS.get(("length", *limits), lambda: LengthCheck(max_input=limits[0], max_output=limits[1]))
    if name == "schema":
        schema = dict(policy.output_schema or {})
        return CHECKS.get(("schema", _digest(schema)), lambda: SchemaCheck(schema))
    if name == "secrets":
        from guardrails.checks.secrets import SecretsCheck

        return CHECKS.get(("secrets",), SecretsCheck)
    if name == "pii":
        from guardrails.checks.pii import PiiCheck

        kinds = tuple(sorted(policy.pii_kinds))
        return CHECKS.get(("pii", kinds), lambda: PiiCheck(kinds=kinds))
    if name == "injection":
        from guardrails.checks.injection import InjectionCheck

        threshold = policy.injection_threshold
        return CHECKS.get(("injection", threshold), lambda: InjectionCheck(threshold=threshold))
    if name == "topic":
        from guardrails.topics import TopicCheck

        config = (policy.topics_colang, policy.topics_yaml)
        return CHECKS.get(("topic", _digest(config)), lambda: TopicCheck(*config))
    raise KeyError(f"no check named {name!r}")


class Pipeline:
    """The rails of one effective policy."""

    def __init__(self, policy: Policy, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.policy = policy
        self.clock = clock

    def checks_at(self, point: str) -> tuple[str, ...]:
        return self.policy.checks_at(point)

    def with_output_schema(self, schema: Mapping[str, Any]) -> Pipeline:
        """This pipeline judging answers against ``schema`` (an agent's own) instead of the policy's."""
        return Pipeline(replace(self.policy, output_schema=schema), clock=self.clock)

    def run(self, text: str, point: Point, *, only: tuple[str, ...] | None = None, every: bool = False) -> Outcome:
        """Every check of ``point`` (or only those named) on ``text``; with ``every``, the checks the policy
        turned off there too (their findings act as ``allow``)."""
        started = self.clock()
        decisions: list[Decision] = []
        spans: list[Span] = []
        for name in self.policy.checks_at(point, every=every):
            if only is not None and name not in only:
                continue
            check = check_for(name, self.policy)
            began = self.clock()
            verdict = check.evaluate(text, point=point)
            action = self.policy.action(point, name) if verdict.triggered else ALLOW
            action = ALLOW if action == "off" else action
            decisions.append(Decision(point=point, action=action, verdict=verdict,
                                      latency_ms=(self.clock() - began) * 1000))
            if action == "redact":
                spans.extend(verdict.spans)
        action = max((d.action for d in decisions), key=STRENGTH.__getitem__, default=ALLOW)
        return Outcome(point=point, action=action, text=redact(text, spans) if spans else text,
                       decisions=tuple(decisions), latency_ms=(self.clock() - started) * 1000)

    def run_json(self, value: Any, point: Point) -> tuple[Any, Outcome]:
        """The rails over every text inside a JSON value (a tool's arguments or structured result): each string
        is checked (and redacted) on its own; the outcome joins their decisions, a check's strongest kept."""
        started = self.clock()
        by_check: dict[str, Decision] = {}

        def walk(node: Any) -> Any:
            if isinstance(node, str):
                if not node.strip():
                    return node
                outcome = self.run(node, point)
                for decision in outcome.decisions:
                    kept = by_check.get(decision.check)
                    if kept is None or (STRENGTH[decision.action], decision.verdict.score) > (
                            STRENGTH[kept.action], kept.verdict.score):
                        by_check[decision.check] = Decision(
                            point=point, action=decision.action, verdict=decision.verdict,
                            latency_ms=decision.latency_ms + (kept.latency_ms if kept else 0.0))
                    else:
                        by_check[decision.check] = Decision(point=point, action=kept.action, verdict=kept.verdict,
                                                            latency_ms=kept.latency_ms + decision.latency_ms)
                return outcome.text
            if isinstance(node, dict):
                return {key: walk(item) for key, item in node.items()}
            if isinstance(node, list):
                return [walk(item) for item in node]
            return node

        result = walk(value)
        decisions = tuple(by_check.values())
        action = max((d.action for d in decisions), key=STRENGTH.__getitem__, default=ALLOW)
        return result, Outcome(point=point, action=action, text="", decisions=decisions,
                               latency_ms=(self.clock() - started) * 1000)


# Where a finding that spans several words may start: a digit (cards, phones, IBANs, addresses), a sign of an
# address, an assignment or a URL, or a word that names a credential.
_MAY_START_A_FINDING = re.compile(r"[0-9@=:/+(]|(?i:pass|secret|token|api|key|bearer|auth|cred|priv)")


class StreamGuard:
    """The output rail on a stream of text fragments, as they arrive: what it passes on is redacted, and a
    violation stops the stream instead of being found after the answer is complete.

    The last word is held back (a key or an address may still be growing), and so is an unfinished PEM block,
    and, within the last ``hold`` characters, everything from where a finding spanning words could start (a
    digit, an ``@``, ``=`` or ``:``, a word naming a credential); a cut never falls inside a finding. So a
    finding split across fragments is redacted before any of it is passed on, and plain prose flows at once.
    The checks that say where their findings are (redacting ones) run on every fragment over the text not
    yet passed on; the others (injection, topic) run on each new sentence or ``every`` characters, and on
    the whole text at the end."""

    def __init__(self, pipeline: Pipeline, *, hold: int = 64, every: int = 400) -> None:
        self.pipeline = pipeline
        self.hold = hold
        self.every = every
        checks = pipeline.checks_at("output")
        self.fast = tuple(c for c in checks if c in ("secrets", "pii", "length"))
        self.slow = tuple(c for c in checks if c in ("injection", "topic"))
        self.text = ""  # everything received
        self.sent = 0  # characters of ``text`` passed on (as redacted)
        self.judged = 0  # characters of ``text`` the slow checks have seen
        self.outcome: Outcome | None = None  # the blocking outcome, once blocked

    def feed(self, fragment: str) -> tuple[str, Outcome | None]:
        """What to pass on now (redacted), and the outcome that blocks the stream, if this fragment did."""
        if self.outcome is not None:
            return "", self.outcome
        self.text += fragment
        boundary = fragment.endswith("\n") or fragment.rstrip().endswith((".", "!", "?"))
        if self.slow and len(self.text) > self.judged and (len(self.text) - self.judged >= self.every or boundary):
            # the new text with some of what came before (a violation may straddle the boundary); the whole
            # text is judged once more at the end
            window = self.text[max(0, self.judged - self.every):]
            self.judged = len(self.text)
            judged = self.pipeline.run(window, "output", only=self.slow)
            if judged.blocked:
                self.outcome = judged
                return "", judged
        return self._release(final=False)

    def finish(self) -> tuple[str, Outcome]:
        """The rest to pass on, and the outcome of every check on the whole text."""
        if self.outcome is not None:
            return "", self.outcome
        whole = self.pipeline.run(self.text, "output", only=self.fast + self.slow)
        if whole.blocked:
            self.outcome = whole
            return "", whole
        rest, _ = self._release(final=True)
        return rest, whole

    def _release(self, *, final: bool) -> tuple[str, Outcome | None]:
        pending = self.text[self.sent:]
        if not self.fast:
            self.sent = len(self.text)
            return pending, None
        outcome = self.pipeline.run(pending, "output", only=self.fast)
        if outcome.blocked:
            self.outcome = outcome
            return "", outcome
        cut = len(pending)
        if not final:
            # A token (an address, a key) may still be growing: hold the last one back whole. Findings that
            # span words (a card or a phone number with spaces, "password = ...") start at a digit, a sign or a
            # key word: hold back from the first of those within the last ``hold`` characters. Plain prose flows.
            cut = max(pending.rfind(" "), pending.rfind("\n"), pending.rfind("\t")) + 1
            window = max(0, cut - self.hold)
            suspicious = _MAY_START_A_FINDING.search(pending, window, cut)
            if suspicious is not None:
                cut = suspicious.start()
            begin = pending.rfind("-----BEGIN")  # an unfinished PEM block, from its BEGIN line
            if begin != -1 and "-----END" not in pending[begin:]:
                cut = min(cut, begin)
        spans = [span for d in outcome.decisions if d.action == "redact" for span in d.verdict.spans]
        for span in spans:  # never cut through a finding (it may still grow)
            if span.start < cut < span.end or (not final and span.end >= len(pending) - 1 and span.start < cut):
                cut = span.start
        cut = max(cut, 0)
        released = [span for span in spans if span.end <= cut]
        self.sent += cut
        return redact(pending[:cut], released), None
