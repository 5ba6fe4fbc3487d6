"""Prompt-injection and jailbreak detection: normalise, match heuristics, then a two-stage local classifier.

Stage 1 is a logistic regression over hashed word (1-2) and character (3-5) n-grams of the normalised text and
the heuristic flags: well under a millisecond. Only when its logit falls in an uncertain band (calibrated on
validation data) does stage 2 run: all-MiniLM-L6-v2 embeds the normalised text (its first and last characters,
to bound latency) and a small neural head (one hidden ReLU layer) over [embedding, stage-1 logit] decides. Payloads decoded from
base64, hex and the like are scored the same way; the text's score is the highest. No network: the model is the
committed artefact guardrails/artefacts/injection_model.npz, trained by ``make train-guardrails``
(guardrails/training/train_injection.py; its data and figures are in injection_model.provenance.json).
"""

from __future__ import annotations

import io
import math
import re
import threading
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np

from guardrails.checks.base import Point, Verdict
from guardrails.checks.normalise import ENCODED_PAYLOAD, Normalised, normalise

ARTEFACT_PATH = Path(__file__).resolve().parent.parent / "artefacts" / "injection_model.npz"
CLASSIFIER = "injection.classifier"
INSTRUCTION_OVERRIDE = "injection.instruction_override"
SYSTEM_PROMPT_EXFILTRATION = "injection.system_prompt_exfiltration"
ROLEPLAY_JAILBREAK = "injection.roleplay_jailbreak"
REFUSAL_SUPPRESSION = "injection.refusal_suppression"

Embed = Callable[[list[str]], list[list[float]]]

_CLAUSE = r"[^.?!\n]{0,40}"
# High-recall phrasings, matched on the normalised text. They name the reason; the classifier decides (a
# question about "ignore previous instructions" attacks is not one).
HEURISTICS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (INSTRUCTION_OVERRIDE, re.compile(
        rf"\b(ignore|disregard|forget|override|bypass|skip|abandon|neglect|drop)\b{_CLAUSE}\b(previous|prior|above|"
        r"earlier|preceding|initial|original|all|any|every|your|the|these|those|system)\b[^.?!\n]{0,20}\b("
        r"instructions?|rules?|guidelines?|directives?|prompts?|constraints?|polic(y|ies)|restrictions?|"
        r"programming|training|context|commands?|guardrails?|safeguards?)\b")),
    (INSTRUCTION_OVERRIDE, re.compile(
        r"\bnew (system )?(instructions?|rules?|directives?)\s*:|\bfrom now on\b[^.?!\n]{0,40}\byou (will|must|are)\b"
        r"|^\s*(system|admin|developer)\s*(override|:)")),
    (SYSTEM_PROMPT_EXFILTRATION, re.compile(
        rf"\b(reveal|show|print|display|output|repeat|leak|dump|expose|share|tell me|give me|write out|recite|"
        rf"disclose)\b{_CLAUSE}\b(system prompt|initial prompt|hidden (prompt|instructions?)|system message|"
        r"(your|the) (instructions|prompt|guidelines|rules|configuration|initiali[sz]ation|setup))\b")),
    (SYSTEM_PROMPT_EXFILTRATION, re.compile(
        r"\b(repeat|print|output) (everything|all|the text|the words) (above|before)\b"
        r"|\bwhat (are|were) your (exact |original |initial |hidden )?(instructions|rules|guidelines)\b")),
    (ROLEPLAY_JAILBREAK, re.compile(
        r"\b(dan|do anything now|developer mode|dev mode|jailbreak(ed)? mode|god mode|unfiltered|uncensored|"
        r"unrestricted (ai|mode|assistant|model))\b")),
    (ROLEPLAY_JAILBREAK, re.compile(
        rf"\b(pretend|act|imagine|roleplay|role-play|you are now)\b{_CLAUSE}{_CLAUSE}\b(no|without|free of|free from|"
        r"not bound by|ignores?)\b[^.?!\n]{0,20}\b(restrictions|rules|filters|limits|guidelines|ethics|"
        r"content polic(y|ies)|censorship|safety)\b")),
    (REFUSAL_SUPPRESSION, re.compile(
        r"\bnever (refuse|apologi[sz]e|say (you )?can.?t|decline)\b|\byou (must|will) (always )?comply\b")),
)
HEURISTIC_REASONS: tuple[str, ...] = tuple(dict.fromkeys(reason for reason, _ in HEURISTICS))

