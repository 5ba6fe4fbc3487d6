"""Guardrail writes: policies, flags, and the checks of texts at the four points with their record.

Every decision that acts (flag, redact, require approval, block) is an audit event with the point, check,
score, reasons and action, never the text or what was found in it; a flag is also kept for review.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from common.actors import Actor
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from guardrails import selectors
from guardrails.checks.base import POINTS, Point
from guardrails.errors import GuardrailBlocked, GuardrailPolicyInvalid
from guardrails.models import GuardrailFlag, GuardrailPolicy
from guardrails.pipeline import Outcome, Pipeline, check_for
from guardrails.policy import PolicyInvalid, merged, validate_policy

GUARDRAILS = Actor(kind="system", id="guardrails", label="Guardrails")
logger = logging.getLogger(__name__)


def guardrails_warm_up_in_background() -> threading.Thread:
    """Load the injection classifier and the embedding model in a daemon thread, so that a process's first
    guarded text does not pay for it (about a second). Call it after any fork, never before one."""

    def warm_up() -> None:
        try:
            check = check_for("injection", merged())
            check.warm_up()  # type: ignore[attr-defined]
        except Exception:  # a process that cannot load the model finds out on its first guarded text
            logger.warning("Could not warm up the guardrails", exc_info=True)

    thread = threading.Thread(target=warm_up, name="guardrails-warm-up", daemon=True)
    thread.start()
    return thread


def _topic_problems(colang: str, yaml: str) -> list[dict[str, str]]:
    from guardrails.topics import validate_topic_config

    return validate_topic_config(colang, yaml)


def policy_validated(config: Any) -> dict[str, Any]:
    """A policy layer checked (topic configurations with NeMo's parser). Raises GuardrailPolicyInvalid."""
    try:
        return validate_policy(config, topic_problems=_topic_problems)
    except PolicyInvalid as invalid:
        raise GuardrailPolicyInvalid("The guardrail policy is invalid: " + str(invalid),
                                     extra={"errors": invalid.errors}) from None


def policy_put(*, tenant, agent: str, config: Any, actor: Actor) -> GuardrailPolicy:  # type: ignore[no-untyped-def]
    """Set the tenant's layer (``agent`` empty) or an agent's, whole. Raises GuardrailPolicyInvalid."""
    require_schema(tenant.schema_name)
    config = policy_validated(config)
    with transaction.atomic():
        policy, created = GuardrailPolicy.objects.select_for_update().get_or_create(
            agent=agent, defaults={"config": config, "updated_by": str(actor)})
        if not created:
            policy.config, policy.revision, policy.updated_by = config, policy.revision + 1, str(actor)
            policy.save(update_fields=["config", "revision", "updated_by", "updated_at"])
        audit_event_record(tenant=tenant, actor=actor, action="guardrail.policy.set", target_type="guardrail_policy",
                           target_id=str(policy.id), data={"agent": agent, "revision": policy.revision,
                                                           "actions": config.get("actions", {})})
    selectors.pipeline_forget(tenant_schema=tenant.schema_name)
    return policy


def policy_delete(*, tenant, agent: str, actor: Actor) -> None:  # type: ignore[no-untyped-def]
    """Remove a layer (the ones below apply again). Raises GuardrailPolicyNotFound."""
    policy = selectors.policy_layer_get(tenant_schema=tenant.schema_name, agent=agent)
    with transaction.atomic():
        policy.delete()
        audit_event_record(tenant=tenant, actor=actor, action="guardrail.policy.delete",
                           target_type="guardrail_policy", target_id=str(policy.id), data={"agent": agent})
    selectors.pipeline_forget(tenant_schema=tenant.schema_name)


def decisions_record(*, tenant, agent: str, outcome: Outcome, run_id: UUID | str | None = None,  # type: ignore[no-untyped-def]
                     step: int | None = None, actor: Actor = GUARDRAILS) -> None:
    """The outcome's acting decisions in the audit log (and flags for review), in the current transaction."""
    for decision in outcome.acted:
        data = {"point": decision.point, "check": decision.check, "action": decision.action,
                "score": round(decision.verdict.score, 4), "reasons": list(decision.verdict.reasons),
                "agent": agent, **({"run_id": str(run_id)} if run_id else {}),
                **({"step": step} if step is not None else {})}
        audit_event_record(tenant=tenant, actor=actor, action="guardrail.decision",
                           target_type="run" if run_id else "text", target_id=str(run_id or ""), data=data)
        if decision.action == "flag":
            GuardrailFlag.objects.create(run_id=run_id, agent=agent, point=decision.point,
                                         check_name=decision.check, score=decision.verdict.score,
                                         reasons=list(decision.verdict.reasons),
                                         message=decision.verdict.message[:500])


def text_guard(*, tenant, agent: str, point: Point, text: str, actor: Actor,  # type: ignore[no-untyped-def]
               run_id: UUID | None = None) -> Outcome:
    """Check a text entering a run (a user's input or message). Returns the outcome, whose ``text`` is what
    goes on (redacted where the policy redacts); the caller records its acting decisions (decisions_record)
    with the run they belong to. Raises GuardrailBlocked, after recording the refusal."""
    outcome = selectors.pipeline_for(tenant_schema=tenant.schema_name, agent=agent).run(text, point)
    if outcome.blocked:
        with transaction.atomic():
            decisions_record(tenant=tenant, agent=agent, outcome=outcome, run_id=run_id, actor=actor)
        raise GuardrailBlocked(f"The guardrails refused this {point.replace('_', ' ')}: {outcome.explanation()}",
                               extra={"point": point, "reasons": list(outcome.reasons),
                                      "decisions": [d.to_json(spans=False) for d in outcome.acted]})
    return outcome


def decision_events(outcome: Outcome) -> list[dict[str, Any]]:
    """A run's ``guardrail.decision`` events for the outcome's acting decisions (never what was found)."""
    return [{"type": "guardrail.decision", "data": d.to_json(spans=False)} for d in outcome.acted]


def dry_run(*, tenant, text: str, points: list[str] | None = None, agent: str = "",  # type: ignore[no-untyped-def]
            config: Any = None) -> dict[str, Any]:
    """Every check's verdict on ``text`` at each point, under the agent's effective policy, or under a policy
    given inline (over the defaults). Nothing is recorded or changed. Raises GuardrailPolicyInvalid."""
    require_schema(tenant.schema_name)
    if config is not None:
        pipeline = Pipeline(merged(policy_validated(config)))
    else:
        pipeline = Pipeline(selectors.effective_policy(tenant_schema=tenant.schema_name, agent=agent))
    results = {}
    for point in points or list(POINTS):
        outcome = pipeline.run(text, point, every=True)  # type: ignore[arg-type]
        results[point] = {**outcome.to_json(spans=True), "text": outcome.text, "explanation": outcome.explanation()}
    return {"policy": pipeline.policy.to_json(), "points": results}


def flag_review(*, tenant, flag_id: UUID, status: str, comment: str, actor: Actor) -> GuardrailFlag:  # type: ignore[no-untyped-def]
    """A reviewer's verdict on a flag: confirmed (a violation) or dismissed (a false positive)."""
    flag = selectors.flag_get(tenant_schema=tenant.schema_name, flag_id=flag_id)
    with transaction.atomic():
        flag.status, flag.review_comment = status, comment
        flag.reviewed_by, flag.reviewed_at = str(actor), timezone.now()
        flag.save(update_fields=["status", "review_comment", "reviewed_by", "reviewed_at"])
        audit_event_record(tenant=tenant, actor=actor, action="guardrail.flag.review", target_type="guardrail_flag",
                           target_id=str(flag.id), data={"status": status, "check": flag.check_name,
                                                         "point": flag.point})
    return flag
