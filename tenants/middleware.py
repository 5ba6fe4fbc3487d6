"""Hostname resolution for the portal; every request starts and ends on the public schema."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django_tenants.middleware.main import TenantMainMiddleware


class TenantResolutionMiddleware(TenantMainMiddleware):
    """A known portal hostname selects its tenant; any other host is served from the public schema.

    API requests are then resolved by credential (tenants.authentication). Resetting to the public
    schema on the way out means a forgotten switch can never leak into the next request on this thread.
    """

    # Probes must answer without touching the database (liveness) or before any tenant is involved.
    EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if request.path in self.EXEMPT_PATHS:
            connection.set_schema_to_public()
            return None
        return super().process_request(request)

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        connection.set_schema_to_public()
        return response