_WORD = re.compile(r"\w+")
_PRIME = np.uint64(1_000_003)
_MIX = np.uint64(0x9E3779B1)
_MASK32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class FeatureSettings:
    """How a normalised text becomes a sparse vector; stored with the model so that both sides agree."""

    hash_bits: int = 18
    char_min: int = 3
    char_max: int = 5
    word_max: int = 2
    embed_head_chars: int = 96
    embed_tail_chars: int = 32

    @property
    def dimensions(self) -> int:
        return (1 << self.hash_bits) + len(HEURISTIC_REASONS)


def heuristic_reasons(text: str) -> tuple[str, ...]:
    """The heuristic reason codes that match the normalised ``text``, in a stable order."""
    return tuple(dict.fromkeys(reason for reason, pattern in HEURISTICS if pattern.search(text)))


def features(text: str, reasons: Sequence[str], settings: FeatureSettings) -> tuple[np.ndarray, np.ndarray]:
    """Sparse stage-1 features of a normalised text: (indices, values). Character and word n-grams are
    hashed into 2**hash_bits buckets, each block L2-normalised; heuristic flags follow the buckets."""
    buckets = 1 << settings.hash_bits
    characters = np.unique(_char_hashes(text, settings) & (buckets - 1))
    words = _WORD.findall(text)
    grams = [" ".join(words[i:i + n]) for n in range(1, settings.word_max + 1) for i in range(len(words) - n + 1)]
    word_hashes = np.unique(np.fromiter((zlib.crc32(gram.encode("utf-8")) for gram in grams), dtype=np.int64,
                                        count=len(grams)) & (buckets - 1))
    flags = np.array([buckets + HEURISTIC_REASONS.index(reason) for reason in reasons], dtype=np.int64)
    indices = np.concatenate([characters, word_hashes, flags])
    values = np.concatenate([
        np.full(len(characters), 1.0 / math.sqrt(max(len(characters), 1)), dtype=np.float32),
        np.full(len(word_hashes), 1.0 / math.sqrt(max(len(word_hashes), 1)), dtype=np.float32),
        np.ones(len(flags), dtype=np.float32),
    ])
    return indices, values


