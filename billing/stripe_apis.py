"""Stripe billing's endpoints. Thin: parse, call one service or selector, serialize.

- ``GET /v1/billing`` (billing:read): the calling tenant's plan, billing account, invoices and usage reports.
- ``POST /v1/billing/stripe/webhook``: Stripe's webhooks; no credential, authenticated by the Stripe-Signature
  HMAC over the raw body (a bad, missing or expired signature is a 400 and changes nothing).
- ``/v1/platform/tenants/{slug}/billing[...]`` (operator key): open a tenant's account, change its tier, cancel.
"""

from __future__ import annotations

from dataclasses import asdict

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import stripe_selectors as selectors
from billing import stripe_services as services
from billing import stripe_wiring as wiring
from billing.errors import BillingAccountNotFound
from billing.plans import TIERS, plan_for
from common.validation import validated
from tenants.api_views import OperatorApiView, TenantApiView
from tenants.selectors import tenant_get


class PlanOutputSerializer(serializers.Serializer):
    tier = serializers.CharField()
    monthly_fee_usd = serializers.DecimalField(max_digits=12, decimal_places=2)
    usage_usd_per_million_tokens = serializers.DecimalField(max_digits=12, decimal_places=2)
    tokens_per_month = serializers.IntegerField()
    concurrent_runs = serializers.IntegerField()
    runs_per_minute = serializers.IntegerField()
    availability_target = serializers.FloatField()
    support = serializers.CharField()


class BillingAccountOutputSerializer(serializers.Serializer):
    tier = serializers.CharField()
    status = serializers.CharField(help_text="opening, active, past_due or canceled.")
    subscription_status = serializers.CharField(help_text="The subscription's status at Stripe, as last told.")
    stripe_customer_id = serializers.CharField()
    stripe_subscription_id = serializers.CharField()
    past_due_since = serializers.DateTimeField(allow_null=True)
    grace_deadline = serializers.DateTimeField(allow_null=True, help_text="Suspended after this unless paid.")
    is_suspended_for_nonpayment = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class InvoiceOutputSerializer(serializers.Serializer):
    stripe_invoice_id = serializers.CharField()
    status = serializers.CharField()
    amount_due = serializers.IntegerField(help_text="In the currency's smallest unit (cents).")
    amount_paid = serializers.IntegerField()
    currency = serializers.CharField()
    period_start = serializers.DateTimeField(allow_null=True)
    period_end = serializers.DateTimeField(allow_null=True)
    paid_at = serializers.DateTimeField(allow_null=True)


class UsageReportOutputSerializer(serializers.Serializer):
    hour = serializers.DateTimeField()
    quantity = serializers.IntegerField(help_text="LLM tokens (input, output and cached input) of the hour.")
    status = serializers.CharField(help_text="pending, reported or failed.")
    identifier = serializers.CharField()
    reported_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField()


class BillingOverviewOutputSerializer(serializers.Serializer):
    plan = PlanOutputSerializer()
    account = BillingAccountOutputSerializer(allow_null=True)
    invoices = InvoiceOutputSerializer(many=True)
    usage_reports = UsageReportOutputSerializer(many=True)


class BillingOverviewApi(TenantApiView):
    required_scopes = {"GET": "billing:read"}

    @extend_schema(operation_id="billing_get", responses=BillingOverviewOutputSerializer, tags=["billing"])
    def get(self, request: Request) -> Response:
        tenant = request.user.tenant
        overview = selectors.billing_overview_get(tenant=tenant)
        body = {"plan": asdict(plan_for(tenant.sla_tier)), "account": overview.account,
                "invoices": overview.invoices, "usage_reports": overview.usage_reports}
        return Response(BillingOverviewOutputSerializer(body).data)


class StripeWebhookApi(APIView):
    """Stripe's webhook endpoint: no credential; the Stripe-Signature header is the authentication."""

    authentication_classes: list = []
    permission_classes: list = []

    class OutputSerializer(serializers.Serializer):
        event_id = serializers.CharField()
        type = serializers.CharField()
        outcome = serializers.CharField()
        is_duplicate = serializers.BooleanField()

    @extend_schema(operation_id="billing_stripe_webhook", request=None, responses=OutputSerializer,
                   tags=["billing"], auth=[])
    def post(self, request: Request) -> Response:
        outcome = services.stripe_webhook_receive(
            payload=request.body, signature_header=request.headers.get("Stripe-Signature"),
            gateway=wiring.stripe_gateway(), grace=wiring.grace_period(), now=timezone.now())
        return Response(self.OutputSerializer(asdict(outcome)).data)


class PlatformTenantBillingApi(OperatorApiView):
    @extend_schema(operation_id="platform_tenants_billing_get", responses=BillingAccountOutputSerializer,
                   tags=["platform"])
    def get(self, request: Request, slug: str) -> Response:
        tenant = tenant_get(slug=slug)
        account = selectors.billing_account_find(tenant=tenant)
        if account is None:
            raise BillingAccountNotFound(f"Tenant {slug!r} has no billing account; POST here to open one.")
        return Response(BillingAccountOutputSerializer(account).data)

    @extend_schema(operation_id="platform_tenants_billing_open", request=None,
                   responses=BillingAccountOutputSerializer, tags=["platform"])
    def post(self, request: Request, slug: str) -> Response:
        account = services.billing_account_open(tenant=tenant_get(slug=slug), gateway=wiring.stripe_gateway(),
                                                catalog=wiring.stripe_catalog(), actor=request.user.actor)
        return Response(BillingAccountOutputSerializer(account).data, status=status.HTTP_200_OK)


class PlatformTenantBillingTierApi(OperatorApiView):
    class InputSerializer(serializers.Serializer):
        sla_tier = serializers.ChoiceField(choices=TIERS)

    @extend_schema(operation_id="platform_tenants_billing_tier_change", request=InputSerializer,
                   responses=BillingAccountOutputSerializer, tags=["platform"])
    def post(self, request: Request, slug: str) -> Response:
        data = validated(self.InputSerializer, request.data)
        account = services.billing_account_tier_change(
            tenant=tenant_get(slug=slug), tier=data["sla_tier"], gateway=wiring.stripe_gateway(),
            catalog=wiring.stripe_catalog(), actor=request.user.actor)
        return Response(BillingAccountOutputSerializer(account).data)


class PlatformTenantBillingCancelApi(OperatorApiView):
    @extend_schema(operation_id="platform_tenants_billing_cancel", request=None,
                   responses=BillingAccountOutputSerializer, tags=["platform"])
    def post(self, request: Request, slug: str) -> Response:
        account = services.billing_account_cancel(tenant=tenant_get(slug=slug), gateway=wiring.stripe_gateway(),
                                                  actor=request.user.actor)
        return Response(BillingAccountOutputSerializer(account).data)
