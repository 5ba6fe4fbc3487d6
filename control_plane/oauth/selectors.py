"""Reads of OAuth clients. Never writes. (Members' scopes: control_plane.identity.selectors.member_scopes.)"""

from __future__ import annotations

from django.db.models import QuerySet

from control_plane.oauth.errors import ApplicationNotFound
from control_plane.oauth.models import Application


def application_list(*, tenant_id: object) -> QuerySet[Application]:
    """The tenant's OAuth client applications, oldest first."""
    return Application.objects.filter(tenant_id=tenant_id)


def application_get(*, tenant_id: object, application_id: int) -> Application:
    """One of the tenant's applications. Raises ApplicationNotFound, also for another tenant's."""
    application = Application.objects.filter(tenant_id=tenant_id, id=application_id).first()
    if application is None:
        raise ApplicationNotFound(f"OAuth application {application_id} not found.")
    return application


def application_get_by_client_id(*, client_id: str) -> Application | None:
    return Application.objects.select_related("tenant").filter(client_id=client_id).first()

