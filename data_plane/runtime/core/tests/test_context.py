"""Token-budgeted contexts: pure, with a counter whose arithmetic a reader can do by hand."""

from __future__ import annotations

import pytest

from data_plane.runtime.core import context, machine
from data_plane.runtime.core.context import SUMMARY_KEY, Meter, Overflow, SummaryNeeded
from data_plane.runtime.core.graph import GraphInvalid
from data_plane.runtime.core.machine import CallModel, EffectFailed, EffectsCompleted
from data_plane.runtime.core.messages import Message, ToolCall, ToolDefinition, Usage
from data_plane.runtime.core.ports import ModelReply, ModelRequest, RecallRequest
from data_plane.runtime.core.spec import ContextSettings, spec_from_json
from data_plane.runtime.core.state import RunState, Status, Summary


class Words:
    """One token a word (content, tool call names and arguments, tool names and descriptions), one more for
    each message; a request itself costs nothing. Input limits are known for "big" models only."""

    def count(self, *, model, messages=(), tools=()) -> int:
        words = sum(len(m.content.split()) + sum(1 + len(c.arguments) for c in m.tool_calls) + 1 for m in messages)
        return words + sum(1 + len(tool.description.split()) for tool in tools)

    def input_limit(self, model):
        return 1000 if model.startswith("big") else None


