"""Reads of A/B tests: experiments, the variant a run is assigned to, and the per-variant results."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.db.models import Avg, QuerySet
from django.utils import timezone

from common.schemas import require_schema
from data_plane import experiment_statistics as statistics
from data_plane.errors import ExperimentNotFound
from data_plane.experiment_assignment import BUCKETS, bucket_counts, variant_index
from data_plane.models import AgentVersion, Experiment, ExperimentVariant, Run, RunFeedback
from data_plane.selectors import agent_get

FINISHED = ("completed", "failed", "cancelled")


def experiment_list(*, tenant_schema: str, agent_id: UUID) -> QuerySet[Experiment]:
    """The agent's experiments, newest first, with their variants. Raises AgentNotFound."""
    agent = agent_get(tenant_schema=tenant_schema, agent_id=agent_id)
    return (Experiment.objects.filter(agent=agent).select_related("promoted_variant")
            .prefetch_related("variants__agent_version"))


def experiment_get(*, tenant_schema: str, experiment_id: UUID, for_update: bool = False) -> Experiment:
    """One experiment of the tenant. Raises ExperimentNotFound (also for another tenant's id)."""
    require_schema(tenant_schema)
    experiments = Experiment.objects.select_for_update(of=("self",)) if for_update else Experiment.objects
    try:
        return (experiments.select_related("agent", "promoted_variant")
                .prefetch_related("variants__agent_version").get(id=experiment_id))
    except Experiment.DoesNotExist:
        raise ExperimentNotFound(f"Experiment {experiment_id} not found.") from None


@dataclass(frozen=True)
class Assignment:
    """The variant of the agent's running experiment that a run with this key goes to."""

    experiment_id: UUID
    experiment_name: str
    variant_id: UUID
    variant_name: str
    key: str
    agent_version: AgentVersion

    def data(self) -> dict[str, str]:
        """As recorded in the run's first run.status event and its audit event."""
        return {"experiment_id": str(self.experiment_id), "experiment": self.experiment_name,
                "variant": self.variant_name}


def experiment_assignment(*, tenant_schema: str, agent_id: UUID, key: str) -> Assignment | None:
    """The variant a run of this agent with this assignment key goes to while an experiment of the agent is
    running (None when none is): the same key always gets the same variant."""
    require_schema(tenant_schema)
    experiment = Experiment.objects.filter(agent_id=agent_id, status=Experiment.Status.RUNNING).first()
    if experiment is None:
        return None
    variants = list(ExperimentVariant.objects.filter(experiment=experiment).order_by("position")
                    .select_related("agent_version__agent"))
    chosen = variants[variant_index(salt=experiment.salt, key=key, weights=[v.weight for v in variants])]
    return Assignment(experiment_id=experiment.id, experiment_name=experiment.name, variant_id=chosen.id,
                      variant_name=chosen.name, key=key, agent_version=chosen.agent_version)


def traffic_shares(variants: list[ExperimentVariant]) -> dict[UUID, float]:
    """Each variant's share of the assignment buckets (its weight over the sum, as the hash splits it)."""
    counts = bucket_counts([variant.weight for variant in variants])
    return {variant.id: count / BUCKETS for variant, count in zip(variants, counts)}


@dataclass(frozen=True)
class VariantResults:
    variant: ExperimentVariant
    traffic_share: float
    runs: int
    active: int
    completion: statistics.RateEstimate  # completed among finished (completed, failed, cancelled) runs
    cost_usd: statistics.MeanEstimate  # per finished run
    latency_seconds: statistics.MeanEstimate  # finished_at - created_at of completed runs
    latency_p50_seconds: statistics.MedianEstimate
    score: statistics.MeanEstimate  # per run with feedback: the mean of its scores
    vs_control: dict[str, statistics.Comparison] | None


@dataclass(frozen=True)
class ExperimentResults:
    experiment: Experiment
    computed_at: Any
    variants: list[VariantResults]
    caveats: list[str]


@dataclass
class _Samples:
    runs: int = 0
    active: int = 0
    completed: int = 0
    finished: int = 0
    costs: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def experiment_results(*, tenant_schema: str, experiment_id: UUID) -> ExperimentResults:
    """Per variant: runs, completion rate (Wilson interval), mean cost, latency (mean and p50) and evaluation
    score with 95% intervals, and each variant against the control (z-test on the rate, Welch's t-test on the
    means). Counts the runs the experiment assigned (top-level runs; sub-runs and forks are not assigned).
    Raises ExperimentNotFound."""
    experiment = experiment_get(tenant_schema=tenant_schema, experiment_id=experiment_id)
    variants = list(experiment.variants.all())
    samples: dict[UUID, _Samples] = defaultdict(_Samples)
    scores = dict(RunFeedback.objects.filter(run__experiment=experiment).values("run_id")
                  .annotate(score=Avg("score")).values_list("run_id", "score"))
    rows = Run.objects.filter(experiment=experiment).values_list("id", "experiment_variant_id", "status", "cost_usd",
                                                                  "created_at", "finished_at")
    for run_id, variant_id, status, cost, created_at, finished_at in rows.iterator():
        sample = samples[variant_id]
        sample.runs += 1
        if status in FINISHED:
            sample.finished += 1
            sample.costs.append(float(cost))
            if status == "completed":
                sample.completed += 1
                if finished_at is not None:
                    sample.latencies.append((finished_at - created_at).total_seconds())
        else:
            sample.active += 1
        if run_id in scores:
            sample.scores.append(float(scores[run_id]))
    shares = traffic_shares(variants)
    control = next(variant for variant in variants if variant.is_control)
    control_samples = samples[control.id]
    control_rate = statistics.rate_estimate(control_samples.completed, control_samples.finished)
    results = []
    for variant in variants:
        sample = samples[variant.id]
        rate = statistics.rate_estimate(sample.completed, sample.finished)
        vs_control = None if variant.is_control else {
            "completion_rate": statistics.two_proportion_z_test(control_rate, rate),
            "cost_usd": statistics.welch_t_test(control_samples.costs, sample.costs),
            "latency_seconds": statistics.welch_t_test(control_samples.latencies, sample.latencies),
            "score": statistics.welch_t_test(control_samples.scores, sample.scores),
        }
        results.append(VariantResults(
            variant=variant, traffic_share=shares[variant.id], runs=sample.runs, active=sample.active,
            completion=rate, cost_usd=statistics.mean_estimate(sample.costs),
            latency_seconds=statistics.mean_estimate(sample.latencies),
            latency_p50_seconds=statistics.median_estimate(sample.latencies),
            score=statistics.mean_estimate(sample.scores), vs_control=vs_control))
    caveats = []
    if len(variants) > 2:
        caveats.append(f"{len(variants) - 1} variants are each compared with the control at alpha "
                       f"{statistics.ALPHA}; no correction for multiple comparisons is applied (Bonferroni: "
                       f"compare p-values with {statistics.ALPHA / (len(variants) - 1):.4g}).")
    if any(result.active for result in results):
        caveats.append("Runs still active are counted in 'runs' and 'active' only, not in the rates or means.")
    return ExperimentResults(experiment=experiment, computed_at=timezone.now(), variants=results, caveats=caveats)
