from __future__ import annotations

from common.errors import AppError, InvalidInput, NotFound


class GuardrailPolicyInvalid(InvalidInput):
    code = "guardrail_policy_invalid"


class GuardrailPolicyNotFound(NotFound):
    code = "guardrail_policy_not_found"


class GuardrailFlagNotFound(NotFound):
    code = "guardrail_flag_not_found"


class GuardrailBlocked(AppError):
    """A text the tenant's guardrails refuse: the checks, their reasons and scores, never what they found."""

    code = "guardrail_blocked"
    http_status = 422
    title = "Refused by the guardrails"
