"""Every tenant endpoint, called with tenant B's key and tenant A's ids, sees nothing of A.

The matrix below must cover every route served by a TenantApiView: a new endpoint without an
isolation case fails ``test_every_tenant_endpoint_is_in_the_matrix``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django_tenants.utils import schema_context

from common.actors import Actor
from conftest import ProvisionedForTest, bearer
from control_plane.audit.models import AuditEvent
from data_plane import services as data_plane_services
from data_plane.models import Ping
from tenants.api_views import TenantApiView
from tenants.models import ApiKey
from tenants.tests.factories import ApiKeyFactory


@dataclass(frozen=True)
class TenantAData:
    key_id: str
    ping_id: str
    audit_ids: frozenset[str]


@dataclass(frozen=True)
class Case:
    route: str  # the URL pattern, as Django knows it
    method: str
    path: Callable[[TenantAData], str]
    body: dict | None
    check: Callable[..., None]


def _no_a_ids(field: str, a_ids: Callable[[TenantAData], set[str]]) -> Callable[..., None]:
    def check(response, a: TenantAData, b: ProvisionedForTest) -> None:
        assert response.status_code == 200
        assert not {item[field] for item in response.json()["results"]} & a_ids(a)
    return check


def _not_found(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 404
    assert response.json()["status"] == 404
    assert a.key_id not in response.content.decode() or "not found" in response.json()["detail"]


def _own_tenant(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 200
    assert response.json()["id"] == str(b.tenant.id)


def _key_created_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 201
    assert ApiKey.objects.get(id=response.json()["id"]).tenant_id == b.tenant.id


def _ping_created_in_b(response, a: TenantAData, b: ProvisionedForTest) -> None:
    assert response.status_code == 202
    with schema_context(b.schema):
        assert Ping.objects.filter(id=response.json()["id"]).exists()


CASES = [
    Case("v1/tenant", "get", lambda a: "/v1/tenant", None, _own_tenant),
    Case("v1/api-keys", "get", lambda a: "/v1/api-keys?limit=500", None, _no_a_ids("id", lambda a: {a.key_id})),
    Case("v1/api-keys", "post", lambda a: "/v1/api-keys", {"name": "b", "scopes": ["tenant:read"]},
         _key_created_in_b),
    Case("v1/api-keys/<uuid:key_id>", "get", lambda a: f"/v1/api-keys/{a.key_id}", None, _not_found),
    Case("v1/api-keys/<uuid:key_id>/revoke", "post", lambda a: f"/v1/api-keys/{a.key_id}/revoke", {}, _not_found),
    Case("v1/pings", "get", lambda a: "/v1/pings?limit=500", None, _no_a_ids("id", lambda a: {a.ping_id})),
    Case("v1/pings", "post", lambda a: "/v1/pings", {"message": "from b"}, _ping_created_in_b),
    Case("v1/pings/<uuid:ping_id>", "get", lambda a: f"/v1/pings/{a.ping_id}", None, _not_found),
    Case("v1/audit-events", "get", lambda a: "/v1/audit-events?limit=500", None,
         _no_a_ids("id", lambda a: set(a.audit_ids))),
]


def _tenant_routes() -> set[tuple[str, str]]:
    """(route, method) for every handler of every TenantApiView in the URL conf."""
    found: set[tuple[str, str]] = set()

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                view_class = getattr(pattern.callback, "view_class", None)
                if view_class is not None and issubclass(view_class, TenantApiView):
                    for method in ("get", "post", "put", "patch", "delete"):
                        if hasattr(view_class, method):
                            found.add((prefix + str(pattern.pattern), method))

    walk(get_resolver().url_patterns, "")
    return found


def test_every_tenant_endpoint_is_in_the_matrix():
    assert _tenant_routes() == {(case.route, case.method) for case in CASES}


@pytest.fixture
def tenant_a_data(tenant_a) -> TenantAData:
    actor = Actor(kind="system", id="isolation-test")
    key = ApiKeyFactory(tenant=tenant_a.tenant, name="a-only")
    with schema_context(tenant_a.schema):
        ping = data_plane_services.ping_create(tenant=tenant_a.tenant, message="a", actor=actor)
        audit_ids = frozenset(str(i) for i in AuditEvent.objects.values_list("id", flat=True))
    assert audit_ids
    return TenantAData(key_id=str(key.id), ping_id=str(ping.id), audit_ids=audit_ids)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method.upper()} {c.route}")
def test_tenant_b_sees_nothing_of_tenant_a(client, tenant_a, tenant_b, tenant_a_data, case):
    # when
    kwargs = bearer(tenant_b.key)
    if case.body is not None:
        response = getattr(client, case.method)(case.path(tenant_a_data), json.dumps(case.body),
                                                content_type="application/json", **kwargs)
    else:
        response = getattr(client, case.method)(case.path(tenant_a_data), **kwargs)
    # then
    case.check(response, tenant_a_data, tenant_b)
    # and tenant A's data is untouched
    assert ApiKey.objects.get(id=tenant_a_data.key_id).revoked_at is None
    with schema_context(tenant_a.schema):
        assert Ping.objects.filter(message="from b").count() == 0
        assert Ping.objects.filter(id=tenant_a_data.ping_id).exists()
