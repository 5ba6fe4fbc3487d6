from django.urls import path

from guardrails import apis

urlpatterns = [
    path("guardrails/policies", apis.GuardrailPolicyListApi.as_view(), name="guardrail-policies"),
    path("guardrails/policies/tenant", apis.GuardrailTenantPolicyApi.as_view(), name="guardrail-tenant-policy"),
    path("guardrails/policies/agents/<slug:agent>", apis.GuardrailAgentPolicyApi.as_view(),
         name="guardrail-agent-policy"),
    path("guardrails/policies/effective", apis.GuardrailEffectivePolicyApi.as_view(), name="guardrail-effective"),
    path("guardrails/dry-run", apis.GuardrailDryRunApi.as_view(), name="guardrail-dry-run"),
    path("guardrails/flags", apis.GuardrailFlagListApi.as_view(), name="guardrail-flags"),
    path("guardrails/flags/<uuid:flag_id>/review", apis.GuardrailFlagReviewApi.as_view(),
         name="guardrail-flag-review"),
]
