"""The LLM gateway: real litellm over real HTTP to our scripted model server, started in this process."""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from data_plane.model_server import ServerHandle, start_in_thread
from data_plane.runtime.adapters.llm import LiteLLMChatModel, RetryNotice, openai_message, openai_tool, \
    cost_usd, register_local_prices, tool_arguments
from data_plane.runtime.core.messages import Message, ToolCall, ToolDefinition
from data_plane.runtime.core.ports import ModelRequest, ProviderRejected, ProviderUnavailable

# litellm's own deprecation noise, not ours
pytestmark = [pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
              pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier:UserWarning")]

CALCULATOR = ToolDefinition(name="calculator", description="Evaluate arithmetic.", input_schema={
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]})
GET_TIME = ToolDefinition(name="get_time", description="The current time.")


class RecordingSleep:
    """The gateway's sleep, without waiting: records each backoff delay."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class HighestJitter(random.Random):
    """Jitter that always draws the top of the range, so the delays are the backoff caps."""

    def random(self) -> float:
        return 1.0


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_in_thread()
    yield handle
    handle.stop()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def gateway(server: ServerHandle, sleep: RecordingSleep) -> LiteLLMChatModel:
    return LiteLLMChatModel(api_base=server.base_url, api_key="test-key", max_retries=3, rng=HighestJitter(),
                            sleep=sleep)


def register(server: ServerHandle, prefix: str, turns: list[dict[str, Any]], **fields: Any) -> str:
    """Register a scenario under a fresh name (so its request count is this test's alone); returns the name."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    httpx.post(f"{server.root_url}/admin/scenarios", json={"name": name, "turns": turns, **fields},
               timeout=5).raise_for_status()
    return name


def requests_for(server: ServerHandle, scenario: str) -> int:
    stats = httpx.get(f"{server.root_url}/admin/stats", timeout=5).json()
    return stats["requests_per_scenario"].get(scenario, 0)


def ask(*models: str, content: str = "What is 6*7?", **fields: Any) -> ModelRequest:
    return ModelRequest(models=models, messages=(Message(role="system", content="Be exact."),
                                                 Message(role="user", content=content)), **fields)


@pytest.mark.asyncio
async def test_text_streams_in_order_and_is_reassembled(gateway, server):
    # given
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    # when
    reply = await gateway.complete(ask("openai/plan-act-reflect"), on_delta=on_delta)
    # then
    assert deltas == ["Plan:\n1. Work ", "out the expression ", "with the calculator.\n", "2. Report the ",
                      "result.\n3. Check ", "the answer."]
    assert reply.message == Message(role="assistant", content="".join(deltas))
    assert reply.finish_reason == "stop"
    assert reply.usage.model == "openai/plan-act-reflect" and reply.usage.attempts == 1


@pytest.mark.asyncio
async def test_a_tool_call_is_reassembled_and_its_result_reaches_the_next_turn(gateway, server):
    # given
    request = ask("openai/tool-then-answer", tools=(GET_TIME,))
    # when
    first = await gateway.complete(request)
    (call,) = first.message.tool_calls
    second = await gateway.complete(ModelRequest(models=request.models, tools=request.tools, messages=(
        *request.messages, first.message, Message(role="tool", content="12:00", tool_call_id=call.id, name=call.name))))
    # then
    assert call.name == "get_time" and call.arguments == {} and call.id.startswith("call_0_0_")
    assert first.finish_reason == "tool_calls" and first.message.content == ""
    assert second.message == Message(role="assistant", content="The time is 12:00.")


@pytest.mark.asyncio
async def test_two_parallel_tool_calls_are_reassembled_with_parsed_arguments(gateway, server):
    reply = await gateway.complete(ask("openai/parallel-tools", tools=(CALCULATOR, GET_TIME)))
    assert [(c.name, c.arguments) for c in reply.message.tool_calls] == [("calculator", {"expression": "2+2"}),
                                                                          ("get_time", {})]
    assert reply.message.tool_calls[0].id != reply.message.tool_calls[1].id
    assert reply.finish_reason == "tool_calls"


