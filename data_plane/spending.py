"""The executor's spend guard: before each LLM call, hold its worst-case cost and tokens against the budgets,
the token quota and the run's limit (billing's services); after it, settle what it actually cost.

Worst case of a call = its input tokens (the stepper's token counter: the context as measured when it was
fitted, or counted) priced at the model's input price, plus its output cap (the request's max_output_tokens,
else the model's own from litellm's map, else ``default_output_tokens``) at the output price; the most
expensive of the request's models (a fallback may answer). Prices come from the Pricing port (litellm's map,
the prices calls are settled at).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any, Protocol
from uuid import UUID

from billing import services as billing_services
from data_plane.runtime.core.messages import Usage
from data_plane.runtime.core.ports import ModelRequest, TokenCounter

# Output tokens assumed for a model whose request and price map set no cap (stated in docs/budgets.md).
DEFAULT_OUTPUT_TOKENS = 4096
CENT_MILLIONTH = Decimal("0.00000001")


class Pricing(Protocol):
    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """The price in USD of a call to ``model`` with these token counts (0.0 for an unpriced model)."""
        ...

    def max_output_tokens(self, model: str) -> int | None:
        """The most output tokens ``model`` produces; None when unknown."""
        ...


class FreePricing:
    """Prices of the in-process scripted models: nothing (their replies cost 0)."""

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        return 0.0

    def max_output_tokens(self, model: str) -> int | None:
        return None


@dataclass(frozen=True)
class WorstCase:
    usd: Decimal
    tokens: int
    description: str


@dataclass(frozen=True)
class SpendRefused:
    """The call does not fit: the run fails with ``message`` (code budget_exceeded), the call is not made."""

    message: str


@dataclass(frozen=True)
class HeldSpend:
    idempotency_key: str
    worst: WorstCase
    budgeted: bool = True  # held against budgets too (False: it settles in one statement)


class SpendGuard(Protocol):
    def hold(self, *, run_id: UUID, agent_id: UUID | None, idempotency_key: str, request: ModelRequest,
             run_limit_usd: float | None, run_spent_usd: float) -> HeldSpend | SpendRefused:
        """Hold the call's worst case against every limit that applies, or say which refused it."""
        ...

    def settle(self, held: HeldSpend, usage: Usage | None) -> None:
        """Count the call's actual usage (None: it failed without a reply) and free the hold."""
        ...


def worst_case(request: ModelRequest, *, counter: TokenCounter, pricing: Pricing,
               default_output_tokens: int = DEFAULT_OUTPUT_TOKENS) -> WorstCase:
    """The most the call can cost and use, over the request's models (the first, then its fallbacks)."""
    measured = (request.metadata.get("context") or {}).get("tokens")
    worst: WorstCase | None = None
    for position, model in enumerate(request.models):
        if position == 0 and isinstance(measured, int):
            input_tokens = measured  # counted by the same counter when the context was fitted
        else:
            input_tokens = counter.count(model=model, messages=request.messages, tools=request.tools)
        cap = request.max_output_tokens or pricing.max_output_tokens(model) or default_output_tokens
        # rounded up to the budgets' precision: a hold is never less than the call can cost
        usd = Decimal(str(pricing.cost(model, input_tokens, cap))).quantize(CENT_MILLIONTH, rounding=ROUND_CEILING)
        tokens = input_tokens + cap
        if worst is None or (usd, tokens) > (worst.usd, worst.tokens):
            worst = WorstCase(usd=usd, tokens=tokens,
                              description=f"{input_tokens:,} input tokens and up to {cap:,} output tokens of {model}")
    assert worst is not None, "a model request names at least one model"
    return worst


class BillingSpendGuard:
    """The SpendGuard on billing's budgets (public schema). One per stepper (one tenant)."""

    def __init__(self, *, tenant: Any, counter: TokenCounter, pricing: Pricing,
                 default_output_tokens: int = DEFAULT_OUTPUT_TOKENS, hold_seconds: float = 600.0) -> None:
        self.tenant = tenant
        self.counter = counter
        self.pricing = pricing
        self.default_output_tokens = default_output_tokens
        self.hold_seconds = hold_seconds

    def hold(self, *, run_id: UUID, agent_id: UUID | None, idempotency_key: str, request: ModelRequest,
             run_limit_usd: float | None, run_spent_usd: float) -> HeldSpend | SpendRefused:
        worst = worst_case(request, counter=self.counter, pricing=self.pricing,
                           default_output_tokens=self.default_output_tokens)
        try:
            hold = billing_services.spend_reserve(
                tenant_id=self.tenant.id, sla_tier=self.tenant.sla_tier, run_id=run_id, agent_id=agent_id,
                idempotency_key=idempotency_key, amount_usd=worst.usd, tokens=worst.tokens,
                run_limit_usd=Decimal(str(run_limit_usd)) if run_limit_usd is not None else None,
                run_spent_usd=Decimal(str(run_spent_usd)), hold_seconds=self.hold_seconds, call=worst.description)
        except billing_services.BudgetExceeded as refused:
            return SpendRefused(message=refused.message)
        return HeldSpend(idempotency_key=idempotency_key, worst=worst, budgeted=hold.budgeted)

    def settle(self, held: HeldSpend, usage: Usage | None) -> None:
        if usage is None:
            billing_services.spend_release(tenant=self.tenant, idempotency_key=held.idempotency_key,
                                           budgeted=held.budgeted)
            return
        billing_services.spend_settle(tenant=self.tenant, idempotency_key=held.idempotency_key,
                                      cost_usd=Decimal(str(usage.cost_usd)),
                                      tokens=usage.input_tokens + usage.output_tokens, budgeted=held.budgeted)
