"""The one module that imports ``stripe`` (STYLE.md): Stripe's official SDK behind a small gateway.

Built with its API key, base address and timeouts (read from settings only at wiring, billing/stripe_wiring.py);
returns frozen dataclasses, never SDK objects; turns the SDK's exceptions into ours: ``StripeUnavailable``
(transient: timeouts, connection failures, 409 in-flight idempotency conflicts, 429, 5xx; retrying with the
same idempotency key is safe) and ``StripeRejected`` (terminal: retrying the same request cannot succeed).
Every write takes an idempotency key from the caller: a retried call is answered with the first response.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import stripe

from billing.errors import StripeRejected, StripeUnavailable, WebhookPayloadInvalid, WebhookSignatureInvalid

@dataclass(frozen=True)
class StripeCustomer:
    id: str


@dataclass(frozen=True)
class StripeSubscription:
    id: str
    customer_id: str
    status: str
    fee_item_id: str  # the subscription item of the tier's monthly fee
    usage_item_id: str  # the subscription item of the metered usage price


@dataclass(frozen=True)
class MeterEventReceipt:
    identifier: str
    event_name: str
    value: int
    timestamp: int


@dataclass(frozen=True)
class StripeInvoice:
    id: str
    customer_id: str
    subscription_id: str
    status: str
    amount_due: int  # in the currency's smallest unit (cents)
    amount_paid: int
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    paid_at: datetime | None


@dataclass(frozen=True)
class StripeWebhookEvent:
    """A webhook event whose signature was verified; ``object`` is the event's data object as plain JSON."""

    id: str
    type: str
    created: datetime
    object: Mapping[str, Any]


def _timestamp(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=timezone.utc) if value else None


def invoice_from_json(data: Mapping[str, Any]) -> StripeInvoice:
    """An invoice object (from the API or from a webhook event's data) as our dataclass."""
    transitions = data.get("status_transitions") or {}
    subscription = data.get("subscription") or ""
    if not subscription:  # newer API versions nest it under parent.subscription_details
        subscription = ((data.get("parent") or {}).get("subscription_details") or {}).get("subscription") or ""
    return StripeInvoice(
        id=str(data["id"]), customer_id=str(data.get("customer") or ""), subscription_id=str(subscription),
        status=str(data.get("status") or ""), amount_due=int(data.get("amount_due") or 0),
        amount_paid=int(data.get("amount_paid") or 0), currency=str(data.get("currency") or "usd"),
        period_start=_timestamp(data.get("period_start")), period_end=_timestamp(data.get("period_end")),
        paid_at=_timestamp(transitions.get("paid_at")),
    )


