"""The permission matrix on every tenant endpoint: a portal user of each role, signed in, gets 403 for every
method whose scope the role lacks, and passes the scope check for every method whose scope it holds.

Routes are discovered like tests/test_tenant_isolation.py does, so a new endpoint is covered without an edit.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.test import Client

from control_plane.identity.tests.factories import MembershipFactory
from tenants import roles
from tenants.api_views import TenantApiView
from tests.test_tenant_isolation import _tenant_routes

_CONVERTERS = {"uuid": lambda: str(uuid.uuid4()), "int": lambda: "1", "slug": lambda: "nothing-here",
               "str": lambda: "nothing-here", "path": lambda: "nothing-here"}


def _view_class(route: str) -> type[TenantApiView]:
    from django.urls import get_resolver

    def walk(patterns, prefix: str):  # type: ignore[no-untyped-def]
        from django.urls import URLPattern, URLResolver

        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                found = walk(pattern.url_patterns, prefix + str(pattern.pattern))
                if found is not None:
                    return found
            elif isinstance(pattern, URLPattern) and prefix + str(pattern.pattern) == route:
                return pattern.callback.view_class
        return None

    return walk(get_resolver().url_patterns, "")


def _path(route: str) -> str:
    return "/" + re.sub(r"<(\w+):\w+>", lambda match: _CONVERTERS[match.group(1)](), route)


ROUTES = sorted(_tenant_routes())


def test_every_tenant_route_names_a_scope_for_each_of_its_methods():
    missing = [(route, method) for route, method in ROUTES
               if method.upper() not in getattr(_view_class(route), "required_scopes", {})]
    assert missing == []


@pytest.mark.parametrize("role", roles.ROLES)
def test_each_role_gets_exactly_the_endpoints_its_scopes_allow(tenant_a, role):
    # given a signed-in member with this role
    membership = MembershipFactory(tenant=tenant_a.tenant, role=role)
    client = Client()
    client.force_login(membership.user)
    held = roles.scopes_for_role(role)
    denied, allowed_but_refused = [], []
    # when every method of every tenant endpoint is called (empty bodies, made-up ids)
    for route, method in ROUTES:
        scope = _view_class(route).required_scopes[method.upper()]
        body = {"data": json.dumps({}), "content_type": "application/json"} if method in ("post", "put", "patch") \
            else {}
        response = getattr(client, method)(_path(route), **body, HTTP_X_AGENTPLANE_TENANT=tenant_a.tenant.slug)
        code = response.json().get("code") if response.status_code >= 400 else None
        if scope in held:
            if response.status_code in (401, 403):
                allowed_but_refused.append((method, route, scope, response.status_code, code))
        elif (response.status_code, code) != (403, "missing_scope"):
            denied.append((method, route, scope, response.status_code, code))
    # then
    assert denied == [], f"{role} reached endpoints beyond its scopes"
    assert allowed_but_refused == [], f"{role} was refused endpoints its scopes allow"


def test_the_matrix_is_not_empty_for_any_role():
    # a role that could call nothing, or everything, would make the test above prove little
    scopes = {_view_class(route).required_scopes[method.upper()] for route, method in ROUTES}
    for role in (roles.VIEWER, roles.FINANCE, roles.DEVELOPER):
        held = roles.scopes_for_role(role)
        assert scopes & held and scopes - held, role
