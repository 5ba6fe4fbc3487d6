"""Base classes for every API view: which credential it takes and how it checks permissions."""

from __future__ import annotations

from rest_framework.views import APIView

from control_plane.identity.authentication import UserSessionAuthentication
from control_plane.oauth.authentication import OAuthAccessTokenAuthentication
from tenants.authentication import ApiKeyAuthentication, OperatorKeyAuthentication
from tenants.permissions import HasRequiredScope, IsOperator


class TenantApiView(APIView):
    """An endpoint over one tenant's data; the credential selects the tenant: an API key, an OAuth access
    token, or a portal user's session with the X-Agentplane-Tenant header (used only without a bearer token).
    Set ``required_scopes``."""

    authentication_classes = [ApiKeyAuthentication, OAuthAccessTokenAuthentication, UserSessionAuthentication]
    permission_classes = [HasRequiredScope]
    required_scopes: dict[str, str] = {}


class OperatorApiView(APIView):
    """A platform-operator endpoint (public schema only)."""

    authentication_classes = [OperatorKeyAuthentication]
    permission_classes = [IsOperator]
