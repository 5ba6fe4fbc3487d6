"""A/B tests of agents: create an experiment with its variants, stop it, promote a variant.

A variant's ``overrides`` (instructions, models, tools, routing, ...) are merged into the agent's current spec
and validated like any spec; the result is an agent version of its own (``is_variant``) that runs assigned to
the variant use and that never becomes the agent's latest. Promoting a variant makes its spec the agent's new
latest version, a normal one. Assignment itself is in data_plane/experiment_selectors.py (read-only).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from django.db import IntegrityError, transaction
from django.utils import timezone

from common.actors import Actor
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from data_plane.errors import AgentArchived, AgentSpecInvalid, ExperimentAlreadyPromoted, ExperimentAlreadyRunning, \
    ExperimentInvalid, ExperimentNameTaken, ExperimentNotRunning
from data_plane.experiment_assignment import bucket_counts
from data_plane.experiment_selectors import experiment_get
from data_plane.models import AgentVersion, Experiment, ExperimentVariant
from data_plane.selectors import agent_get, agent_version_get
from data_plane.services.agents import agent_update, agent_variant_version_create

# What a variant may change in the agent's spec (each replaces the spec's value of that key). ``routing`` and
# ``routing_policy`` are the model routing of the agent spec.
OVERRIDABLE_KEYS = ("instructions", "models", "tools", "mcp_servers", "routing", "routing_policy", "temperature",
                    "limits", "memory", "context")
MIN_VARIANTS, MAX_VARIANTS = 2, 10


def _invalid(message: str, errors: dict[str, Any]) -> ExperimentInvalid:
    return ExperimentInvalid(message, extra={"errors": errors})


def _check_variants(variants: Sequence[Mapping[str, Any]]) -> None:
    """Raise ExperimentInvalid, naming every problem, unless the variants can split traffic."""
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        raise _invalid(f"An experiment has {MIN_VARIANTS} to {MAX_VARIANTS} variants (got {len(variants)}): a "
                       "control and at least one other.", {"variants": ["Give 2 to 10 variants."]})
    errors: dict[str, list[str]] = {}
    names = [str(variant["name"]) for variant in variants]
    for duplicate in sorted({name for name in names if names.count(name) > 1}):
        errors.setdefault(duplicate, []).append(f"The name {duplicate!r} is used twice; variant names are unique.")
    for variant in variants:
        weight = variant.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight <= 0:
            errors.setdefault(variant["name"], []).append(f"weight must be a positive number (got {weight!r}).")
        unknown = sorted(set(variant.get("overrides") or {}) - set(OVERRIDABLE_KEYS))
        if unknown:
            errors.setdefault(variant["name"], []).append(
                f"overrides cannot change {', '.join(unknown)}; they may change {', '.join(OVERRIDABLE_KEYS)}.")
    controls = [variant["name"] for variant in variants if variant.get("is_control")]
    if len(controls) != 1:
        errors.setdefault("is_control", []).append(
            f"Mark exactly one variant as the control (is_control: true); marked: {', '.join(controls) or 'none'}.")
    if not errors:
        counts = bucket_counts([float(variant["weight"]) for variant in variants])
        for variant, count in zip(variants, counts):
            if count == 0:
                errors.setdefault(variant["name"], []).append(
                    "weight is too small: the variant would get no traffic (shares are in steps of 1/10000).")
    if errors:
        raise _invalid("The experiment's variants are invalid: " + " | ".join(
            f"{where}: {message}" for where, messages in errors.items() for message in messages),
            {"variants": errors})


def _variant_version(*, agent: Any, base: AgentVersion, variant: Mapping[str, Any], actor: Actor) -> AgentVersion:
    overrides = dict(variant.get("overrides") or {})
    if not overrides:
        return base  # the agent's version as it is now: pinned, whatever later updates bring
    try:
        version = agent_variant_version_create(agent=agent, spec={**base.spec, **overrides}, actor=actor)
    except AgentSpecInvalid as invalid:
        raise _invalid(f"Variant {variant['name']!r}: {invalid.message}",
                       {"variants": {variant["name"]: invalid.extra.get("errors", {}).get("spec", [])}}) from None
    dropped = sorted(key for key in overrides if key in ("routing", "routing_policy") and key not in version.spec)
    if dropped:  # a spec that does not know the key would silently run without it
        raise _invalid(f"Variant {variant['name']!r}: this server's agent spec has no {', '.join(dropped)}; the "
                       "variant would run without it.", {"variants": {variant["name"]: [
                           f"{key} is not supported by the agent spec." for key in dropped]}})
    return version


def experiment_create(*, tenant, agent_id: UUID, name: str, variants: Sequence[Mapping[str, Any]],  # type: ignore[no-untyped-def]
                      actor: Actor, description: str = "") -> Experiment:
    """Start an A/B test of the agent: from now on its runs that name no version are split between the variants
    (``name``, ``weight``, ``is_control``, ``overrides``). Raises AgentNotFound, AgentArchived, ExperimentInvalid
    (nothing is created), ExperimentAlreadyRunning, ExperimentNameTaken."""
    require_schema(tenant.schema_name)
    _check_variants(variants)
    try:
        with transaction.atomic():
            agent = agent_get(tenant_schema=tenant.schema_name, agent_id=agent_id, for_update=True)
            if agent.is_archived:
                raise AgentArchived(f"Agent {agent.name!r} is archived; it takes no new runs to experiment with.")
            running = Experiment.objects.filter(agent=agent, status=Experiment.Status.RUNNING).first()
            if running is not None:
                raise ExperimentAlreadyRunning(
                    f"Agent {agent.name!r} already runs experiment {running.name!r} ({running.id}); stop or promote "
                    "it first (POST /v1/experiments/{id}/stop or /promote).")
            if Experiment.objects.filter(agent=agent, name=name).exists():
                raise ExperimentNameTaken(f"Agent {agent.name!r} already has an experiment named {name!r}; "
                                          "choose another name.")
            base = agent_version_get(tenant_schema=tenant.schema_name, agent_id=agent.id)
            experiment = Experiment.objects.create(agent=agent, name=name, description=description,
                                                   salt=secrets.token_hex(16), created_by=str(actor))
            for position, variant in enumerate(variants):
                ExperimentVariant.objects.create(
                    experiment=experiment, name=variant["name"], position=position, weight=float(variant["weight"]),
                    is_control=bool(variant.get("is_control")), overrides=dict(variant.get("overrides") or {}),
                    agent_version=_variant_version(agent=agent, base=base, variant=variant, actor=actor))
            audit_event_record(tenant=tenant, actor=actor, action="experiment.create", target_type="experiment",
                               target_id=str(experiment.id), data={
                                   "agent": agent.name, "name": name, "variants": [
                                       {"name": v.name, "weight": v.weight, "is_control": v.is_control,
                                        "version": v.agent_version.version, "overrides": sorted(v.overrides)}
                                       for v in experiment.variants.select_related("agent_version")]})
    except IntegrityError:  # a concurrent create won the race for the name or the one running slot
        raise ExperimentAlreadyRunning(f"Another experiment of agent {agent_id} (a running one, or one named {name!r}) "
                                       "was created at the same time; list the agent's experiments and retry if "
                                       "needed.") from None
    return experiment_get(tenant_schema=tenant.schema_name, experiment_id=experiment.id)


def experiment_stop(*, tenant, experiment_id: UUID, actor: Actor) -> Experiment:  # type: ignore[no-untyped-def]
    """Stop assigning runs (runs already assigned go on; results stay readable). Raises ExperimentNotFound,
    ExperimentNotRunning."""
    require_schema(tenant.schema_name)
    with transaction.atomic():
        experiment = experiment_get(tenant_schema=tenant.schema_name, experiment_id=experiment_id, for_update=True)
        if experiment.status != Experiment.Status.RUNNING:
            raise ExperimentNotRunning(f"Experiment {experiment.id} is {experiment.status}; only a running "
                                       "experiment can be stopped.")
        experiment.status, experiment.stopped_at = Experiment.Status.STOPPED, timezone.now()
        experiment.save(update_fields=["status", "stopped_at"])
        audit_event_record(tenant=tenant, actor=actor, action="experiment.stop", target_type="experiment",
                           target_id=str(experiment.id), data={"agent": experiment.agent.name,
                                                               "name": experiment.name})
    return experiment


def experiment_promote(*, tenant, experiment_id: UUID, variant: str, actor: Actor) -> Experiment:  # type: ignore[no-untyped-def]
    """Make the variant's spec the agent's new latest version (a normal version; none is added when the variant
    already runs the latest), mark the experiment promoted and stop assigning. Raises ExperimentNotFound,
    ExperimentAlreadyPromoted, ExperimentInvalid (no such variant), AgentArchived, AgentSpecInvalid."""
    require_schema(tenant.schema_name)
    with transaction.atomic():
        experiment = experiment_get(tenant_schema=tenant.schema_name, experiment_id=experiment_id, for_update=True)
        if experiment.status == Experiment.Status.PROMOTED:
            raise ExperimentAlreadyPromoted(
                f"Experiment {experiment.id} already promoted variant {experiment.promoted_variant.name!r} "
                f"(version {experiment.promoted_version}); start a new experiment to test again.")
        chosen = next((v for v in experiment.variants.all() if v.name == variant), None)
        if chosen is None:
            names = ", ".join(v.name for v in experiment.variants.all())
            raise _invalid(f"Experiment {experiment.name!r} has no variant {variant!r}; its variants: {names}.",
                           {"variant": [f"Choose one of: {names}."]})
        agent = agent_get(tenant_schema=tenant.schema_name, agent_id=experiment.agent_id, for_update=True)
        if chosen.agent_version.is_variant or chosen.agent_version.version != agent.latest_version:
            agent = agent_update(tenant=tenant, agent_id=agent.id, actor=actor, spec=chosen.agent_version.spec)
        now = timezone.now()
        experiment.status, experiment.promoted_variant, experiment.promoted_at = \
            Experiment.Status.PROMOTED, chosen, now
        experiment.promoted_version = agent.latest_version
        experiment.stopped_at = experiment.stopped_at or now
        experiment.save(update_fields=["status", "promoted_variant", "promoted_at", "promoted_version", "stopped_at"])
        audit_event_record(tenant=tenant, actor=actor, action="experiment.promote", target_type="experiment",
                           target_id=str(experiment.id), data={
                               "agent": agent.name, "name": experiment.name, "variant": chosen.name,
                               "variant_version": chosen.agent_version.version, "version": agent.latest_version})
    return experiment
