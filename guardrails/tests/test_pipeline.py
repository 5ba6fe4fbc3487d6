"""The rail pipeline and its policies, with the real local checks: layering, actions, redaction, JSON values,
and the output rail on a stream (a finding split across fragments never leaves unredacted; a violation stops
the stream)."""

from __future__ import annotations

import pytest

from guardrails.pipeline import Pipeline, StreamGuard
from guardrails.policy import DEFAULT_ACTIONS, PolicyInvalid, merged, validate_policy

EMAIL_POLICY = {"actions": {"output": {"pii": "redact"}, "input": {"pii": "redact"}}, "pii": {"kinds": ["email"]}}
SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def test_layers_override_per_point_and_check_over_the_defaults():
    # given
    tenant = validate_policy({"actions": {"input": {"pii": "flag"}}, "max_input_characters": 100})
    agent = validate_policy({"actions": {"input": {"pii": "redact", "injection": "off"}}})
    # when
    policy = merged(tenant, agent)
    # then
    assert policy.action("input", "pii") == "redact" and policy.action("input", "injection") == "off"
    assert policy.action("output", "secrets") == DEFAULT_ACTIONS["output"]["secrets"]
    assert policy.max_input_characters == 100
    assert "injection" not in policy.checks_at("input") and "pii" in policy.checks_at("input")
    assert "injection" in policy.checks_at("input", every=True)  # a dry run still shows its verdict
    assert "topic" not in policy.checks_at("input")  # no topic configuration: nothing to judge with


def test_validation_names_each_problem():
    with pytest.raises(PolicyInvalid) as invalid:
        validate_policy({"actions": {"tool_result": {"schema": "block", "pii": "require_approval"}},
                         "pii": {"kinds": ["shoe_size"]}, "max_output_characters": 0})
    paths = {e["path"] for e in invalid.value.errors}
    assert paths == {"actions.tool_result.schema", "actions.tool_result.pii", "pii.kinds", "max_output_characters"}


def test_the_strongest_action_wins_and_redaction_still_applies():
    # given: secrets block, emails redacted
    pipeline = Pipeline(merged(validate_policy({"actions": {"input": {"pii": "redact", "secrets": "block"}},
                                                "pii": {"kinds": ["email"]}})))
    # when
    redacted = pipeline.run("Write to ada@example.com about the launch.", "input")
    blocked = pipeline.run(f"Write to ada@example.com with token {SECRET}", "input")
    # then
    assert redacted.action == "redact" and redacted.text == "Write to [REDACTED:EMAIL] about the launch."
    assert blocked.action == "block" and blocked.blocked and "secrets" in blocked.explanation()
    assert SECRET not in blocked.explanation() and "ada@" not in blocked.explanation()
    assert all(d.latency_ms >= 0 for d in blocked.decisions)


def test_an_over_long_input_is_blocked_by_length():
    pipeline = Pipeline(merged(validate_policy({"max_input_characters": 40})))
    outcome = pipeline.run("Please summarise the quarterly sales report.", "input")
    assert outcome.blocked and outcome.reasons == ("length.input",)


def test_the_output_schema_is_checked_on_the_answer():
    pipeline = Pipeline(merged(validate_policy({"output_schema": {
        "type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}})))
    assert pipeline.run('{"total": 12.5}', "output", only=("schema",)).action == "allow"
    assert pipeline.run('```json\n{"total": 3}\n```', "output", only=("schema",)).action == "allow"
    wrong = pipeline.run('{"total": "twelve"}', "output", only=("schema",))
    assert wrong.blocked and "total" in wrong.explanation()
    assert pipeline.run("Twelve.", "output", only=("schema",)).reasons == ("schema.not_json",)


def test_json_values_are_judged_string_by_string_and_redacted_in_place():
    pipeline = Pipeline(merged(validate_policy({"actions": {"tool_arguments": {"pii": "redact"}},
                                                "pii": {"kinds": ["email"]}})))
    arguments, outcome = pipeline.run_json({"to": ["ada@example.com", "ops"], "subject": "Hi", "count": 2},
                                           "tool_arguments")
    assert arguments == {"to": ["[REDACTED:EMAIL]", "ops"], "subject": "Hi", "count": 2}
    assert outcome.action == "redact" and outcome.reasons == ("pii.email",)


def test_the_stream_never_passes_on_a_finding_split_across_fragments():
    # given
    guard = StreamGuard(Pipeline(merged(validate_policy(EMAIL_POLICY))), hold=32)
    answer = "Sure. You can reach our billing team at billing.team@example.com any day of the week, " \
             "and they answer within a day. Anything else I can help with today?"
    fragments = [answer[i:i + 3] for i in range(0, len(answer), 3)]
    # when
    passed = []
    for fragment in fragments:
        out, blocked = guard.feed(fragment)
        assert blocked is None
        passed.append(out)
    rest, outcome = guard.finish()
    passed.append(rest)
    # then: everything arrives, redacted, and text flowed before the end (not held until finish)
    streamed = "".join(passed)
    assert streamed == answer.replace("billing.team@example.com", "[REDACTED:EMAIL]")
    assert sum(len(p) for p in passed[:-1]) > len(answer) // 2
    assert outcome.action == "redact"


def test_a_violation_stops_the_stream_before_the_rest_is_passed_on():
    # given: secrets block at output
    guard = StreamGuard(Pipeline(merged(validate_policy({"actions": {"output": {"secrets": "block"}}}))), hold=16)
    text = f"Here is the deploy token you asked for: {SECRET} and the rest of the instructions follow here."
    # when
    passed, stopped = [], None
    for i in range(0, len(text), 4):
        out, blocked = guard.feed(text[i:i + 4])
        passed.append(out)
        if blocked is not None:
            stopped = blocked
            break
    # then
    assert stopped is not None and stopped.blocked and stopped.reasons
    assert SECRET[:8] not in "".join(passed) and "rest of the instructions" not in "".join(passed)
    assert guard.feed("more")[1] is stopped


def test_plain_prose_flows_at_once_and_only_what_could_start_a_finding_waits():
    # given: PII and secrets redacted at output
    guard = StreamGuard(Pipeline(merged(validate_policy(EMAIL_POLICY))), hold=64)
    # when: prose, word by word
    out = [guard.feed(word)[0] for word in ["The ", "weather ", "is ", "lovely ", "today"]]
    # then: each word passes as soon as the next begins; the last waits (it may still grow)
    assert out == ["The ", "weather ", "is ", "lovely ", ""]
    # and a number waits until it cannot be part of a finding any more
    assert guard.feed(", call 415 ")[0] == "today, call "
    assert guard.feed("555 0100 ")[0] == ""
    assert guard.finish()[0] == "415 555 0100 "