@pytest.mark.asyncio
async def test_the_plan_act_reflect_scenario_sees_the_tool_result(gateway, server):
    # given: the conversation after the plan and the calculator call
    plan = await gateway.complete(ask("openai/plan-act-reflect"))
    history = ask("openai/plan-act-reflect").messages + (plan.message,)
    act = await gateway.complete(ModelRequest(models=("openai/plan-act-reflect",), messages=history))
    (call,) = act.message.tool_calls
    observed = (*history, act.message, Message(role="tool", content="42", tool_call_id=call.id))
    # when
    answer = await gateway.complete(ModelRequest(models=("openai/plan-act-reflect",), messages=observed))
    reflection = await gateway.complete(ModelRequest(models=("openai/plan-act-reflect",),
                                                     messages=(*observed, answer.message)))
    # then
    assert (call.name, call.arguments) == ("calculator", {"expression": "6*7"})
    assert answer.message.content == "The calculator returned 42, so the answer is 42."
    assert reflection.message.content.endswith("DONE")


@pytest.mark.parametrize("how", ["model", "system-marker", "user"])
@pytest.mark.asyncio
async def test_the_scenario_is_chosen_by_model_name_system_marker_or_user(gateway, server, how):
    # given
    name = register(server, "pick", [{"content": "picked"}])
    if how == "model":
        request = ask(f"openai/{name}")
    elif how == "system-marker":
        request = ModelRequest(models=("openai/gpt-4o-mini",), messages=(
            Message(role="system", content=f"You help. [scenario:{name}]"), Message(role="user", content="hi")))
    else:  # litellm passes OpenAI's ``user`` field through; the gateway takes it from the request's metadata
        request = ask("openai/gpt-4o-mini", metadata={"user": f"scenario:{name}"})
    # when
    reply = await gateway.complete(request)
    # then
    assert reply.message.content == "picked"
    assert requests_for(server, name) == 1


@pytest.mark.asyncio
async def test_the_same_conversation_gets_the_same_answer(gateway, server):
    first = await gateway.complete(ask("openai/parallel-tools"))
    again = await gateway.complete(ask("openai/parallel-tools"))
    assert again.message == first.message


@pytest.mark.asyncio
async def test_usage_is_reported_and_priced_after_register_local_prices(gateway, server):
    # given: 400 characters of prompt (100 tokens), 64 of them cached, and a 2-character answer (1 token)
    name = register(server, "priced", [{"content": "ok", "cached_tokens": 64}])
    register_local_prices([f"openai/{name}"])
    request = ModelRequest(models=(f"openai/{name}",), messages=(Message(role="user", content="x" * 400),))
    # when
    reply = await gateway.complete(request)
    # then
    usage = reply.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (100, 1, 64)
    assert usage.cost_usd == pytest.approx((36 * 0.15 + 64 * 0.075 + 1 * 0.60) / 1e6)
    assert usage.latency_ms > 0


@pytest.mark.asyncio
async def test_an_unpriced_model_costs_zero_without_raising(gateway, server):
    name = register(server, "unpriced", [{"content": "ok"}])
    reply = await gateway.complete(ask(f"openai/{name}"))
    assert reply.usage.cost_usd == 0.0 and reply.usage.input_tokens == 6  # "Be exact." + "What is 6*7?": 21 chars


@pytest.mark.asyncio
async def test_a_provider_that_sends_no_usage_gets_tokens_counted_by_litellm(gateway, server):
    # given: a server that ignores stream_options.include_usage
    name = register(server, "no-usage", [{"content": "The answer is forty-two.", "omit_usage": True}])
    # when
    reply = await gateway.complete(ask(f"openai/{name}"))
    # then: litellm's tokenizer counts (the server's own estimate would have been 6 and 6)
    assert (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.cached_input_tokens) == (21, 6, 0)


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.asyncio
async def test_transient_failures_are_retried_with_growing_backoff(gateway, server, sleep, status):
    # given
    name = register(server, "flaky", [{"content": "finally", "fail": {"status": status, "times": 3}}])
    # when
    reply = await gateway.complete(ask(f"openai/{name}"))
    # then
    assert reply.message.content == "finally"
    assert reply.usage.attempts == 4
    assert sleep.delays == [0.2, 0.4, 0.8]
    assert requests_for(server, name) == 4


@pytest.mark.asyncio
async def test_backoff_is_full_jitter_capped_at_the_maximum(server, sleep):
    # given
    gateway = LiteLLMChatModel(api_base=server.base_url, api_key="k", max_retries=4, backoff_base_seconds=1.0,
                               backoff_max_seconds=3.0, rng=random.Random(7), sleep=sleep)
    name = register(server, "jitter", [{"content": "ok", "fail": {"status": 500, "times": 4}}])
    expected = random.Random(7)
    # when
    await gateway.complete(ask(f"openai/{name}"))
    # then
    assert sleep.delays == [expected.uniform(0, cap) for cap in (1.0, 2.0, 3.0, 3.0)]


