"""A local fake of Stripe's HTTP API, for tests only: a real HTTP server on a free port, in a thread, that the
real SDK (through billing.stripe_gateway) talks to.

What it implements, shaped like Stripe's answers: customers (create, retrieve), subscriptions (create,
retrieve, update items' prices, cancel), invoices (retrieve; created by the test with ``invoice_create``) and
billing meter events. Requests are form-encoded as the SDK sends them (``items[0][price]=...``).

Like Stripe:
- ``Idempotency-Key``: the same key with the same parameters replays the first answer (header
  ``Idempotent-Replayed: true``), with other parameters gets 400 ``idempotency_error``; a key whose first
  request is still executing gets 409. Answers of requests that never executed (an injected failure before
  processing) are not saved, so a retry executes.
- Meter events count once per ``identifier``.
- Webhooks: ``signed_event`` builds an event body and its ``Stripe-Signature`` (``t=<ts>,v1=<HMAC-SHA256 of
  "<ts>.<body>">``), computed here independently of the SDK.

For assertions: ``requests`` records every request (method, path, parameters, idempotency key, whether it was
replayed, status), ``executed(path)`` the ones that really ran. For failure tests: ``fail_next`` answers the
next matching requests with 500/429 before processing, or processes them and then loses the answer (500) or
answers late (a client timeout).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_KEY = "sk_test_agentplane_fake"
WEBHOOK_SECRET = "whsec_agentplane_fake_secret"


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    replayed: bool = False
    status: int = 0
    executed: bool = False


@dataclass
class Fault:
    path: str  # a prefix of the request path
    status: int = 500
    times: int = 1
    after_processing: bool = False  # True: the request runs (and its answer is saved), then the answer is lost
    delay_seconds: float = 0.0  # answer this late (after processing): the client times out


@dataclass
class _State:
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter_events: dict[str, dict[str, Any]] = field(default_factory=dict)  # identifier -> event
    idempotency: dict[str, tuple[str, int, bytes]] = field(default_factory=dict)  # key -> (fingerprint, status, body)
    in_flight: set[str] = field(default_factory=set)


class _Invalid(Exception):
    def __init__(self, status: int, message: str, *, error_type: str = "invalid_request_error", code: str = "",
                 param: str = "", saved: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.code, self.param = status, message, error_type, code, param
        self.saved = saved  # raised while executing (Stripe saves those answers for the idempotency key)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(7)}"


def form_decode(body: str) -> dict[str, Any]:
    """Stripe's form encoding (``a[b][0][c]=v``) back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True):
        parts = raw_key.replace("]", "").split("[")
        node = root
        for index, part in enumerate(parts):
            if index == len(parts) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(root)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        converted = {key: _lists(value) for key, value in node.items()}
        if converted and all(key.isdigit() for key in converted):
            return [converted[key] for key in sorted(converted, key=int)]
        return converted
    return node


