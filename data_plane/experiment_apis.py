"""A/B test endpoints. Thin: parse, call one service or selector, serialize."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from common.pagination import paginated, paginated_response
from common.validation import validated
from data_plane import experiment_selectors, services
from data_plane.experiment_statistics import ALPHA, CONFIDENCE, MIN_SAMPLE
from data_plane.services.experiments import MAX_VARIANTS, MIN_VARIANTS, OVERRIDABLE_KEYS
from tenants.api_views import TenantApiView

TAGS = ["experiments"]


# --- Output ------------------------------------------------------------------------------------------

class VariantOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    weight = serializers.FloatField()
    traffic_share = serializers.SerializerMethodField(help_text="The share of runs the hash sends to it (0 to 1).")
    is_control = serializers.BooleanField()
    overrides = serializers.JSONField(help_text="What the variant changes in the agent's spec.")
    agent_version = serializers.IntegerField(source="agent_version.version",
                                             help_text="The agent version its runs use.")

    def get_traffic_share(self, variant: Any) -> float:
        return float(self.context["shares"][variant.id])


class ExperimentOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    agent_id = serializers.UUIDField()
    name = serializers.CharField()
    description = serializers.CharField()
    status = serializers.CharField(help_text="running (assigning runs), stopped or promoted.")
    variants = serializers.SerializerMethodField()
    promoted_variant = serializers.CharField(source="promoted_variant.name", allow_null=True, default=None)
    promoted_version = serializers.IntegerField(allow_null=True, help_text="The agent version promotion made latest.")
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    stopped_at = serializers.DateTimeField(allow_null=True)
    promoted_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(VariantOutputSerializer(many=True))
    def get_variants(self, experiment: Any) -> list[dict[str, Any]]:
        variants = list(experiment.variants.all())
        shares = experiment_selectors.traffic_shares(variants)
        return list(VariantOutputSerializer(variants, many=True, context={"shares": shares}).data)


def _number(**kwargs: Any) -> serializers.FloatField:
    return serializers.FloatField(allow_null=True, **kwargs)


class RateOutputSerializer(serializers.Serializer):
    successes = serializers.IntegerField()
    trials = serializers.IntegerField()
    rate = _number()
    ci_low = _number(help_text="Wilson score interval, 95%.")
    ci_high = _number()


class MeanOutputSerializer(serializers.Serializer):
    n = serializers.IntegerField()
    mean = _number()
    std = _number(help_text="The sample standard deviation.")
    ci_low = _number(help_text="Student t interval, 95% (null under 2 values).")
    ci_high = _number()


class MedianOutputSerializer(serializers.Serializer):
    n = serializers.IntegerField()
    median = _number()
    ci_low = _number(help_text="Distribution-free interval from order statistics, 95% (null when too few values).")
    ci_high = _number()


class ComparisonOutputSerializer(serializers.Serializer):
    test = serializers.CharField(help_text="two_proportion_z (rates) or welch_t (means); two-sided.")
    difference = _number(help_text="The variant's value minus the control's.")
    statistic = _number()
    p_value = _number()
    significant = serializers.BooleanField(help_text="p < 0.05 and both groups meet the minimum sample.")
    caveats = serializers.ListField(child=serializers.CharField())


class VsControlOutputSerializer(serializers.Serializer):
    completion_rate = ComparisonOutputSerializer()
    cost_usd = ComparisonOutputSerializer()
    latency_seconds = ComparisonOutputSerializer()
    score = ComparisonOutputSerializer()


class VariantResultsOutputSerializer(serializers.Serializer):
    variant = serializers.CharField(source="variant.name")
    is_control = serializers.BooleanField(source="variant.is_control")
    agent_version = serializers.IntegerField(source="variant.agent_version.version")
    traffic_share = serializers.FloatField()
    runs = serializers.IntegerField(help_text="Runs assigned to the variant.")
    active = serializers.IntegerField(help_text="Of them, not finished yet (left out of the figures below).")
    finished = serializers.IntegerField(source="completion.trials", help_text="Completed, failed or cancelled.")
    completed = serializers.IntegerField(source="completion.successes")
    completion_rate = RateOutputSerializer(source="completion", help_text="Completed among finished runs.")
    cost_usd = MeanOutputSerializer(help_text="Cost per finished run.")
    latency_seconds = MeanOutputSerializer(help_text="Finished minus created, of completed runs.")
    latency_p50_seconds = MedianOutputSerializer()
    score = MeanOutputSerializer(help_text="Evaluation score (0 to 1, users' or the evaluator's feedback) per run "
                                           "with feedback: the mean of its scores.")
    vs_control = VsControlOutputSerializer(allow_null=True, help_text="null for the control.")


class ExperimentResultsOutputSerializer(serializers.Serializer):
    experiment_id = serializers.UUIDField(source="experiment.id")
    status = serializers.CharField(source="experiment.status")
    computed_at = serializers.DateTimeField()
    confidence_level = serializers.SerializerMethodField()
    alpha = serializers.SerializerMethodField()
    min_sample_size = serializers.SerializerMethodField(help_text="Per group, for a difference to count as "
                                                                  "significant.")
    variants = VariantResultsOutputSerializer(many=True)
    caveats = serializers.ListField(child=serializers.CharField())

    def get_confidence_level(self, results: Any) -> float:
        return CONFIDENCE

    def get_alpha(self, results: Any) -> float:
        return ALPHA

    def get_min_sample_size(self, results: Any) -> int:
        return MIN_SAMPLE


# --- Endpoints ---------------------------------------------------------------------------------------

class VariantInputSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=50)
    weight = serializers.FloatField(min_value=0.0001, max_value=1_000_000,
                                    help_text="Its share of traffic is weight / sum of weights.")
    is_control = serializers.BooleanField(default=False, help_text="Exactly one variant is the control.")
    overrides = serializers.DictField(required=False, default=dict, help_text=(
        "Merged into the agent's current spec (each key replaces the spec's): "
        + ", ".join(OVERRIDABLE_KEYS) + ". Empty: the agent's current version, pinned."))


class AgentExperimentListCreateApi(TenantApiView):
    """An agent's A/B tests: list them, or start one (at most one runs per agent)."""

    required_scopes = {"GET": "agents:read", "POST": "agents:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.SlugField(max_length=100, help_text="Unique among the agent's experiments.")
        description = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
        variants = VariantInputSerializer(many=True, min_length=MIN_VARIANTS, max_length=MAX_VARIANTS)

    @extend_schema(operation_id="experiments_list", responses=paginated(ExperimentOutputSerializer), tags=TAGS)
    def get(self, request: Request, agent_id: UUID) -> Response:
        experiments = experiment_selectors.experiment_list(tenant_schema=request.user.tenant.schema_name,
                                                           agent_id=agent_id)
        return paginated_response(request=request, view=self, queryset=experiments,
                                  serializer_class=ExperimentOutputSerializer)

    @extend_schema(operation_id="experiments_create", request=InputSerializer,
                   responses={201: ExperimentOutputSerializer}, tags=TAGS)
    def post(self, request: Request, agent_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        experiment = services.experiment_create(tenant=request.user.tenant, agent_id=agent_id,
                                                actor=request.user.actor, **data)
        return Response(ExperimentOutputSerializer(experiment).data, status=status.HTTP_201_CREATED)


class ExperimentDetailApi(TenantApiView):
    required_scopes = {"GET": "agents:read"}

    @extend_schema(operation_id="experiments_get", responses=ExperimentOutputSerializer, tags=TAGS)
    def get(self, request: Request, experiment_id: UUID) -> Response:
        experiment = experiment_selectors.experiment_get(tenant_schema=request.user.tenant.schema_name,
                                                         experiment_id=experiment_id)
        return Response(ExperimentOutputSerializer(experiment).data)


class ExperimentResultsApi(TenantApiView):
    """Per variant: completion rate, cost, latency and score with 95% intervals, and each variant against the
    control with a p-value (see docs/experiments.md)."""

    required_scopes = {"GET": "agents:read"}

    @extend_schema(operation_id="experiments_results", responses=ExperimentResultsOutputSerializer, tags=TAGS)
    def get(self, request: Request, experiment_id: UUID) -> Response:
        results = experiment_selectors.experiment_results(tenant_schema=request.user.tenant.schema_name,
                                                          experiment_id=experiment_id)
        return Response(ExperimentResultsOutputSerializer(results).data)


class ExperimentStopApi(TenantApiView):
    required_scopes = {"POST": "agents:write"}

    @extend_schema(operation_id="experiments_stop", request=None, responses=ExperimentOutputSerializer, tags=TAGS)
    def post(self, request: Request, experiment_id: UUID) -> Response:
        experiment = services.experiment_stop(tenant=request.user.tenant, experiment_id=experiment_id,
                                              actor=request.user.actor)
        return Response(ExperimentOutputSerializer(experiment).data)


class ExperimentPromoteApi(TenantApiView):
    """Make a variant's spec the agent's new latest version and end the experiment."""

    required_scopes = {"POST": "agents:write"}

    class InputSerializer(serializers.Serializer):
        variant = serializers.SlugField(max_length=50, help_text="The name of the variant to promote.")

    @extend_schema(operation_id="experiments_promote", request=InputSerializer, responses=ExperimentOutputSerializer,
                   tags=TAGS)
    def post(self, request: Request, experiment_id: UUID) -> Response:
        data = validated(self.InputSerializer, request.data)
        experiment = services.experiment_promote(tenant=request.user.tenant, experiment_id=experiment_id,
                                                 actor=request.user.actor, **data)
        return Response(ExperimentOutputSerializer(experiment).data)
