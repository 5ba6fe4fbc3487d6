"""Base classes for every API view: which credential it takes and how it checks permissions."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.errors import RequestRateLimited
from billing.plans import plan_for
from billing.wiring import tier_limiter
from control_plane.identity.authentication import UserSessionAuthentication
from control_plane.oauth.authentication import OAuthAccessTokenAuthentication
from tenants.authentication import ApiKeyAuthentication, OperatorKeyAuthentication, TenantPrincipal
from tenants.permissions import HasRequiredScope, IsOperator


class TenantApiView(APIView):
    """An endpoint over one tenant's data; the credential selects the tenant: an API key, an OAuth access
    token, or a portal user's session with the X-Agentplane-Tenant header (used only without a bearer token).
    Set ``required_scopes``."""

    authentication_classes = [ApiKeyAuthentication, OAuthAccessTokenAuthentication, UserSessionAuthentication]
    permission_classes = [HasRequiredScope]
    required_scopes: dict[str, str] = {}

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        """Authenticate, then take one token of the tenant's request rate (its SLA tier's bucket; 429
        rate_limited past it), then check permissions: a refused caller still spends its token."""
        self.perform_authentication(request)
        principal = request.user
        limiter = tier_limiter()
        if limiter is not None and isinstance(principal, TenantPrincipal):
            try:
                request.tier_rate = limiter.request_admit(tenant=principal.tenant)  # type: ignore[attr-defined]
            except RequestRateLimited as limited:
                request.tier_rate = limited.bucket  # type: ignore[attr-defined]
                raise
        super().initial(request, *args, **kwargs)

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        """Every answer to a rate-limited tenant says where its bucket stands (the IETF RateLimit fields)."""
        response = super().finalize_response(request, response, *args, **kwargs)
        bucket = getattr(request, "tier_rate", None)
        if bucket is not None:
            response["RateLimit-Limit"] = str(plan_for(request.user.tenant.sla_tier).request_burst)
            response["RateLimit-Remaining"] = str(bucket.remaining)
            response["RateLimit-Reset"] = str(bucket.reset)
        return response


class OperatorApiView(APIView):
    """A platform-operator endpoint (public schema only)."""

    authentication_classes = [OperatorKeyAuthentication]
    permission_classes = [IsOperator]