class FakeStripe:
    """Start with ``with FakeStripe() as fake:``; ``fake.url`` is the API base to give the gateway."""

    def __init__(self, *, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self._state = _State()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> FakeStripe:
        fake = self

        class Handler(_Handler):
            stripe = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-stripe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- test controls -----------------------------------------------------------------------------------

    def fail_next(self, path: str, *, status: int = 500, times: int = 1, after_processing: bool = False,
                  delay_seconds: float = 0.0) -> None:
        with self._lock:
            self._faults.append(Fault(path=path, status=status, times=times,
                                      after_processing=after_processing or delay_seconds > 0,
                                      delay_seconds=delay_seconds))

    def executed(self, path: str, method: str = "POST") -> list[RecordedRequest]:
        """The requests to ``path`` (a prefix) that really ran: not replayed, not failed before processing."""
        return [r for r in self.requests if r.path.startswith(path) and r.method == method and r.executed]

    def calls(self, path: str, method: str = "POST") -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith(path) and r.method == method]

    @property
    def customers(self) -> dict[str, dict[str, Any]]:
        return self._state.customers

    @property
    def subscriptions(self) -> dict[str, dict[str, Any]]:
        return self._state.subscriptions

    def meter_total(self, *, customer_id: str, event_name: str | None = None) -> int:
        """Usage Stripe would bill the customer: each meter event identifier counted once."""
        return sum(int(event["payload"]["value"]) for event in self._state.meter_events.values()
                   if event["payload"]["stripe_customer_id"] == customer_id
                   and (event_name is None or event["event_name"] == event_name))

    def invoice_create(self, *, customer: str, subscription: str, amount_due: int, currency: str = "usd",
                       status: str = "open", period_start: int | None = None,
                       period_end: int | None = None) -> dict[str, Any]:
        """An invoice as Stripe would have finalized it for the subscription (for webhook events' data)."""
        now = int(time.time())
        invoice = {
            "id": _new_id("in"), "object": "invoice", "customer": customer, "subscription": subscription,
            "status": status, "amount_due": amount_due, "amount_paid": amount_due if status == "paid" else 0,
            "amount_remaining": 0 if status == "paid" else amount_due, "currency": currency,
            "period_start": period_start or now - 30 * 86400, "period_end": period_end or now,
            "status_transitions": {"finalized_at": now, "paid_at": now if status == "paid" else None},
            "attempt_count": 1, "livemode": False, "created": now,
        }
        with self._lock:
            self._state.invoices[invoice["id"]] = invoice
        return dict(invoice)

    def invoice_pay(self, invoice_id: str) -> dict[str, Any]:
        with self._lock:
            invoice = self._state.invoices[invoice_id]
            invoice.update(status="paid", amount_paid=invoice["amount_due"], amount_remaining=0)
            invoice["status_transitions"]["paid_at"] = int(time.time())
            return json.loads(json.dumps(invoice))

    @staticmethod
    def signed_event(*, event_type: str, data_object: dict[str, Any], secret: str = WEBHOOK_SECRET,
                     timestamp: int | None = None, event_id: str | None = None) -> tuple[bytes, str]:
        """A webhook body for ``event_type`` and its Stripe-Signature header, signed with ``secret``."""
        signed_at = int(time.time()) if timestamp is None else timestamp
        event = {"id": event_id or _new_id("evt"), "object": "event", "api_version": "2025-09-30.clover",
                 "created": signed_at, "type": event_type, "data": {"object": data_object}, "livemode": False,
                 "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}}
        body = json.dumps(event).encode()
        return body, sign(body, secret=secret, timestamp=signed_at)

    # --- the API -----------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, params: dict[str, Any], headers: dict[str, str],
               raw_params: str) -> tuple[int, bytes, dict[str, str]]:
        key = headers.get("idempotency-key") if method in ("POST", "DELETE") else None
        record = RecordedRequest(method=method, path=path, params=params, idempotency_key=key)
        with self._lock:
            self.requests.append(record)
        if headers.get("authorization") != f"Bearer {self.api_key}":
            record.status = 401
            return 401, _error_body(_Invalid(401, "Invalid API Key provided.", error_type="invalid_request_error")), {}
        fingerprint = hashlib.sha256(f"{method} {path} {sorted(parse_qsl(raw_params))}".encode()).hexdigest()
        with self._lock:
            fault = self._take_fault(path)
            if key is not None:
                saved = self._state.idempotency.get(key)
                if saved is not None:
                    if saved[0] != fingerprint:
                        record.status = 400
                        return 400, _error_body(_Invalid(
                            400, "Keys for idempotent requests can only be used with the same parameters they were "
                            f"first used with. Try using a key other than '{key}' if you meant to execute a "
                            "different request.", error_type="idempotency_error")), {}
                    record.replayed, record.status = True, saved[1]
                    return saved[1], saved[2], {"Idempotent-Replayed": "true", "Idempotency-Key": key}
                if key in self._state.in_flight:
                    record.status = 409
                    return 409, _error_body(_Invalid(
                        409, "There is currently another in-progress request using this Stripe-Idempotency-Key; "
                        "try again later.", error_type="idempotency_error")), {}
            if fault is not None and not fault.after_processing:
                record.status = fault.status
                message = "Too many requests." if fault.status == 429 else "An unknown error occurred."
                return fault.status, _error_body(_Invalid(fault.status, message, error_type="api_error")), {}
            if key is not None:
                self._state.in_flight.add(key)
        try:
            status, payload = self._route(method, path, params)
            body = json.dumps(payload).encode()
            record.executed = True
        except _Invalid as invalid:
            status, body = invalid.status, _error_body(invalid)
            record.executed = invalid.saved
            if not invalid.saved:
                with self._lock:
                    self._state.in_flight.discard(key or "")
                record.status = status
                return status, body, {}
        with self._lock:
            if key is not None:
                self._state.idempotency[key] = (fingerprint, status, body)
                self._state.in_flight.discard(key)
        record.status = status
        if fault is not None:  # processed; now the answer is lost or late
            if fault.delay_seconds:
                time.sleep(fault.delay_seconds)
            else:
                return fault.status, _error_body(_Invalid(fault.status, "An unknown error occurred.",
                                                          error_type="api_error")), {}
        return status, body, {}

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self._faults:
            if path.startswith(fault.path) and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")  # ["v1", "customers", "cus_..."]
        match method, parts[1:]:
            case "POST", ["customers"]:
                return 200, self._customer_create(params)
            case "GET", ["customers", customer_id]:
                return 200, self._get(self._state.customers, customer_id, "customer")
            case "POST", ["subscriptions"]:
                return 200, self._subscription_create(params)
            case "GET", ["subscriptions", subscription_id]:
                return 200, self._get(self._state.subscriptions, subscription_id, "subscription")
            case "POST", ["subscriptions", subscription_id]:
                return 200, self._subscription_update(subscription_id, params)
            case "DELETE", ["subscriptions", subscription_id]:
                return 200, self._subscription_cancel(subscription_id)
            case "GET", ["invoices", invoice_id]:
                return 200, self._get(self._state.invoices, invoice_id, "invoice")
            case "POST", ["billing", "meter_events"]:
                return 200, self._meter_event_create(params)
        raise _Invalid(404, f"Unrecognized request URL ({method}: {path}).")

    def _get(self, table: dict[str, dict[str, Any]], object_id: str, kind: str) -> dict[str, Any]:
        with self._lock:
            found = table.get(object_id)
            if found is None:
                raise _Invalid(404, f"No such {kind}: '{object_id}'", code="resource_missing", param="id", saved=True)
            return json.loads(json.dumps(found))

    def _customer_create(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {"id": _new_id("cus"), "object": "customer", "name": params.get("name"),
                    "email": params.get("email"), "description": params.get("description"),
                    "metadata": params.get("metadata") or {}, "created": int(time.time()), "livemode": False,
                    "delinquent": False, "currency": None}
        with self._lock:
            self._state.customers[customer["id"]] = customer
        return customer

    def _subscription_create(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = params.get("customer")
        items = params.get("items")
        if not customer:
            raise _Invalid(400, "Missing required param: customer.", code="parameter_missing", param="customer")
        if not isinstance(items, list) or not items or not all(item.get("price") for item in items):
            raise _Invalid(400, "Missing required param: items[0][price].", code="parameter_missing",
                           param="items")
        self._get(self._state.customers, customer, "customer")
        now = int(time.time())
        subscription_id = _new_id("sub")
        subscription = {
            "id": subscription_id, "object": "subscription", "customer": customer, "status": "active",
            "metadata": params.get("metadata") or {}, "cancel_at_period_end": False, "canceled_at": None,
            "created": now, "livemode": False,
            "items": {"object": "list", "url": f"/v1/subscription_items?subscription={subscription_id}",
                      "has_more": False,
                      "data": [self._item(subscription_id, item["price"], now) for item in items]},
        }
        with self._lock:
            self._state.subscriptions[subscription_id] = subscription
        return subscription

    @staticmethod
    def _item(subscription_id: str, price: str, now: int) -> dict[str, Any]:
        return {"id": _new_id("si"), "object": "subscription_item", "subscription": subscription_id,
                "price": {"id": price, "object": "price"}, "current_period_start": now,
                "current_period_end": now + 30 * 86400}

    def _subscription_update(self, subscription_id: str, params: dict[str, Any]) -> dict[str, Any]:
        subscription = self._get(self._state.subscriptions, subscription_id, "subscription")
        if subscription["status"] == "canceled":
            raise _Invalid(400, "A canceled subscription can only update its cancellation_details and metadata.",
                           saved=True)
        by_id = {item["id"]: item for item in subscription["items"]["data"]}
        for change in params.get("items") or []:
            if change.get("id") not in by_id:
                raise _Invalid(400, f"Invalid subscription_item: {change.get('id')}", param="items", saved=True)
            by_id[change["id"]]["price"] = {"id": change["price"], "object": "price"}
        subscription["metadata"].update(params.get("metadata") or {})
        with self._lock:
            self._state.subscriptions[subscription_id] = subscription
        return subscription

    def _subscription_cancel(self, subscription_id: str) -> dict[str, Any]:
        subscription = self._get(self._state.subscriptions, subscription_id, "subscription")
        subscription.update(status="canceled", canceled_at=int(time.time()))
        with self._lock:
            self._state.subscriptions[subscription_id] = subscription
        return subscription

    def _meter_event_create(self, params: dict[str, Any]) -> dict[str, Any]:
        payload = params.get("payload") or {}
        if not params.get("event_name"):
            raise _Invalid(400, "Missing required param: event_name.", code="parameter_missing", param="event_name")
        customer = payload.get("stripe_customer_id")
        value = payload.get("value", "")
        if not customer or not str(value).lstrip("-").isdigit():
            raise _Invalid(400, "payload must carry stripe_customer_id and an integer value.", param="payload")
        self._get(self._state.customers, customer, "customer")
        event = {"object": "billing.meter_event", "created": int(time.time()), "event_name": params["event_name"],
                 "identifier": params.get("identifier") or _new_id("mev"), "livemode": False,
                 "payload": {"stripe_customer_id": customer, "value": str(value)},
                 "timestamp": int(params.get("timestamp") or time.time())}
        with self._lock:
            # Stripe enforces identifiers' uniqueness: a second event with the same identifier is not counted.
            self._state.meter_events.setdefault(event["identifier"], event)
        return event


def sign(body: bytes, *, secret: str, timestamp: int) -> str:
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


def _error_body(invalid: _Invalid) -> bytes:
    error: dict[str, Any] = {"type": invalid.error_type, "message": invalid.message}
    if invalid.code:
        error["code"] = invalid.code
    if invalid.param:
        error["param"] = invalid.param
    return json.dumps({"error": error}).encode()


class _Handler(BaseHTTPRequestHandler):
    stripe: FakeStripe

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        if method == "GET":
            raw = url.query
        else:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else url.query
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, body, extra_headers = self.stripe.handle(method, url.path, form_decode(raw), headers, raw)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Request-Id", _new_id("req"))
            for name, value in extra_headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")


@contextmanager
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake
