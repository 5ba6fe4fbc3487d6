"""Reads of OAuth clients and of members' scopes. Never writes."""

from __future__ import annotations

from django.db.models import QuerySet

from control_plane.identity.models import Membership
from control_plane.oauth.errors import ApplicationNotFound
from control_plane.oauth.models import Application
from tenants import roles


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


def member_scopes(*, user_id: object, tenant_id: object) -> frozenset[str] | None:
    """The scopes the user's current role in the tenant holds; None when the user is not a member."""
    # TODO(identity): read through control_plane.identity.selectors once that module exists.
    role = Membership.objects.filter(user_id=user_id, tenant_id=tenant_id).values_list("role", flat=True).first()
    return None if role is None else roles.scopes_for_role(role)
