"""The scripted model server over real HTTP: OpenAI's shapes, scenario selection, stateless turns, failures."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from data_plane.model_server import ServerHandle, start_in_thread
from data_plane.tests import media_files
from data_plane.runtime.core.context import SUMMARY_PROMPT


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_in_thread()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root_url, timeout=10) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register(http: httpx.Client, scenario: dict[str, Any]) -> str:
    http.post("/admin/scenarios", json=scenario).raise_for_status()
    return scenario["name"]


def chat(http: httpx.Client, model: str, messages: list[dict[str, Any]], **body: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": model, "messages": messages, **body})


def stream_events(http: httpx.Client, model: str, messages: list[dict[str, Any]], **body: Any) -> list[Any]:
    """The SSE ``data:`` payloads of a streamed completion, JSON-decoded, with the final ``[DONE]`` kept as is."""
    response = chat(http, model, messages, stream=True, **body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [frame for frame in response.text.split("\n\n") if frame]
    assert all(frame.startswith("data: ") for frame in frames)
    return [frame[6:] if frame == "data: [DONE]" else json.loads(frame[6:]) for frame in frames]


def requests_for(http: httpx.Client, scenario: str) -> int:
    return http.get("/admin/stats").json()["requests_per_scenario"].get(scenario, 0)


USER_HI = [{"role": "user", "content": "hi"}]


def test_a_streamed_reply_has_openai_chunks_words_then_finish_then_usage_then_done(http):
    # given
    name = register(http, {"name": unique("words"), "turns": [{"content": "one two three four five six seven"}]})
    # when
    events = stream_events(http, name, USER_HI, stream_options={"include_usage": True})
    # then
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert all(c["model"] == name for c in events[:-1])
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "one two three "}, {"content": "four five six "}, {"content": "seven"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, None, "stop"]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 1  # "hi": 2 characters, at least one token
    assert usage_chunk["usage"]["completion_tokens"] == 9  # 33 characters / 4, rounded up
    assert usage_chunk["usage"]["total_tokens"] == 10
    assert usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_a_stream_without_include_usage_sends_no_usage_chunk(http):
    events = stream_events(http, "echo", USER_HI)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e and e["choices"] for e in events[:-1])


def test_tool_calls_stream_id_and_name_first_then_argument_fragments(http):
    # given
    name = register(http, {"name": unique("tools"), "turns": [{"tool_calls": [
        {"name": "calculator", "arguments": {"expression": "12345 * 67890 + 1"}},
        {"name": "get_time", "arguments": {}}]}]})
    # when
    chunks = stream_events(http, name, USER_HI)[:-1]
    # then
    deltas = [c["choices"][0]["delta"] for c in chunks]
    first = deltas[0]["tool_calls"][0]
    second = next(d["tool_calls"][0] for d in deltas[1:] if "id" in d["tool_calls"][0])
    assert deltas[0]["role"] == "assistant" and deltas[0]["content"] is None
    assert first["index"] == 0 and first["type"] == "function" and first["function"] == {"name": "calculator",
                                                                                         "arguments": ""}
    assert first["id"].startswith("call_0_0_") and second["id"].startswith("call_0_1_")
    assert second["index"] == 1 and second["function"] == {"name": "get_time", "arguments": ""}
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1]
                 if "id" not in d["tool_calls"][0] and d["tool_calls"][0]["index"] == 0]
    assert fragments == ['{"expression":"1', '2345 * 67890 + 1', '"}']  # 34 characters, 16 a fragment
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}


def test_a_non_streamed_reply_is_a_chat_completion_with_usage(http):
    # when
    body = chat(http, "parallel-tools", USER_HI).json()
    # then
    assert body["object"] == "chat.completion" and body["model"] == "parallel-tools"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in choice["message"]["tool_calls"]] == [("function", "calculator", {"expression": "2+2"}),
                                                          ("function", "get_time", {})]
    assert body["usage"]["prompt_tokens"] == 1 and body["usage"]["completion_tokens"] == 10  # 40 characters


@pytest.mark.parametrize("how", ["model", "scripted-prefix", "system-marker", "user-field"])
def test_the_scenario_is_chosen_by_model_prefix_marker_or_user(http, how):
    # given
    name = register(http, {"name": unique("pick"), "turns": [{"content": "picked"}]})
    messages, model, extra = list(USER_HI), "gpt-4o-mini", {}
    if how == "model":
        model = name
    elif how == "scripted-prefix":
        model = f"scripted/{name}"
    elif how == "system-marker":
        messages = [{"role": "system", "content": f"Be brief. [scenario:{name}] Thanks."}, *USER_HI]
    else:
        extra = {"user": f"scenario:{name}"}
    # when
    body = chat(http, model, messages, **extra).json()
    # then
    assert body["choices"][0]["message"]["content"] == "picked"
    assert requests_for(http, name) == 1


def test_the_model_name_wins_over_the_marker_and_the_marker_over_user(http):
    first, second, third = (register(http, {"name": unique(n), "turns": [{"content": n}]}) for n in ("a", "b", "c"))
    marked = [{"role": "system", "content": f"[scenario:{second}]"}, *USER_HI]
    assert chat(http, first, marked, user=f"scenario:{third}").json()["choices"][0]["message"]["content"] == "a"
    assert chat(http, "gpt-x", marked, user=f"scenario:{third}").json()["choices"][0]["message"]["content"] == "b"


def test_without_a_choice_the_echo_scenario_repeats_the_last_user_message(http):
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "You said: first"},
                {"role": "user", "content": [{"type": "text", "text": "second"}]}]
    body = chat(http, "gpt-4o-mini", messages).json()
    assert body["choices"][0]["message"]["content"] == "You said: second"


def test_an_explicitly_named_unknown_scenario_is_a_404_model_not_found(http):
    response = chat(http, "scripted/no-such-scenario", USER_HI)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert "no-such-scenario" in response.json()["error"]["message"]


def test_the_turn_is_the_number_of_assistant_messages_and_replays_get_the_same_answer(http):
    # given
    name = register(http, {"name": unique("turns"), "turns": [{"content": "zero"}, {"content": "one"}]})
    after_one = [*USER_HI, {"role": "assistant", "content": "zero"}, {"role": "user", "content": "again"}]
    # when
    first = chat(http, name, after_one).json()
    replay = chat(http, name, after_one).json()
    beyond = chat(http, name, [*after_one, {"role": "assistant", "content": "one"}]).json()
    # then
    assert first["choices"] == replay["choices"] and first["id"] == replay["id"]
    assert first["choices"][0]["message"]["content"] == "one"
    assert beyond["choices"][0]["message"]["content"] == f"(scenario {name} has no more turns)"


def test_a_summarising_request_gets_a_deterministic_summary_within_its_max_tokens(http):
    # given: the runtime's summarising call (core/context.py), whatever the model name
    transcript = ("Previous summary:\n- user: asked for the invoice total\n\nMessages to fold in:\n"
                  "user: Add the March refunds please\nassistant: The total with the March refunds is 1,240 EUR.")
    messages = [{"role": "system", "content": SUMMARY_PROMPT.format(tokens=30)},
                {"role": "user", "content": transcript}]
    before = requests_for(http, "summary")
    # when
    reply = chat(http, "plan-act-reflect", messages, max_tokens=40).json()
    short = chat(http, "plan-act-reflect", messages, max_tokens=12).json()
    # then: the previous points, then one per new message; the oldest go first beyond max_tokens
    assert reply["choices"][0]["message"]["content"] == (
        "- user: asked for the invoice total\n- user: Add the March refunds please\n"
        "- assistant: The total with the March refunds is 1,240 EUR.")
    assert short["choices"][0]["message"]["content"] == "- assistant: The total with the March refunds is 1,240 EUR."
    assert requests_for(http, "summary") == before + 2


def test_a_summarised_conversation_counts_the_replies_its_summary_stands_for(http):
    # given: a conversation whose first two replies are in the summary
    name = register(http, {"name": unique("turns"), "turns": [
        {"content": "zero"}, {"content": "one"}, {"content": "two"}, {"content": "three"}]})
    system = ("Be brief.\n\nSummary of the earlier conversation (its first 4 messages, 2 of them your replies):\n"
              "- user: hi")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "again"},
                {"role": "assistant", "content": "two"}, {"role": "user", "content": "and again"}]
    # when
    reply = chat(http, name, messages).json()
    # then: the turn is 2 summarised + 1 sent
    assert reply["choices"][0]["message"]["content"] == "three"


def test_repeat_last_plays_the_last_turn_again(http):
    name = register(http, {"name": unique("again"), "repeat_last": True, "turns": [{"content": "x"}, {"content": "y"}]})
    messages = [*USER_HI] + [{"role": "assistant", "content": "x"}] * 5
    assert chat(http, name, messages).json()["choices"][0]["message"]["content"] == "y"


def test_placeholders_are_filled_from_the_last_user_and_tool_messages(http):
    # given
    name = register(http, {"name": unique("fill"), "turns": [
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
        {"content": "You asked {{last_user}}; the tool said {{last_tool}}."}]})
    messages = [{"role": "user", "content": "what is 6*7?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    # when
    body = chat(http, name, messages).json()
    # then
    assert body["choices"][0]["message"]["content"] == "You asked what is 6*7?; the tool said 42."


def test_cached_tokens_come_from_the_turn(http):
    name = register(http, {"name": unique("cache"), "turns": [{"content": "ok", "cached_tokens": 64}]})
    body = chat(http, name, [{"role": "user", "content": "x" * 400}]).json()
    assert body["usage"]["prompt_tokens"] == 100
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 64


def test_an_injected_failure_hits_the_first_k_requests_of_each_conversation(http):
    # given
    name = register(http, {"name": unique("flaky"), "turns": [{"content": "ok", "fail": {"status": 429, "times": 2}}]})
    other = [{"role": "user", "content": "another conversation"}]
    # when
    statuses = [chat(http, name, USER_HI).status_code for _ in range(3)]
    other_statuses = [chat(http, name, other).status_code for _ in range(3)]
    failed = chat(http, name, [{"role": "user", "content": "third"}])
    # then
    assert statuses == [429, 429, 200] and other_statuses == [429, 429, 200]
    assert failed.json()["error"]["code"] == "rate_limit_exceeded" and failed.json()["error"]["type"] == "requests"
    stats = http.get("/admin/stats").json()
    assert stats["requests_per_scenario"][name] == 7 and stats["failures_per_scenario"][name] == 5


def test_re_registering_a_scenario_resets_its_failure_counters(http):
    scenario = {"name": unique("reset"), "turns": [{"content": "ok", "fail": {"status": 503, "times": 1}}]}
    register(http, scenario)
    assert [chat(http, scenario["name"], USER_HI).status_code for _ in range(2)] == [503, 200]
    register(http, scenario)
    assert chat(http, scenario["name"], USER_HI).status_code == 503


def test_the_reject_scenario_answers_400(http):
    response = chat(http, "reject", USER_HI, stream=True)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_a_stream_can_be_cut_after_some_chunks(http):
    # given
    name = register(http, {"name": unique("cut"), "turns": [
        {"content": "one two three four five six", "fail": {"status": 500, "times": 1, "after_chunks": 2}}]})
    # when
    with pytest.raises(httpx.RemoteProtocolError):
        chat(http, name, USER_HI, stream=True)
    # then: the next attempt of the same conversation streams to the end
    assert stream_events(http, name, USER_HI)[-1] == "[DONE]"


def test_admin_registers_lists_shows_and_deletes_scenarios(http):
    # given
    name = unique("crud")
    # when
    created = http.post("/admin/scenarios", json={"name": name, "turns": [{"content": "hello"}]})
    # then
    assert created.status_code == 201 and created.json() == {"name": name, "turns": 1}
    assert name in http.get("/admin/scenarios").json()["scenarios"]
    assert name in [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert http.get(f"/admin/scenarios/{name}").json() == {"name": name, "repeat_last": False,
                                                           "turns": [{"content": "hello"}]}
    assert http.delete(f"/admin/scenarios/{name}").status_code == 204
    assert name not in http.get("/admin/scenarios").json()["scenarios"]
    assert http.delete(f"/admin/scenarios/{name}").status_code == 404


@pytest.mark.parametrize("scenario, complaint", [
    ({"name": "bad name!", "turns": [{"content": "x"}]}, "'name' must match"),
    ({"name": "empty", "turns": []}, "'turns' must be a non-empty list"),
    ({"name": "nothing", "turns": [{}]}, "give 'content', 'tool_calls' or 'fail'"),
    ({"name": "typo", "turns": [{"contnet": "x"}]}, "unknown fields ['contnet']"),
    ({"name": "badfail", "turns": [{"fail": {"status": 200}}]}, "'fail' must be"),
])
def test_an_invalid_scenario_is_refused_with_the_reason(http, scenario, complaint):
    before = http.get("/admin/scenarios").json()["scenarios"]
    response = http.post("/admin/scenarios", json=scenario)
    assert response.status_code == 400 and complaint in response.json()["error"]["message"]
    assert http.get("/admin/scenarios").json()["scenarios"] == before


def test_stats_count_requests_per_scenario_until_reset(http):
    # given
    name = register(http, {"name": unique("counted"), "turns": [{"content": "ok"}]})
    for _ in range(3):
        chat(http, name, USER_HI)
    assert requests_for(http, name) == 3
    # when
    assert http.delete("/admin/stats").status_code == 204
    # then
    assert http.get("/admin/stats").json() == {"requests_per_scenario": {}, "failures_per_scenario": {},
                                               "total_requests": 0, "transcriptions": 0}


def test_shipped_scenarios_are_registered(http):
    names = http.get("/admin/scenarios").json()["scenarios"]
    assert {"echo", "plan-act-reflect", "tool-then-answer", "parallel-tools", "reject"} <= set(names)
    assert http.get("/healthz").json()["status"] == "ok"


def test_the_command_line_server_prints_its_port_and_answers():
    # given
    process = subprocess.Popen([sys.executable, "-m", "data_plane.model_server", "--host", "127.0.0.1", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        # when
        line = process.stdout.readline().strip()
        # then
        assert line.startswith("listening on http://127.0.0.1:")
        assert httpx.get(line.removeprefix("listening on ") + "/healthz", timeout=5).json()["status"] == "ok"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_a_branch_plays_when_the_system_and_user_messages_hold_its_texts(http):
    # given
    name = register(http, {"name": unique("branchy"), "turns": [{"content": "plain"}], "branches": [
        {"if_system_contains": "[purpose:lesson]", "if_user_contains": "refund", "turns": [{"content": "lesson"}]},
        {"if_system_contains": "check the ledger", "turns": [{"content": "careful"}]}]})

    def answer(system: str, user: str) -> str:
        body = chat(http, name, [{"role": "system", "content": system}, {"role": "user", "content": user}]).json()
        return body["choices"][0]["message"]["content"]

    # then
    assert answer("[purpose:lesson] write one", "the refund failed") == "lesson"
    assert answer("[purpose:lesson] write one", "the order failed") == "plain"  # both conditions must hold
    assert answer("Memories: always check the ledger.", "anything") == "careful"
    assert answer("Nothing here.", "refund") == "plain"
    bad = http.post("/admin/scenarios", json={"name": unique("bad"), "turns": [{"content": "x"}],
                                              "branches": [{"turns": [{"content": "y"}]}]})
    assert bad.status_code == 400 and "if_system_contains" in bad.text


def test_embeddings_are_deterministic_and_as_long_as_asked(http):
    body = {"model": "text-embedding-3-small", "input": ["green tea", "green tea", "black coffee"], "dimensions": 384}
    data = http.post("/v1/embeddings", json=body).json()["data"]
    vectors = [item["embedding"] for item in data]
    assert [len(v) for v in vectors] == [384] * 3 and vectors[0] == vectors[1] and vectors[0] != vectors[2]
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-9
    assert http.post("/v1/embeddings", json={"input": 3}).status_code == 400
# --- media: image and audio parts, transcription ---------------------------------------------------------

def _data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def test_a_scenario_sees_the_image_and_audio_parts_it_was_given(http):
    # given
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": _data_url("image/png", media_files.png())}},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
               {"type": "input_audio", "input_audio": {"data": base64.b64encode(media_files.wav()).decode(),
                                                                 "format": "wav"}}]
    # when
    response = chat(http, "describe-media", [{"role": "user", "content": content}])
    # then
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == (
        "Images: 2 (image/png, url). Audio clips: 1 (wav). Text: What is this?")


@pytest.mark.parametrize(("part", "error"), [
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, "not valid, non-empty base64"),
    ({"type": "image_url", "image_url": {"url": "data:text/html;base64,PGI+"}}, "must be an http(s) URL or a data:image"),
    ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "ogg"}}, "format must be one of wav, mp3"),
])
def test_a_malformed_media_part_is_refused_as_openai_refuses_it(http, part, error):
    response = chat(http, "describe-media", [{"role": "user", "content": [part]}])
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert error in response.json()["error"]["message"]


def test_transcription_answers_the_scripted_text_or_one_derived_from_the_audio(http):
    # given
    scripted, unscripted = media_files.wav(milliseconds=10), media_files.wav(milliseconds=20)
    assert http.post("/admin/transcripts", json={"sha256": hashlib.sha256(scripted).hexdigest(),
                                                 "text": "hello world"}).status_code == 201
    before = http.get("/admin/stats").json()["transcriptions"]

    def transcribe(audio: bytes, **fields: str) -> httpx.Response:
        return http.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")},
                         data={"model": "whisper-1", **fields})

    # when
    known, derived, as_text = transcribe(scripted), transcribe(unscripted), transcribe(scripted, response_format="text")
    # then
    assert known.json() == {"text": "hello world"}
    assert derived.json() == {"text": f"(audio of {len(unscripted)} bytes, sha256 "
                                      f"{hashlib.sha256(unscripted).hexdigest()[:12]})"}
    assert as_text.text == "hello world"
    assert http.get("/admin/stats").json()["transcriptions"] - before == 3
    assert http.post("/v1/audio/transcriptions", data={"model": "whisper-1"}).status_code == 400
    assert http.post("/admin/transcripts", json={"sha256": "nope", "text": "x"}).status_code == 400
