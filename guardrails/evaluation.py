"""Held-out figures of the guardrails' checks, for the benchmark (bench/) and the training report."""

from __future__ import annotations

import time

import numpy as np

from guardrails.checks.injection import InjectionCheck, heuristic_reasons
from guardrails.checks.normalise import normalise
from guardrails.training.train_injection import load_split


def evaluate_injection_split(check: InjectionCheck, split: str = "test") -> dict[str, object]:
    """Detection and false-positive rates of ``check`` on a labelled split: ``test`` (S-Labs, BENCH.md's figure),
    ``validation``, ``train``, or ``neuralchemy_<part>`` / ``everyday_<part>`` (see train_injection.load_split),
    with the wall-clock latency of each ``evaluate()`` call in milliseconds, one text at a time, after a
    warm-up that loads the model and the embedder. Reads no network and writes nothing."""
    examples = load_split(split)
    check.warm_up()
    latencies, flagged = [], []
    for example in examples:
        started = time.perf_counter()
        verdict = check.evaluate(example.text, point="input")
        latencies.append((time.perf_counter() - started) * 1000.0)
        flagged.append(verdict.triggered)
    labels = np.array([example.label for example in examples])
    hits = np.array(flagged)
    model = check.model
    uncertain = [model.is_uncertain(model.stage1_logit(text, heuristic_reasons(text)))
                 for text in (normalise(example.text).text for example in examples)]
    return {
        "split": split,
        "rows": len(examples),
        "attacks": int(labels.sum()),
        "benign": int((labels == 0).sum()),
        "detected": int(hits[labels == 1].sum()),
        "false_positives": int(hits[labels == 0].sum()),
        "detection_rate": float(hits[labels == 1].mean()),
        "false_positive_rate": float(hits[labels == 0].mean()),
        "stage2_share": float(np.mean(uncertain)),
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
        "latencies_ms": latencies,
    }
