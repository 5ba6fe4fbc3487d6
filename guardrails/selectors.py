"""Guardrail reads: policy layers, the effective policy of an agent, flags. Never writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.db.models import QuerySet

from common.schemas import in_schema, require_schema
from guardrails.errors import GuardrailFlagNotFound, GuardrailPolicyNotFound
from guardrails.models import GuardrailFlag, GuardrailPolicy
from guardrails.pipeline import Outcome, Pipeline, StreamGuard
from guardrails.policy import Policy, merged

POLICY_CACHE_SECONDS = 2.0  # a policy change reaches every worker's next check within this
_CACHE: dict[tuple[str, str], tuple[float, Pipeline]] = {}
_LOCK = threading.Lock()


def policy_layer_get(*, tenant_schema: str, agent: str) -> GuardrailPolicy:
    """The tenant's layer (``agent`` empty) or one agent's. Raises GuardrailPolicyNotFound."""
    require_schema(tenant_schema)
    policy = GuardrailPolicy.objects.filter(agent=agent).first()
    if policy is None:
        whose = f"agent {agent!r}" if agent else "the tenant"
        raise GuardrailPolicyNotFound(f"No guardrail policy is set for {whose}; the defaults apply.")
    return policy


def policy_layer_list(*, tenant_schema: str) -> QuerySet[GuardrailPolicy]:
    require_schema(tenant_schema)
    return GuardrailPolicy.objects.all()


def effective_policy(*, tenant_schema: str, agent: str) -> Policy:
    """The defaults, then the tenant's layer, then the agent's (when ``agent`` is given)."""
    require_schema(tenant_schema)
    layers = {p.agent: p.config for p in GuardrailPolicy.objects.filter(agent__in={"", agent})}
    return merged(*(layers[key] for key in dict.fromkeys(("", agent)) if key in layers))


def pipeline_for(*, tenant_schema: str, agent: str, clock: Callable[[], float] = time.monotonic) -> Pipeline:
    """The rails of ``agent`` (cached a moment per process: a step's checks do not each read the policy)."""
    key = (tenant_schema, agent)
    now = clock()
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is not None and now - cached[0] < POLICY_CACHE_SECONDS:
        return cached[1]
    with in_schema(tenant_schema):  # a worker's step reads with qualified names, outside the tenant's schema
        pipeline = Pipeline(effective_policy(tenant_schema=tenant_schema, agent=agent))
    with _LOCK:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        _CACHE[key] = (now, pipeline)
    return pipeline


def pipeline_forget(*, tenant_schema: str) -> None:
    """Drop this process's cached pipelines of the tenant (its policy changed)."""
    with _LOCK:
        for key in [key for key in _CACHE if key[0] == tenant_schema]:
            del _CACHE[key]


def flag_list(*, tenant_schema: str, filters: dict[str, Any]) -> QuerySet[GuardrailFlag]:
    require_schema(tenant_schema)
    flags = GuardrailFlag.objects.all()
    for name in ("status", "agent", "point", "run_id"):
        if filters.get(name):
            flags = flags.filter(**{name: filters[name]})
    if filters.get("check"):
        flags = flags.filter(check_name=filters["check"])
    return flags


def flag_get(*, tenant_schema: str, flag_id: UUID) -> GuardrailFlag:
    require_schema(tenant_schema)
    flag = GuardrailFlag.objects.filter(id=flag_id).first()
    if flag is None:
        raise GuardrailFlagNotFound(f"Guardrail flag {flag_id} does not exist.")
    return flag


__all__ = ["Outcome", "Pipeline", "StreamGuard", "effective_policy", "flag_get", "flag_list", "pipeline_for",
           "pipeline_forget", "policy_layer_get", "policy_layer_list"]