def _char_hashes(text: str, settings: FeatureSettings) -> np.ndarray:
    data = np.frombuffer(f" {text} ".encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    hashes = []
    for n in range(settings.char_min, settings.char_max + 1):
        count = len(data) - n + 1
        if count <= 0:
            continue
        value = np.full(count, np.uint64(n * 7919), dtype=np.uint64)
        for offset in range(n):
            value = (value * _PRIME + data[offset:offset + count]) & _MASK32
        hashes.append(value)
    if not hashes:
        return np.zeros(0, dtype=np.int64)
    mixed = (np.concatenate(hashes) * _MIX) & _MASK32
    return (mixed >> np.uint64(32 - settings.hash_bits)).astype(np.int64)


def embedding_input(text: str, settings: FeatureSettings) -> str:
    """What stage 2 embeds: the normalised text, or its head and tail when longer (embedding cost grows with
    length, and attacks sit at the start or the end)."""
    limit = settings.embed_head_chars + settings.embed_tail_chars
    if len(text) <= limit:
        return text
    return f"{text[:settings.embed_head_chars]} {text[-settings.embed_tail_chars:]}"


@dataclass(frozen=True, eq=False)
class InjectionModel:
    """The trained weights and the decision settings. Immutable, so one instance serves every thread."""

    settings: FeatureSettings
    stage1_weights: np.ndarray  # float32, settings.dimensions
    stage1_bias: float
    # The head's input is [embedding, stage-1 logit / LOGIT_SCALE]. With a hidden layer (hidden_weights: float32,
    # (units, input size); hidden_bias: units) head_weights has one weight per unit; without (an artefact
    # trained before the hidden layer), head_weights is linear over the input.
    hidden_weights: np.ndarray | None
    hidden_bias: np.ndarray | None
    head_weights: np.ndarray  # float32
    head_bias: float
    band_low: float  # stage-1 logits in [band_low, band_high] go to stage 2
    band_high: float
    threshold: float  # on the final score

    LOGIT_SCALE = 4.0

    def stage1_logit(self, text: str, reasons: Sequence[str]) -> float:
        indices, values = features(text, reasons, self.settings)
        return float(np.dot(self.stage1_weights[indices], values)) + self.stage1_bias

    def head_logit(self, embedding: Sequence[float], stage1_logit: float) -> float:
        vector = np.append(np.asarray(embedding, dtype=np.float32), np.float32(stage1_logit / self.LOGIT_SCALE))
        if self.hidden_weights is not None and self.hidden_bias is not None:
            vector = np.maximum(self.hidden_weights @ vector + self.hidden_bias, 0.0)
        return float(np.dot(self.head_weights, vector)) + self.head_bias

    def is_uncertain(self, stage1_logit: float) -> bool:
        return self.band_low <= stage1_logit <= self.band_high

    def save(self, path: Path) -> None:
        """Write the model as an .npz whose bytes depend only on its contents (fixed zip timestamps)."""
        arrays = {
            "stage1_weights": self.stage1_weights.astype(np.float16),
            "head_weights": self.head_weights.astype(np.float32),
            "scalars": np.array([self.stage1_bias, self.head_bias, self.band_low, self.band_high, self.threshold],
                                dtype=np.float64),
            "settings": np.array([self.settings.hash_bits, self.settings.char_min, self.settings.char_max,
                                  self.settings.word_max, self.settings.embed_head_chars,
                                  self.settings.embed_tail_chars], dtype=np.int64),
            "heuristic_reasons": np.array(HEURISTIC_REASONS),
        }
        if self.hidden_weights is not None and self.hidden_bias is not None:
            arrays["hidden_weights"] = self.hidden_weights.astype(np.float32)
            arrays["hidden_bias"] = self.hidden_bias.astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, array in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, array, allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, buffer.getvalue())

    @classmethod
    def load(cls, path: Path = ARTEFACT_PATH) -> InjectionModel:
        """Read a model written by ``save``. Raises ValueError if it was trained with other heuristics."""
        with np.load(path, allow_pickle=False) as data:
            if tuple(str(reason) for reason in data["heuristic_reasons"]) != HEURISTIC_REASONS:
                raise ValueError(f"{path} was trained with other heuristics; run `make train-guardrails`.")
            stage1_bias, head_bias, band_low, band_high, threshold = (float(x) for x in data["scalars"])
            settings = FeatureSettings(*(int(x) for x in data["settings"]))
            return cls(settings=settings, stage1_weights=data["stage1_weights"].astype(np.float32),
                       stage1_bias=stage1_bias,
                       hidden_weights=data["hidden_weights"].astype(np.float32) if "hidden_weights" in data else None,
                       hidden_bias=data["hidden_bias"].astype(np.float32) if "hidden_bias" in data else None,
                       head_weights=data["head_weights"].astype(np.float32),
                       head_bias=head_bias, band_low=band_low, band_high=band_high, threshold=threshold)

    def quantised(self) -> InjectionModel:
        """This model with the precision it has once saved (stage-1 weights in float16)."""
        return replace(self, stage1_weights=self.stage1_weights.astype(np.float16).astype(np.float32))


_DEFAULT_MODEL_LOCK = threading.Lock()


@cache
def _default_model_loaded() -> InjectionModel:
    return InjectionModel.load(ARTEFACT_PATH)


def default_model() -> InjectionModel:
    """The committed artefact, loaded once per process, by one thread. A worker's threads that all check their
    first text at once would otherwise each load it: numpy reads the artefact's array headers with
    ``ast.literal_eval``, which CPython 3.11 does not run safely in several threads at once ("SystemError: AST
    constructor recursion depth mismatch" failed a run's step in a 24-thread worker)."""
    with _DEFAULT_MODEL_LOCK:
        return _default_model_loaded()


@dataclass(frozen=True)
class Scored:
    """One text's (or payload's) result: the final score, whether stage 2 ran, and the heuristic reasons."""

    score: float
    used_embedding: bool
    reasons: tuple[str, ...]


MIN_WORDS = 3  # letter runs: "exec(display_system_config())" has four; ids ("7f3a9c21", "ORD-1234") have none
_WORDS = re.compile(r"[^\W\d_]+")
_ID_LIKE = re.compile(r"(?=[^\s]*\d)(?=[^\s]*[A-Za-z])[A-Za-z0-9-]{6,}|[0-9a-fA-F]{8,}")
DATA_POINTS = ("tool_arguments", "tool_result")
MIN_DATA_WORDS = 6
DATA_THRESHOLD = 0.9


def _word_count(text: str) -> int:
    return sum(len(_WORDS.findall(token)) for token in text.split() if not _ID_LIKE.fullmatch(token))