@pytest.mark.asyncio
async def test_a_stream_cut_after_some_deltas_is_retried_from_the_start(gateway, server):
    # given: the first attempt breaks after the role chunk and one content chunk
    name = register(server, "cut", [{"content": "one two three four five six",
                                     "fail": {"status": 500, "times": 1, "after_chunks": 2}}])
    deltas: list[str] = []
    notices: list[RetryNotice] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    async def on_retry(notice: RetryNotice) -> None:
        notices.append(notice)

    # when
    reply = await gateway.complete(ask(f"openai/{name}"), on_delta=on_delta, on_retry=on_retry)
    # then
    assert deltas == ["one two three ", "one two three ", "four five six"]
    assert reply.message.content == "one two three four five six" and reply.usage.attempts == 2
    assert [(n.model, n.attempt, n.next_model, n.delay_seconds, n.deltas_emitted) for n in notices] == [
        (f"openai/{name}", 1, f"openai/{name}", 0.2, 1)]


@pytest.mark.asyncio
async def test_after_its_retries_the_next_model_answers(gateway, server, sleep):
    # given
    down = register(server, "down", [{"content": "never", "fail": {"status": 503, "times": 1000}}])
    up = register(server, "up", [{"content": "from the fallback"}])
    # when
    reply = await gateway.complete(ask(f"openai/{down}", f"openai/{up}"))
    # then
    assert reply.message.content == "from the fallback"
    assert reply.usage.model == f"openai/{up}" and reply.usage.attempts == 5
    assert sleep.delays == [0.2, 0.4, 0.8]  # no wait before switching models
    assert (requests_for(server, down), requests_for(server, up)) == (4, 1)
    # the reply says it fell back, from which model and why
    assert reply.usage.fell_back_from == f"openai/{down}"
    assert len(reply.usage.errors) == 4
    assert all(error.startswith(f"openai/{down}: ServiceUnavailableError (HTTP 503): ") for error in reply.usage.errors)


@pytest.mark.asyncio
async def test_a_reply_of_the_first_model_records_no_fallback(gateway, server):
    name = register(server, "steady", [{"content": "ok"}])
    reply = await gateway.complete(ask(f"openai/{name}", "openai/never-asked"))
    assert (reply.usage.fell_back_from, reply.usage.errors) == (None, ())
    assert "fell_back_from" not in reply.usage.to_json() and "errors" not in reply.usage.to_json()


def test_a_mapped_model_is_priced_from_litellms_own_map_with_cached_input_at_the_cached_rate():
    # given: gpt-4o-mini as litellm's shipped price map has it: $0.15 per million input tokens, cached half
    import litellm

    prices = litellm.model_cost["gpt-4o-mini"]
    assert (prices["input_cost_per_token"], prices["output_cost_per_token"],
            prices["cache_read_input_token_cost"]) == (1.5e-07, 6e-07, 7.5e-08)
    # when: a million input tokens, all cached or none, and a million output tokens
    uncached = cost_usd("gpt-4o-mini", 1_000_000, 0, 0)
    cached = cost_usd("gpt-4o-mini", 1_000_000, 0, 1_000_000)
    # then
    assert uncached == pytest.approx(0.15) and cached == pytest.approx(0.075)
    assert cost_usd("gpt-4o-mini", 1_000_000, 1_000_000, 400_000) == pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.6)


def test_importing_the_gateway_loads_litellms_price_map_locally_without_the_network():
    # given: a fresh interpreter without the setting, whose sockets refuse to connect (and say so)
    import subprocess
    import sys

    probe = (
        "import socket, sys\n"
        "attempts = []\n"
        "def refuse(self, address, *a, **k):\n"
        "    attempts.append(address)\n"
        "    raise OSError('no network in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.getaddrinfo = lambda host, *a, **k: attempts.append(host) or (_ for _ in ()).throw(OSError('no dns'))\n"
        "import os\n"
        "from data_plane.runtime.adapters import llm\n"
        "import litellm\n"
        "print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'], len(litellm.model_cost) > 1000, attempts)\n")
    env = {key: value for key, value in os.environ.items() if key != "LITELLM_LOCAL_MODEL_COST_MAP"}
    # when
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    # then: the map shipped with litellm, and not one connection attempted
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True True []"


