"""The in-process scripted model answers as the model server does through the gateway (no database).

Each request goes both ways: ScriptedChatModel in process, and litellm over HTTP to the model server
started in this process. Content, deltas, tool calls (ids included), finish reason, token estimates and
attempts must be the same; the conversations are also checked against exact expected text.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from data_plane.model_server import ServerHandle, start_in_thread
from data_plane.model_server.scenarios import Scenario
from data_plane.runtime import wiring
from data_plane.runtime.adapters.llm import LiteLLMChatModel
from data_plane.runtime.adapters.scripted import ScriptedChatModel
from data_plane.runtime.core.messages import Message, ToolCall, ToolDefinition
from data_plane.runtime.core.ports import ModelReply, ModelRequest, ProviderRejected, ProviderUnavailable

pytestmark = [pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
              pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier:UserWarning")]

CALCULATOR = ToolDefinition(name="calculator", description="Evaluate arithmetic.", input_schema={
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]})
GET_TIME = ToolDefinition(name="get_time", description="The current time.")


async def no_sleep(seconds: float) -> None:
    return None


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_in_thread()
    yield handle
    handle.stop()


@pytest.fixture
def gateway(server: ServerHandle) -> LiteLLMChatModel:
    return LiteLLMChatModel(api_base=server.base_url, api_key="test-key", max_retries=2, sleep=no_sleep)


@pytest.fixture
def scripted() -> ScriptedChatModel:
    return ScriptedChatModel(max_retries=2)


def register(server: ServerHandle, scripted: ScriptedChatModel, turns: list[dict[str, Any]]) -> str:
    """The same fresh scenario on the server and in the in-process model's book; returns its name."""
    document = {"name": f"s-{uuid.uuid4().hex[:8]}", "turns": turns}
    httpx.post(f"{server.root_url}/admin/scenarios", json=document, timeout=5).raise_for_status()
    scripted.book.register(Scenario.from_json(document))
    return document["name"]


async def answer(model: Any, request: ModelRequest) -> tuple[ModelReply, list[str]]:
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    return await model.complete(request, on_delta=on_delta), deltas


async def same_answer(scripted: ScriptedChatModel, gateway: LiteLLMChatModel,
                      request: ModelRequest) -> tuple[ModelReply, list[str]]:
    """The in-process answer, after checking it against the server's through the gateway."""
    ours, our_deltas = await answer(scripted, request)
    theirs, their_deltas = await answer(gateway, request)
    assert ours.message == theirs.message
    assert our_deltas == their_deltas
    assert ours.finish_reason == theirs.finish_reason
    assert (ours.usage.model, ours.usage.input_tokens, ours.usage.output_tokens, ours.usage.cached_input_tokens,
            ours.usage.attempts) == (theirs.usage.model, theirs.usage.input_tokens, theirs.usage.output_tokens,
                                     theirs.usage.cached_input_tokens, theirs.usage.attempts)
    assert ours.usage.cost_usd == 0.0
    return ours, our_deltas


def ask(*models: str, content: str = "What is 6*7?", **fields: Any) -> ModelRequest:
    return ModelRequest(models=models, messages=(Message(role="system", content="Be exact."),
                                                 Message(role="user", content=content)), **fields)


@pytest.mark.asyncio
async def test_plan_act_reflect_plays_its_four_turns_and_the_tool_call_like_the_server(scripted, gateway):
    # given
    models = ("openai/plan-act-reflect",)
    history = ask(*models).messages
    # when: the whole conversation, each turn answered in process and compared with the server's
    plan, plan_deltas = await same_answer(scripted, gateway, ModelRequest(models=models, messages=history))
    history += (plan.message,)
    act, _ = await same_answer(scripted, gateway, ModelRequest(models=models, messages=history, tools=(CALCULATOR,)))
    (call,) = act.message.tool_calls
    history += (act.message, Message(role="tool", content="42", tool_call_id=call.id, name="calculator"))
    result, _ = await same_answer(scripted, gateway, ModelRequest(models=models, messages=history))
    reflection, _ = await same_answer(scripted, gateway,
                                      ModelRequest(models=models, messages=(*history, result.message)))
    # then
    assert plan_deltas == ["Plan:\n1. Work ", "out the expression ", "with the calculator.\n", "2. Report the ",
                           "result.\n3. Check ", "the answer."]
    assert plan.message == Message(role="assistant", content="".join(plan_deltas)) and plan.finish_reason == "stop"
    assert act.message.content == "" and act.finish_reason == "tool_calls"
    assert (call.name, call.arguments) == ("calculator", {"expression": "6*7"}) and call.id.startswith("call_1_0_")
    assert result.message.content == "The calculator returned 42, so the answer is 42."
    assert reflection.message.content == ("Reflection: the plan was followed and the calculator's result 42 "
                                          "answers the question. DONE")
    assert plan.usage.input_tokens == 6 and plan.usage.attempts == 1  # 21 characters of prompt