WORDS = Meter(counter=Words())
WITH_MEMORIES = Meter(counter=Words(), recalls_memories=True)
CHAT = {"entry": "chat", "nodes": [{"id": "chat", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}


def spec(tools=(), recall=True, **settings):
    return spec_from_json({"instructions": "Be brief.", "models": ["m1"], "graph": CHAT,
                           "tools": [tool.to_json() for tool in tools], "memory": {"recall": recall},
                           "context": {"reserve_output_tokens": 0, "summary_max_tokens": 50, **settings}})


def words(count: int, word: str = "w") -> str:
    return " ".join([word] * count)


def user(n: int, size: int = 49) -> Message:  # size words plus the message: size + 1 tokens
    return Message(role="user", content=words(size, f"u{n}"))


def assistant(n: int, size: int = 49) -> Message:
    return Message(role="assistant", content=words(size, f"a{n}"))


def state_of(*messages: Message, summary: Summary | None = None) -> RunState:
    return RunState(status=Status.RUNNING, messages=tuple(messages), values={}, frontier=("chat",), summary=summary)


def request_for(s, state, meter=WORDS):
    return machine._model_request(state, s, s.workflow.node("chat"), meter)


def summary_reply(text: str) -> ModelReply:
    return ModelReply(message=Message(role="assistant", content=text),
                      usage=Usage(model="m1", input_tokens=70, output_tokens=7, cost_usd=0.002))


# --- Assembly ----------------------------------------------------------------------------------------

def test_a_conversation_within_the_budget_is_sent_whole_with_what_it_cost():
    s = spec(max_input_tokens=1000, pinned_facts=["The customer is ACME.", "Prices are in EUR."])
    state = state_of(user(1), assistant(1), user(2))
    # when
    request = request_for(s, state)
    # then: the system message holds the instructions, then the pinned facts
    assert request.messages == (
        Message(role="system", content="Be brief.\n\nPinned facts:\n- The customer is ACME.\n- Prices are in EUR."),
        *state.messages)
    assert request.metadata["context"] == {"tokens": 15 + 3 * 50, "budget": 1000, "summarised_messages": 0,
                                           "messages": 3, "truncated_messages": 0}
    assert request.recall is None


def test_the_budget_is_the_models_input_limit_minus_the_reply_reserve_else_8000():
    known = spec_from_json({"instructions": "x", "models": ["big-model", "m1"], "graph": CHAT,
                            "context": {"reserve_output_tokens": 100}})
    unknown = spec_from_json({"instructions": "x", "models": ["m1"], "graph": CHAT})
    state = state_of(user(1))
    assert request_for(known, state).metadata["context"]["budget"] == 1000 - 100
    assert request_for(unknown, state).metadata["context"]["budget"] == 8000 - 1024


def test_over_the_budget_the_oldest_messages_are_summarised_first_keeping_the_recent_ones():
    # given: 8 messages of 50 tokens; the budget leaves 400 - 3 (the system message) = 397 for them
    s = spec(max_input_tokens=400, min_recent_messages=2)
    conversation = [m for n in range(4) for m in (user(n), assistant(n))]
    # when
    plan = request_for(s, state_of(*conversation))
    # then: a new summary (50 tokens, and 14 for its heading) would leave 400 - 3 - 14 - 50 = 333; the messages
    # after it take at most half of that, 166: the last three (150)
    assert isinstance(plan, SummaryNeeded) and (plan.start, plan.upto) == (0, 5)
    system, transcript = plan.request.messages
    assert system.content.startswith(context.SUMMARY_MARKER)
    assert transcript.content == ("Previous summary:\n(none yet)\n\nMessages to fold in:\n"
                                  + "\n".join(f"{m.role}: {m.content}" for m in conversation[:5]))
    assert (plan.request.models, plan.request.tools, plan.request.max_output_tokens) == (("m1",), (), 50)


@pytest.mark.parametrize("min_recent, expected", [(1, 5), (3, 5), (4, 4), (7, 1), (8, None)])
def test_the_last_min_recent_messages_are_never_summarised(min_recent, expected):
    s = spec(max_input_tokens=400, min_recent_messages=min_recent)
    conversation = [m for n in range(4) for m in (user(n), assistant(n))]
    plan = request_for(s, state_of(*conversation))
    if expected is None:  # nothing may be summarised: the messages are truncated to fit instead
        assert isinstance(plan, ModelRequest) and plan.metadata["context"]["truncated_messages"] == 1
    else:
        assert isinstance(plan, SummaryNeeded) and plan.upto == expected


@pytest.mark.parametrize("min_recent, expected", [(2, 6), (3, 3), (4, 3)])
def test_a_summary_never_separates_tool_calls_from_their_results(min_recent, expected):
    # given: a call with two results at positions 3 to 5; the budget wants as much summarised as allowed
    call = Message(role="assistant", tool_calls=(ToolCall("c1", "calculator", {"expression": "1+1"}),
                                                 ToolCall("c2", "calculator", {"expression": "2+2"})))
    results = [Message(role="tool", name="calculator", tool_call_id=c, content=words(99)) for c in ("c1", "c2")]
    conversation = [user(0, 99), assistant(0, 99), user(1, 99), call, *results, assistant(1, 99), user(2, 99)]
    s = spec(max_input_tokens=700, min_recent_messages=min_recent)
    # when
    plan = request_for(s, state_of(*conversation))
    # then: the summary takes the call with both results, or stops before the call
    assert isinstance(plan, SummaryNeeded) and plan.upto == expected


def test_with_a_summary_the_request_is_the_summary_then_the_messages_after_it():
    conversation = [m for n in range(4) for m in (user(n), assistant(n))]
    state = state_of(*conversation, summary=Summary(text="The user counted.", message_count=6))
    s = spec(max_input_tokens=400, pinned_facts=["Be kind."], min_recent_messages=2)
    # when
    request = request_for(s, state)
    # then
    assert isinstance(request, ModelRequest)
    assert request.messages[0].content == (
        "Be brief.\n\nPinned facts:\n- Be kind.\n\n"
        "Summary of the earlier conversation (its first 6 messages, 3 of them your replies):\nThe user counted.")
    assert request.messages[1:] == tuple(conversation[6:])
    assert request.metadata["context"]["summarised_messages"] == 6


def test_a_later_summary_folds_the_previous_one_and_the_newly_old_messages():
    conversation = [m for n in range(8) for m in (user(n), assistant(n))]
    state = state_of(*conversation, summary=Summary(text="- u0 to u2 were counted", message_count=6))
    s = spec(max_input_tokens=400, min_recent_messages=2)
    plan = request_for(s, state)
    # then: the 10 messages after the summary (500 tokens) are over; those from 13 on (150) would fit half the
    # room, but the summarising call's own input (400 - 50 for its reply - 68 for its prompt - 13 for the previous
    # summary = 269 tokens) takes five of them (255): the next summary folds in the rest
    assert isinstance(plan, SummaryNeeded) and (plan.start, plan.upto) == (6, 11)
    assert plan.request.messages[1].content == (
        "Previous summary:\n- u0 to u2 were counted\n\nMessages to fold in:\n"
        + "\n".join(f"{m.role}: {m.content}" for m in conversation[6:11]))


def test_a_message_bigger_than_the_budget_is_truncated_visibly():
    # given: nothing older to summarise, and the latest message alone is over the budget
    huge = Message(role="tool", name="http_fetch", tool_call_id="c1", content=words(2000, "page"))
    call = Message(role="assistant", tool_calls=(ToolCall("c1", "http_fetch", {"url": "x"}),))
    s = spec(max_input_tokens=1200, min_recent_messages=3)
    # when
    request = request_for(s, state_of(user(1), call, huge))
    # then
    assert isinstance(request, ModelRequest)
    cut = request.messages[-1]
    assert cut.content.startswith("page page") and cut.content.endswith(
        "[truncated by Agentplane: this message had 2001 tokens, more than the context budget allows; "
        "only its beginning is kept]")
    assert (cut.role, cut.tool_call_id) == ("tool", "c1")
    assert request.messages[:-1] == (Message(role="system", content="Be brief."), user(1), call)
    assert request.metadata["context"]["truncated_messages"] == 1
    assert request.metadata["context"]["tokens"] == Words().count(model="m1", messages=request.messages) <= 1200


def test_instructions_and_tools_that_cannot_fit_are_an_overflow():
    tools = [ToolDefinition(name=f"t{i}", description=words(80)) for i in range(4)]
    s = spec(tools=tools, max_input_tokens=300)
    plan = request_for(s, state_of(user(1)))
    assert isinstance(plan, Overflow)
    assert plan.message.startswith("The instructions, pinned facts and 4 tool definitions need 327 tokens, more "
                                   "than the context budget of 300")


def test_an_overflow_fails_the_run_with_context_overflow_and_calls_no_model():
    tools = [ToolDefinition(name=f"t{i}", description=words(80)) for i in range(4)]
    s = spec(tools=tools, max_input_tokens=300)
    state, commands = machine.start(s, input="hello", now=0, meter=WORDS)
    assert commands == []
    # when: the step runs with nothing to do
    failed, after = machine.step(state, EffectsCompleted(results={}, now=1), spec=s, meter=WORDS)
    # then
    assert failed.status == Status.FAILED and failed.error["code"] == "context_overflow" and after == []


# --- The summary through the state machine -------------------------------------------------------------

def long_run(s):
    state, _ = machine.start(s, input=words(49, "u0"), now=0, meter=WORDS)
    messages = [m for n in range(1, 4) for m in (assistant(n - 1), user(n))]
    return state.evolve(messages=state.messages + tuple(messages))


def test_the_summary_call_comes_first_then_the_call_that_needed_it():
    s = spec(max_input_tokens=300, min_recent_messages=2)
    state = long_run(s)
    # when
    commands = machine.pending_commands(state, s, WORDS)
    # then
    assert [(c.key, c.node_id) for c in commands] == [(SUMMARY_KEY, "chat")]
    # when: the summary arrives
    summarised, after = machine.step(state, EffectsCompleted({SUMMARY_KEY: summary_reply("They counted.")}, now=1),
                                     spec=s, meter=WORDS)
    # then: the state keeps it and its usage; it is not a step of the agent; the node's call goes ahead.
    # (The summarising call's input has room for three of the messages: 300 - 50 - 68 - 9 = 173 tokens.)
    assert summarised.summary == Summary(text="They counted.", message_count=3)
    assert (summarised.input_tokens, summarised.output_tokens, summarised.cost_usd) == (70, 7, 0.002)
    assert summarised.steps == state.steps and summarised.frontier == ("chat",)
    assert summarised.messages == state.messages  # the history stays whole
    assert [c.key for c in after] == ["chat"]
    assert isinstance(after[0], CallModel) and after[0].request.messages[1:] == state.messages[3:]
    assert summarised.control_json()["summary"] == {"text": "They counted.", "message_count": 3}
    assert RunState.from_parts(control=summarised.control_json(), messages=summarised.messages,
                               values={}).summary == summarised.summary


def test_a_summary_longer_than_its_size_is_cut_visibly():
    s = spec(max_input_tokens=300, min_recent_messages=2)
    state = long_run(s)
    summarised, _ = machine.step(state, EffectsCompleted({SUMMARY_KEY: summary_reply(words(100, "s"))}, now=1),
                                 spec=s, meter=WORDS)
    assert summarised.summary.text.endswith("\n[truncated]") and len(summarised.summary.text.split()) <= 50


def test_a_rejected_summary_call_fails_the_run():
    s = spec(max_input_tokens=300, min_recent_messages=2)
    failed, _ = machine.step(long_run(s), EffectsCompleted({SUMMARY_KEY: EffectFailed("model_rejected", "no")}, now=1),
                             spec=s, meter=WORDS)
    assert failed.status == Status.FAILED and failed.error == {"code": "model_rejected", "message": "no"}


# --- Recalled memories --------------------------------------------------------------------------------

def test_memories_get_their_share_and_go_between_the_pinned_facts_and_the_summary():
    s = spec(max_input_tokens=2000, pinned_facts=["Be kind."], memory_max_tokens=16)
    state = state_of(user(1), assistant(1), Message(role="user", content="What is my name?"),
                     summary=Summary(text="Earlier.", message_count=0))
    # when
    request = request_for(s, state, WITH_MEMORIES)
    # then: the shell is asked for memories about the latest user message, within 16 tokens
    assert request.recall == RecallRequest(query="What is my name?", limit=5, max_tokens=16,
                                           offset=len("Be brief.\n\nPinned facts:\n- Be kind."))
    # when: the recalled memories arrive (more than fit)
    with_memories = context.with_memories(request, ["The user is Ada.", "Ada likes tea.", "Ada lives in Oslo."],
                                          Words())
    # then: those within the share, in order, in their place
    assert with_memories.messages[0].content == (
        "Be brief.\n\nPinned facts:\n- Be kind.\n\nRelevant memories:\n- The user is Ada.\n- Ada likes tea.\n\n"
        "Summary of the earlier conversation (its first 0 messages, 0 of them your replies):\nEarlier.")
    assert with_memories.messages[1:] == request.messages[1:]
    assert with_memories.metadata["context"]["memories"] == 2
    assert with_memories.metadata["context"]["tokens"] == request.metadata["context"]["tokens"] + 11


def test_without_a_memory_store_no_budget_is_kept_for_memories():
    s = spec(max_input_tokens=2000)
    assert request_for(s, state_of(user(1)), WORDS).recall is None


def test_an_agent_that_does_not_recall_keeps_no_budget_for_memories():
    s = spec(max_input_tokens=2000, recall=False)
    assert request_for(s, state_of(user(1)), WITH_MEMORIES).recall is None


# --- The spec section ---------------------------------------------------------------------------------

def test_the_context_section_round_trips_and_is_absent_when_default():
    raw = {"max_input_tokens": 4000, "reserve_output_tokens": 500, "pinned_facts": ["Prices in EUR."],
           "summary_max_tokens": 300, "min_recent_messages": 6, "memory_max_tokens": 200, "memory_limit": 3}
    s = spec_from_json({"instructions": "x", "models": ["m"], "context": raw})
    assert s.context == ContextSettings(max_input_tokens=4000, reserve_output_tokens=500,
                                        pinned_facts=("Prices in EUR.",), summary_max_tokens=300,
                                        min_recent_messages=6, memory_max_tokens=200, memory_limit=3)
    assert s.to_json()["context"] == raw and spec_from_json(s.to_json()) == s
    assert "context" not in spec_from_json({"instructions": "x", "models": ["m"]}).to_json()


@pytest.mark.parametrize("raw, path", [
    ("small", "context"),
    ({"max_input_tokens": 100}, "context.max_input_tokens"),
    ({"max_input_tokens": "big"}, "context.max_input_tokens"),
    ({"reserve_output_tokens": -1}, "context.reserve_output_tokens"),
    ({"max_input_tokens": 1000, "reserve_output_tokens": 900}, "context.reserve_output_tokens"),
    ({"max_input_tokens": 1000, "reserve_output_tokens": 0, "summary_max_tokens": 600}, "context.summary_max_tokens"),
    ({"min_recent_messages": 0}, "context.min_recent_messages"),
    ({"pinned_facts": "one"}, "context.pinned_facts"),
    ({"pinned_facts": ["x" * 1001]}, "context.pinned_facts.0"),
    ({"window": 5}, "context.window"),
])
def test_invalid_context_settings_are_refused_with_their_path(raw, path):
    with pytest.raises(GraphInvalid) as invalid:
        spec_from_json({"instructions": "x", "models": ["m"], "context": raw})
    assert [e["path"] for e in invalid.value.errors] == [path]


class CountingWords(Words):
    """Words, recording how many messages each count was asked for."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def count(self, *, model, messages=(), tools=()) -> int:
        self.sizes.append(len(messages))
        return super().count(model=model, messages=messages, tools=tools)


def test_a_growing_conversation_is_counted_a_message_at_a_time_never_whole():
    """A tokenizer's cost grows with what it is given: at each step only the new messages are counted, one at a
    time; the whole conversation is never handed to the counter again (not for the request's total either)."""
    counter = CountingWords()
    meter = Meter(counter=counter, recalls_memories=True)
    s = spec(max_input_tokens=100_000, pinned_facts=["Be kind."])
    messages = [user(0)]
    for turn in range(1, 40):
        counter.sizes.clear()
        request = request_for(s, state_of(*messages), meter)
        # the new message and the system message's parts, one at a time: as many counts at turn 39 as at turn 1
        assert max(counter.sizes) <= 1 and len(counter.sizes) <= 6
        exact = Words().count(model="m1", messages=request.messages, tools=request.tools)
        assert request.metadata["context"]["tokens"] == exact
        counter.sizes.clear()
        remembered = context.with_memories(request, ["The user is Ada."], counter)
        assert max(counter.sizes) <= 1
        assert remembered.metadata["context"]["tokens"] == Words().count(model="m1", messages=remembered.messages)
        messages.append(assistant(turn) if turn % 2 else user(turn))


def test_a_step_fits_its_model_calls_context_once():
    """A step plans its state for the effects and again to apply their results: the second time comes from the
    first (the context is fitted once), and the answer is the same."""

    class CountingLimits(Words):
        fits = 0

        def input_limit(self, model):  # asked once by each fitting of a context
            CountingLimits.fits += 1
            return None

    meter = Meter(counter=CountingLimits())
    s = spec()  # no max_input_tokens: every fitting asks the counter for the model's limit
    state = state_of(user(0))
    commands = machine.pending_commands(state, s, meter)
    assert CountingLimits.fits == 1
    reply = ModelReply(message=Message(role="assistant", content="Done."), usage=Usage(model="m1"))
    finished, _ = machine.step(state, EffectsCompleted(results={commands[0].key: reply}, now=1.0), spec=s,
                               meter=meter)
    assert CountingLimits.fits == 1 and finished.status == Status.COMPLETED and finished.output == "Done."
    assert machine.pending_commands(state_of(user(0)), s, meter) == commands  # an equal state: fitted anew
    assert CountingLimits.fits == 2