@pytest.mark.parametrize("fail", [
    {"status": 400},
    {"status": 400, "code": "context_length_exceeded",
     "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000."},
    {"status": 401},
    {"status": 403},
])
@pytest.mark.asyncio
async def test_a_terminal_error_is_rejected_at_once_without_retry_or_fallback(gateway, server, sleep, fail):
    # given
    refusing = register(server, "refuse", [{"fail": fail}])
    fallback = register(server, "fallback", [{"content": "unused"}])
    # when
    with pytest.raises(ProviderRejected) as raised:
        await gateway.complete(ask(f"openai/{refusing}", f"openai/{fallback}"))
    # then
    assert type(raised.value) is ProviderRejected and not isinstance(raised.value, openai.OpenAIError)
    assert f"openai/{refusing}" in str(raised.value) and f"HTTP {fail['status']}" in str(raised.value)
    assert (requests_for(server, refusing), requests_for(server, fallback)) == (1, 0)
    assert sleep.delays == []


@pytest.mark.asyncio
async def test_the_shipped_reject_scenario_is_rejected(gateway, server):
    with pytest.raises(ProviderRejected, match="refuses every request"):
        await gateway.complete(ask("openai/reject"))


@pytest.mark.asyncio
async def test_when_every_model_keeps_failing_the_provider_is_unavailable(server, sleep):
    # given
    gateway = LiteLLMChatModel(api_base=server.base_url, api_key="k", max_retries=1, rng=HighestJitter(), sleep=sleep)
    first = register(server, "broken", [{"content": "x", "fail": {"status": 500, "times": 1000}}])
    second = register(server, "overloaded", [{"content": "x", "fail": {"status": 429, "times": 1000}}])
    # when
    with pytest.raises(ProviderUnavailable) as raised:
        await gateway.complete(ask(f"openai/{first}", f"openai/{second}"))
    # then
    message = str(raised.value)
    assert type(raised.value) is ProviderUnavailable
    assert f"openai/{first}, openai/{second}" in message and "after 4 attempts" in message and "HTTP 429" in message
    assert (requests_for(server, first), requests_for(server, second)) == (2, 2)
    assert sleep.delays == [0.2, 0.2]


@pytest.mark.asyncio
async def test_a_timeout_is_retried_then_the_provider_is_unavailable(server, sleep):
    # given: the first token comes after 3 s; the request allows 0.2 s
    gateway = LiteLLMChatModel(api_base=server.base_url, api_key="k", max_retries=1, rng=HighestJitter(), sleep=sleep)
    name = register(server, "slow", [{"content": "too late", "first_token_delay_ms": 3000}])
    # when
    with pytest.raises(ProviderUnavailable, match="imeout") as raised:
        await gateway.complete(ask(f"openai/{name}", timeout_seconds=0.2))
    # then
    assert type(raised.value) is ProviderUnavailable
    assert requests_for(server, name) == 2
    assert sleep.delays == [0.2]


@pytest.mark.asyncio
async def test_a_refused_connection_is_retried_then_the_provider_is_unavailable(sleep):
    # given: a port nothing listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = LiteLLMChatModel(api_base=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=2,
                               rng=HighestJitter(), sleep=sleep)
    # when
    with pytest.raises(ProviderUnavailable, match="after 3 attempts"):
        await gateway.complete(ask("openai/echo"))
    # then
    assert sleep.delays == [0.2, 0.4]


@pytest.mark.asyncio
async def test_an_error_raised_by_on_delta_is_the_callers_and_is_not_retried(gateway, server, sleep):
    # given
    name = register(server, "callback", [{"content": "one two three four five six seven"}])

    async def on_delta(text: str) -> None:
        raise ConnectionError("the subscriber's socket closed")

    # when
    with pytest.raises(ConnectionError, match="subscriber"):
        await gateway.complete(ask(f"openai/{name}"), on_delta=on_delta)
    # then
    assert requests_for(server, name) == 1 and sleep.delays == []


def test_messages_and_tools_go_out_in_openai_format():
    call = ToolCall(id="c1", name="calculator", arguments={"expression": "6*7"})
    assert openai_message(Message(role="assistant", tool_calls=(call,), name="Agent Smith")) == {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'}}]}
    assert openai_message(Message(role="tool", content="42", tool_call_id="c1", name="calculator")) == {
        "role": "tool", "tool_call_id": "c1", "content": "42"}
    assert openai_tool(CALCULATOR) == {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate arithmetic.", "parameters": CALCULATOR.input_schema}}


@pytest.mark.parametrize("text, arguments", [
    ('{"expression": "6*7"}', {"expression": "6*7"}),
    ("", {}),
    ('{"expression": "6*7"', {"_raw_arguments": '{"expression": "6*7"'}),
    ("[1, 2]", {"_raw_arguments": "[1, 2]"}),
])
def test_tool_arguments_that_are_not_a_json_object_are_kept_raw_for_the_tool_to_refuse(text, arguments):
    assert tool_arguments(text) == arguments