@pytest.mark.asyncio
async def test_echo_and_parallel_tool_calls_match_the_server(scripted, gateway):
    echo, deltas = await same_answer(scripted, gateway, ask("openai/echo", content="hello there"))
    tools, _ = await same_answer(scripted, gateway, ask("openai/parallel-tools", tools=(CALCULATOR, GET_TIME)))
    assert echo.message.content == "You said: hello there" and deltas == ["You said: hello ", "there"]
    assert [(c.name, c.arguments) for c in tools.message.tool_calls] == [("calculator", {"expression": "2+2"}),
                                                                         ("get_time", {})]
    assert [c.id[:9] for c in tools.message.tool_calls] == ["call_0_0_", "call_0_1_"]


@pytest.mark.parametrize("how", ["model", "system-marker", "user"])
@pytest.mark.asyncio
async def test_the_scenario_is_chosen_as_on_the_server(scripted, gateway, server, how):
    name = register(server, scripted, [{"content": "picked"}])
    if how == "model":
        request = ask(f"openai/{name}")
    elif how == "system-marker":
        request = ModelRequest(models=("openai/gpt-4o-mini",), messages=(
            Message(role="system", content=f"You help. [scenario:{name}]"), Message(role="user", content="hi")))
    else:
        request = ask("openai/gpt-4o-mini", metadata={"user": f"scenario:{name}"})
    reply, _ = await same_answer(scripted, gateway, request)
    assert reply.message.content == "picked"


@pytest.mark.asyncio
async def test_transient_failures_and_cut_streams_are_retried_like_the_gateway(scripted, gateway, server):
    flaky = register(server, scripted, [{"content": "at last", "fail": {"status": 429, "times": 2}}])
    cut = register(server, scripted, [{"content": "one two three four five six",
                                       "fail": {"status": 500, "times": 1, "after_chunks": 2}}])
    reply, _ = await same_answer(scripted, gateway, ask(f"openai/{flaky}"))
    cut_reply, deltas = await same_answer(scripted, gateway, ask(f"openai/{cut}"))
    assert (reply.message.content, reply.usage.attempts) == ("at last", 3)
    assert deltas == ["one two three ", "one two three ", "four five six"] and cut_reply.usage.attempts == 2


@pytest.mark.asyncio
async def test_a_rejecting_scenario_or_an_unknown_one_is_rejected_and_a_dead_one_unavailable(scripted, gateway,
                                                                                             server):
    down = register(server, scripted, [{"content": "never", "fail": {"status": 503}}])
    for request in (ask("openai/reject"), ask("scripted/no-such-scenario")):
        with pytest.raises(ProviderRejected):
            await scripted.complete(request)
        with pytest.raises(ProviderRejected):
            await gateway.complete(request)
    with pytest.raises(ProviderUnavailable, match="after 3 attempts"):
        await scripted.complete(ask(f"openai/{down}"))
    with pytest.raises(ProviderUnavailable, match="after 3 attempts"):
        await gateway.complete(ask(f"openai/{down}"))


@pytest.mark.asyncio
async def test_a_tool_calls_turn_replays_with_the_same_ids(scripted):
    first = await scripted.complete(ask("openai/tool-then-answer", tools=(GET_TIME,)))
    again = await scripted.complete(ask("openai/tool-then-answer", tools=(GET_TIME,)))
    assert first.message.tool_calls == again.message.tool_calls == (
        ToolCall(id=first.message.tool_calls[0].id, name="get_time", arguments={}),)


def test_wiring_plays_the_scenarios_in_process_when_llm_api_base_is_inprocess(settings):
    settings.LLM_API_BASE = "inprocess"
    wiring.chat_model.cache_clear()
    try:
        assert isinstance(wiring.chat_model(), ScriptedChatModel)
    finally:
        wiring.chat_model.cache_clear()


@pytest.mark.asyncio
async def test_a_summarising_request_is_answered_like_the_server_within_its_max_output_tokens(scripted, gateway):
    # given: the runtime's summarising call for the start of a conversation (core/context.py)
    from data_plane.runtime.core import context
    from data_plane.runtime.core.spec import ContextSettings
    from data_plane.runtime.core.state import RunState, Status

    messages = tuple(Message(role="user" if n % 2 == 0 else "assistant", content=f"Point {n}: " + "tax rules " * 60)
                     for n in range(8))
    state = RunState(status=Status.RUNNING, messages=messages, values={}, frontier=("chat",))
    settings = ContextSettings(max_input_tokens=1000, reserve_output_tokens=100, summary_max_tokens=40,
                               min_recent_messages=2)
    plan = context.fit(ModelRequest(models=("openai/plan-act-reflect",), messages=(), metadata={"node": "chat"}),
                       state=state, instructions="Be exact.", settings=settings, meter=context.ESTIMATE)
    assert isinstance(plan, context.SummaryNeeded)
    # when
    summary, _ = await same_answer(scripted, gateway, plan.request)
    # then: one point per summarised message, the oldest dropped to stay within 40 tokens (about 160 characters)
    points = [f"- {m.role}: {' '.join(m.content.split())}"[:82] for m in messages[:plan.upto]]
    assert summary.message.content == "\n".join(points[-1:]) and len(summary.message.content) <= 160