class StripeGateway:
    """Stripe's API for Agentplane: customers, subscriptions, meter events, invoices, webhook verification."""

    def __init__(self, *, api_key: str, api_base: str, webhook_secret: str, timeout_seconds: float = 10.0,
                 connect_timeout_seconds: float = 3.0, max_network_retries: int = 2,
                 webhook_tolerance_seconds: int = 300) -> None:
        http_client = stripe.RequestsClient(timeout=(connect_timeout_seconds, timeout_seconds))
        base = api_base.rstrip("/")
        self._client = stripe.StripeClient(
            api_key, base_addresses={"api": base, "meter_events": base}, http_client=http_client,
            max_network_retries=max_network_retries,
        )
        self._webhook_secret = webhook_secret
        self._webhook_tolerance_seconds = webhook_tolerance_seconds
        self._timeout_seconds = timeout_seconds

    # --- customers and subscriptions ----------------------------------------------------------------

    def customer_create(self, *, tenant_id: str, name: str, slug: str, idempotency_key: str) -> StripeCustomer:
        """Create the tenant's customer. Idempotent per key: a retry returns the first call's customer."""
        customer = self._call(f"creating the customer of tenant {slug!r}", lambda: self._client.v1.customers.create(
            params={"name": name, "description": f"Agentplane tenant {slug}",
                    "metadata": {"tenant_id": tenant_id, "tenant_slug": slug}},
            options={"idempotency_key": idempotency_key}))
        return StripeCustomer(id=str(customer["id"]))

    def subscription_create(self, *, customer_id: str, fee_price_id: str, usage_price_id: str, tier: str,
                            tenant_id: str, idempotency_key: str) -> StripeSubscription:
        """Subscribe the customer to a tier: its monthly fee and its metered usage price. Idempotent per key."""
        subscription = self._call(
            f"creating the {tier} subscription of customer {customer_id}",
            lambda: self._client.v1.subscriptions.create(
                params={"customer": customer_id, "items": [{"price": fee_price_id}, {"price": usage_price_id}],
                        "metadata": {"tenant_id": tenant_id, "tier": tier}},
                options={"idempotency_key": idempotency_key}))
        return self._subscription(subscription, fee_price_id=fee_price_id, usage_price_id=usage_price_id)

    def subscription_prices_change(self, *, subscription_id: str, fee_item_id: str, fee_price_id: str,
                                   usage_item_id: str, usage_price_id: str, tier: str,
                                   idempotency_key: str) -> StripeSubscription:
        """Move a subscription to another tier's prices (prorated). Idempotent per key."""
        subscription = self._call(
            f"changing subscription {subscription_id} to the {tier} prices",
            lambda: self._client.v1.subscriptions.update(
                subscription_id,
                params={"items": [{"id": fee_item_id, "price": fee_price_id},
                                  {"id": usage_item_id, "price": usage_price_id}],
                        "proration_behavior": "create_prorations", "metadata": {"tier": tier}},
                options={"idempotency_key": idempotency_key}))
        return self._subscription(subscription, fee_price_id=fee_price_id, usage_price_id=usage_price_id)

    def subscription_cancel(self, *, subscription_id: str, idempotency_key: str) -> StripeSubscription:
        """Cancel a subscription now (Stripe invoices the usage so far). Idempotent per key."""
        subscription = self._call(f"cancelling subscription {subscription_id}",
                                  lambda: self._client.v1.subscriptions.cancel(
                                      subscription_id, options={"idempotency_key": idempotency_key}))
        return self._subscription(subscription, fee_price_id="", usage_price_id="")

    def invoice_get(self, *, invoice_id: str) -> StripeInvoice:
        """One invoice, as Stripe has it now."""
        invoice = self._call(f"reading invoice {invoice_id}", lambda: self._client.v1.invoices.retrieve(invoice_id))
        return invoice_from_json(invoice)

    # --- usage ---------------------------------------------------------------------------------------

    def meter_event_report(self, *, event_name: str, customer_id: str, value: int, identifier: str,
                           timestamp: datetime, idempotency_key: str) -> MeterEventReceipt:
        """Report ``value`` units of usage for the customer at ``timestamp``. Stripe counts one event per
        ``identifier``, and the idempotency key replays the first answer to a retry: never billed twice."""
        seconds = int(timestamp.timestamp())
        event = self._call(
            f"reporting usage {identifier} ({value} for customer {customer_id})",
            lambda: self._client.v1.billing.meter_events.create(
                params={"event_name": event_name, "identifier": identifier, "timestamp": seconds,
                        "payload": {"stripe_customer_id": customer_id, "value": str(value)}},
                options={"idempotency_key": idempotency_key}))
        return MeterEventReceipt(identifier=str(event.get("identifier") or identifier),
                                 event_name=str(event.get("event_name") or event_name), value=value,
                                 timestamp=int(event.get("timestamp") or seconds))

    # --- webhooks ------------------------------------------------------------------------------------

    def webhook_event_verify(self, *, payload: bytes, signature_header: str | None) -> StripeWebhookEvent:
        """The event in a webhook body, after checking its Stripe-Signature (HMAC-SHA256 with the endpoint's
        secret, timestamp within the tolerance). Raises WebhookSignatureInvalid, WebhookPayloadInvalid."""
        if not self._webhook_secret:
            raise WebhookSignatureInvalid("No webhook secret is configured, so no signature can be verified; set "
                                          "STRIPE_WEBHOOK_SECRET to the endpoint's signing secret (whsec_...).")
        try:
            self._client.construct_event(payload, signature_header, self._webhook_secret,
                                         tolerance=self._webhook_tolerance_seconds)
        except stripe.SignatureVerificationError as exc:
            raise WebhookSignatureInvalid(
                f"The Stripe-Signature header does not verify: {exc.user_message or exc}. Nothing was changed; "
                "Stripe retries with a fresh signature.") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise WebhookPayloadInvalid(f"The webhook body is not a Stripe event ({type(exc).__name__}).") from None
        data = json.loads(payload)
        try:
            return StripeWebhookEvent(id=str(data["id"]), type=str(data["type"]),
                                      created=_timestamp(data.get("created")) or datetime.now(tz=timezone.utc),
                                      object=data["data"]["object"])
        except (KeyError, TypeError):
            raise WebhookPayloadInvalid("The webhook body lacks id, type or data.object.") from None

    # --- internals -----------------------------------------------------------------------------------

    @staticmethod
    def _subscription(subscription: Mapping[str, Any], *, fee_price_id: str, usage_price_id: str) -> StripeSubscription:
        items = [(item["id"], (item.get("price") or {}).get("id", "")) for item in subscription["items"]["data"]]
        fee_item = next((item for item, price in items if price == fee_price_id), items[0][0] if items else "")
        usage_item = next((item for item, price in items if price == usage_price_id),
                          items[1][0] if len(items) > 1 else "")
        return StripeSubscription(id=str(subscription["id"]), customer_id=str(subscription.get("customer") or ""),
                                  status=str(subscription.get("status") or ""), fee_item_id=fee_item,
                                  usage_item_id=usage_item)

    def _call(self, what: str, request: Callable[[], Any]) -> dict[str, Any]:
        """Run one SDK request; its answer as plain JSON (the SDK's objects stay in this module)."""
        try:
            return request().to_dict()
        except stripe.APIConnectionError:
            raise StripeUnavailable(
                f"Stripe did not answer {what} (no response within {self._timeout_seconds:g}s, or the connection "
                "failed); retry: the idempotency key makes it safe.") from None
        except stripe.RateLimitError:
            raise StripeUnavailable(f"Stripe rate-limited {what}; retry in a few seconds.",
                                    extra={"retry_after": 2}) from None
        except stripe.IdempotencyError as exc:
            raise StripeRejected(f"Stripe refused {what}: the idempotency key was used before with other "
                                 f"parameters ({exc.user_message}). This is a bug on our side; nothing was "
                                 "charged twice.") from None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise StripeRejected(f"Stripe refused the API key while {what} ({exc.user_message}); check "
                                 "STRIPE_API_KEY.") from None
        except stripe.StripeError as exc:
            status = exc.http_status or 0
            if status >= 500 or status in (409, 429):
                raise StripeUnavailable(f"Stripe failed {what} (HTTP {status}); retry: the idempotency key makes "
                                        "it safe.") from None
            parameter = getattr(exc, "param", None)
            raise StripeRejected(f"Stripe refused {what} (HTTP {status}): {exc.user_message or exc}"
                                 + (f" (parameter {parameter})" if parameter else "") + ".") from None