class InjectionCheck:
    """Flags prompt injections and jailbreaks, in the text or in a payload encoded inside it. Thread-safe."""

    name = "injection"

    def __init__(self, *, threshold: float | None = None, model: InjectionModel | None = None,
                 embed: Embed | None = None) -> None:
        self._model = model
        self._threshold = threshold
        self._embed = embed
        self._lock = threading.Lock()

    @property
    def model(self) -> InjectionModel:
        if self._model is None:
            self._model = default_model()
        return self._model

    @property
    def threshold(self) -> float:
        return self.model.threshold if self._threshold is None else self._threshold

    def _embedder(self) -> Embed:
        if self._embed is None:
            with self._lock:
                if self._embed is None:
                    from common.local_embeddings import LocalEmbedder

                    self._embed = LocalEmbedder(threads=1).embed
        return self._embed

    def warm_up(self) -> None:
        """Load the model and the embedder now rather than on the first uncertain text."""
        self._embedder()(["warm up"])

    def evaluate(self, text: str, *, point: Point) -> Verdict:
        return self.evaluate_many([text], point=point)[0]

    def evaluate_many(self, texts: Sequence[str], *, point: Point = "input") -> list[Verdict]:
        """One verdict per text; the texts that reach stage 2 are embedded in one batch (for benchmarks)."""
        normalised = [normalise(text) for text in texts]
        candidates = [(index, item.text, False) for index, item in enumerate(normalised)]
        candidates += [(index, payload, True) for index, item in enumerate(normalised) for payload in item.decoded]
        # a short plain text is decided by the rule in _verdict whatever stage 2 would say: it is not embedded
        short = {index for index, item in enumerate(normalised)
                 if not item.signals and not item.decoded and _word_count(item.text) < MIN_WORDS}
        scored = self.score_normalised([candidate for _, candidate, _ in candidates],
                                       embed=[index not in short for index, _, _ in candidates])
        best: dict[int, tuple[Scored, bool]] = {}
        for (index, _, from_payload), result in zip(candidates, scored, strict=True):
            if index not in best or result.score > best[index][0].score:
                best[index] = (result, from_payload)
        return [self._verdict(normalised[index], *best[index], point=point) for index in range(len(texts))]

    def score_normalised(self, texts: Sequence[str], *, embed: Sequence[bool] | None = None) -> list[Scored]:
        """Scores of already normalised texts: stage 1 for all, stage 2 for the uncertain ones (of those
        ``embed`` allows; all by default)."""
        model = self.model
        reasons = [heuristic_reasons(text) for text in texts]
        logits = [model.stage1_logit(text, found) for text, found in zip(texts, reasons, strict=True)]
        uncertain = [index for index, logit in enumerate(logits)
                     if model.is_uncertain(logit) and (embed is None or embed[index])]
        final = list(logits)
        if uncertain:
            vectors = self._embedder()([embedding_input(texts[index], model.settings) for index in uncertain])
            for index, vector in zip(uncertain, vectors, strict=True):
                final[index] = model.head_logit(vector, logits[index])
        uncertain_set = set(uncertain)
        return [Scored(score=_sigmoid(final[index]), used_embedding=index in uncertain_set, reasons=reasons[index])
                for index in range(len(texts))]

    def _verdict(self, item: Normalised, result: Scored, from_payload: bool, *, point: Point = "input") -> Verdict:
        triggered = result.score >= self.threshold
        explicit = bool(result.reasons or item.signals or from_payload)  # a heuristic, a trick, a hidden payload
        words = _word_count(item.text)
        if triggered and not explicit and words < MIN_WORDS:
            triggered = False  # "hi", "Deploy it": an injection needs an instruction to inject
        if triggered and not explicit and point in DATA_POINTS and (
                words < MIN_DATA_WORDS or result.score < DATA_THRESHOLD):
            # A tool's arguments or result is data, not a message to the agent: the classifier learned what
            # users type, so on data only a clear instruction to the agent counts (short values never do).
            triggered = False
        if not triggered:
            return Verdict(check=self.name, triggered=False, score=result.score,
                           message="No prompt injection or jailbreak detected.")
        reasons = [*result.reasons, CLASSIFIER, *item.signals]
        if from_payload and ENCODED_PAYLOAD not in reasons:
            reasons.append(ENCODED_PAYLOAD)
        where = "in an encoded payload inside the text" if from_payload else "in the text"
        return Verdict(check=self.name, triggered=True, score=result.score, reasons=tuple(dict.fromkeys(reasons)),
                       message=f"Likely prompt injection or jailbreak {where} (score {result.score:.2f}).")


def _sigmoid(value: float) -> float:
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)
