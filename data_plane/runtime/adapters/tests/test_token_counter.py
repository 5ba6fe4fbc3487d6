"""The TokenCounter port on litellm: its counts are litellm's, per model; limits come from its model map."""

from __future__ import annotations

import litellm

from data_plane.runtime.adapters.llm import LiteLLMTokenCounter
from data_plane.runtime.adapters.openai_format import openai_message, openai_tool
from data_plane.runtime.core import context
from data_plane.runtime.core.context import Meter
from data_plane.runtime.core.messages import Message, ToolCall, ToolDefinition
from data_plane.runtime.core.ports import ModelRequest
from data_plane.runtime.core.spec import ContextSettings
from data_plane.runtime.core.state import RunState, Status

CONVERSATION = (Message(role="system", content="You are a careful bookkeeper."),
                Message(role="user", content="What is 6*7? Explain briefly."),
                Message(role="assistant", tool_calls=(ToolCall("c1", "calculator", {"expression": "6*7"}),)),
                Message(role="tool", name="calculator", tool_call_id="c1", content="42"))
CALCULATOR = ToolDefinition(name="calculator", description="Arithmetic",
                            input_schema={"type": "object", "properties": {"expression": {"type": "string"}}})


def test_a_request_is_counted_as_litellm_counts_it_for_the_model():
    counter = LiteLLMTokenCounter()
    for model in ("openai/gpt-4o-mini", "openai/plan-act-reflect"):
        expected = litellm.token_counter(model=model, messages=[openai_message(m) for m in CONVERSATION],
                                         tools=[openai_tool(CALCULATOR)])
        assert counter.count(model=model, messages=CONVERSATION, tools=(CALCULATOR,)) == expected
        assert counter.count(model=model, messages=CONVERSATION, tools=(CALCULATOR,)) == expected  # kept


def test_a_conversation_costs_the_sum_of_its_messages():
    # the core plans with per-message costs: litellm's count of a conversation is their sum plus the request's own
    counter = LiteLLMTokenCounter()
    empty = counter.count(model="openai/gpt-4o-mini")
    whole = counter.count(model="openai/gpt-4o-mini", messages=CONVERSATION)
    parts = sum(counter.count(model="openai/gpt-4o-mini", messages=(m,)) - empty for m in CONVERSATION)
    assert (empty, whole) == (3, empty + parts)


def test_input_limits_come_from_litellms_model_map():
    counter = LiteLLMTokenCounter()
    assert counter.input_limit("openai/gpt-4o-mini") == litellm.get_model_info("openai/gpt-4o-mini")["max_input_tokens"]
    assert counter.input_limit("openai/gpt-4o-mini") == 128000
    assert counter.input_limit("openai/no-such-model") is None


def test_a_context_is_fitted_with_litellms_counts():
    # given: a budget far smaller than the conversation, counted by gpt-4o-mini's tokenizer
    counter = LiteLLMTokenCounter()
    paragraph = "The quarterly report lists every invoice, payment and refund with its date. " * 12
    messages = tuple(Message(role="user" if n % 2 == 0 else "assistant", content=f"{n}: {paragraph}")
                     for n in range(12))
    state = RunState(status=Status.RUNNING, messages=messages, values={}, frontier=("chat",))
    settings = ContextSettings(max_input_tokens=1500, reserve_output_tokens=200, summary_max_tokens=200,
                               min_recent_messages=2)
    draft = ModelRequest(models=("openai/gpt-4o-mini",), messages=(), metadata={"node": "chat", "step": 0})
    # when
    plan = context.fit(draft, state=state, instructions="Be exact.", settings=settings, meter=Meter(counter=counter))
    # then: a summary is asked for first, and its own request is within the model's budget
    assert isinstance(plan, context.SummaryNeeded) and plan.upto <= len(messages) - 2
    assert counter.count(model="openai/gpt-4o-mini", messages=plan.request.messages) <= 1500 - 200
    # when: the summary is in the state
    summarised = state.evolve(summary=context.summary_from_reply("They reviewed the report.", upto=plan.upto,
                                                                 settings=settings, model="openai/gpt-4o-mini",
                                                                 counter=counter))
    while isinstance(plan := context.fit(draft, state=summarised, instructions="Be exact.", settings=settings,
                                         meter=Meter(counter=counter)), context.SummaryNeeded):
        summarised = summarised.evolve(summary=context.summary_from_reply(
            "They reviewed the report.", upto=plan.upto, settings=settings, model="openai/gpt-4o-mini",
            counter=counter))
    # then: the call fits, as litellm counts it
    assert isinstance(plan, ModelRequest)
    assert plan.metadata["context"]["tokens"] == counter.count(model="openai/gpt-4o-mini", messages=plan.messages)
    assert plan.metadata["context"]["tokens"] <= 1300


def test_an_attachment_counts_as_its_kinds_estimate_without_its_bytes():
    from data_plane.runtime.core.messages import AttachmentPart

    counter = LiteLLMTokenCounter()
    text = Message(role="user", content="What is on this picture, and what is said here?")
    with_files = Message(role="user", content=text.content, attachments=(
        AttachmentPart(id="a1", media_type="image/png"), AttachmentPart(id="a2", media_type="audio/wav")))
    plain = counter.count(model="openai/gpt-4o-mini", messages=(text,))
    assert counter.count(model="openai/gpt-4o-mini", messages=(with_files,)) == \
        plain + context.IMAGE_TOKENS + context.AUDIO_TOKENS
    assert counter.count(model="openai/gpt-4o-mini", messages=(text,)) == plain  # not confused with it in the cache
