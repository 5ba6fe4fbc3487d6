"""The tenant's quotas and where it stands (GET /v1/quotas). Thin: parse, call one selector, serialize."""

from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing.quotas import quota_usage_get
from billing.wiring import tier_limiter
from data_plane.runtime.wiring import run_step_queue
from data_plane.selectors import run_count_active
from tenants.api_views import TenantApiView


class BucketLevelSerializer(serializers.Serializer):
    rate_per_second = serializers.FloatField(help_text="Tokens added a second.")
    burst = serializers.IntegerField(help_text="Tokens the bucket holds when full.")
    remaining = serializers.IntegerField(allow_null=True, help_text="Whole tokens left now (null: Redis unreadable).")
    full_in_seconds = serializers.IntegerField(allow_null=True, help_text="Seconds until the bucket is full again.")


class QuotaOutputSerializer(serializers.Serializer):
    tier = serializers.CharField()
    concurrent_runs_limit = serializers.IntegerField()
    concurrent_runs = serializers.IntegerField(help_text="Top-level runs queued, running, paused or waiting for "
                                                         "approval now.")
    runs_per_minute_limit = serializers.IntegerField()
    tokens_per_month_limit = serializers.IntegerField(help_text="LLM tokens a calendar month (enforced by budgets).")
    requests = BucketLevelSerializer(help_text="The API request rate's bucket (this request's token already taken).")
    run_starts = BucketLevelSerializer(help_text="The runs-per-minute bucket.")
    queue = serializers.CharField(help_text="The Celery queue the tenant's run steps go to.")


class QuotaApi(TenantApiView):
    required_scopes = {"GET": "usage:read"}

    @extend_schema(operation_id="quotas_get", responses=QuotaOutputSerializer, tags=["quotas"])
    def get(self, request: Request) -> Response:
        tenant = request.user.tenant
        usage = quota_usage_get(tenant=tenant, limiter=tier_limiter(),
                                active_runs=run_count_active(tenant_schema=tenant.schema_name),
                                queue=run_step_queue(tenant.sla_tier))
        return Response(QuotaOutputSerializer(asdict(usage)).data)
