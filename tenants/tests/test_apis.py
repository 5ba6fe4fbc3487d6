import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_tenants.utils import schema_context

from conftest import bearer, unique_slug
from control_plane.audit.models import AuditEvent
from tenants import services
from tenants.db_roles import owner_context
from tenants.models import ApiKey, Tenant
from tenants.tests.factories import ApiKeyFactory, OperatorKeyFactory

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


def post(client, path, body, **headers):
    return client.post(path, json.dumps(body), content_type="application/json", **headers)


def test_no_credentials_is_401_problem_with_challenge(client, tenant_a):
    response = client.get("/v1/tenant")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert PROBLEM_KEYS <= response.json().keys()
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer nonsense", "Token x"])
def test_malformed_credentials_are_401(client, tenant_a, header):
    response = client.get("/v1/tenant", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["code"] in {"invalid_credentials", "not_authenticated"}


def test_tenant_key_reads_its_own_tenant(client, tenant_a):
    response = client.get("/v1/tenant", **bearer(tenant_a.key))
    assert response.status_code == 200
    assert response.json()["slug"] == tenant_a.tenant.slug
    assert response.json()["schema_name"] == tenant_a.schema


def test_missing_scope_is_403_and_names_the_scope(client, tenant_a):
    limited = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["tenant:read"])
    response = client.get("/v1/api-keys", **bearer(limited.plaintext))
    assert response.status_code == 403
    assert response.json()["code"] == "missing_scope"
    assert "keys:read" in response.json()["detail"]


def test_key_lifecycle_over_the_api(client, tenant_a):
    # when: create
    created = post(client, "/v1/api-keys", {"name": "ci", "scopes": ["pings:read", "pings:write"]},
                   **bearer(tenant_a.key))
    # then: the secret is shown once and works
    assert created.status_code == 201
    body = created.json()
    secret = body["secret"]
    assert secret.startswith("agp_") and body["prefix"] == secret[: len(body["prefix"])]
    assert body["scopes"] == ["pings:read", "pings:write"]
    assert client.get("/v1/pings", **bearer(secret)).status_code == 200
    # listing and reading never show secrets
    listed = client.get("/v1/api-keys", **bearer(tenant_a.key)).json()
    assert body["id"] in [k["id"] for k in listed["results"]]
    assert all("secret" not in k for k in listed["results"])
    assert secret not in json.dumps(listed)
    detail = client.get(f"/v1/api-keys/{body['id']}", **bearer(tenant_a.key)).json()
    assert detail["is_active"] is True and "secret" not in detail
    # revoke: the key stops working at once, a second revoke is a conflict
    revoked = post(client, f"/v1/api-keys/{body['id']}/revoke", {}, **bearer(tenant_a.key))
    assert revoked.status_code == 200 and revoked.json()["is_active"] is False
    refused = client.get("/v1/pings", **bearer(secret))
    assert refused.status_code == 401 and refused.json()["code"] == "credential_revoked"
    assert post(client, f"/v1/api-keys/{body['id']}/revoke", {}, **bearer(tenant_a.key)).status_code == 409
    # and both changes are in the audit log
    with schema_context(tenant_a.schema):
        actions = set(AuditEvent.objects.filter(target_id=body["id"]).values_list("action", flat=True))
    assert actions == {"api_key.create", "api_key.revoke"}


def test_invalid_key_input_gets_field_errors_and_creates_nothing(client, tenant_a):
    before = ApiKey.objects.filter(tenant=tenant_a.tenant).count()
    response = post(client, "/v1/api-keys", {"scopes": [], "expires_at": "tomorrow"}, **bearer(tenant_a.key))
    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "invalid"
    assert set(problem["errors"]) == {"name", "scopes", "expires_at"}
    assert "name" in problem["detail"]
    assert ApiKey.objects.filter(tenant=tenant_a.tenant).count() == before


def test_unknown_scope_is_400_naming_valid_scopes(client, tenant_a):
    response = post(client, "/v1/api-keys", {"name": "x", "scopes": ["everything"]}, **bearer(tenant_a.key))
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_scope"
    assert "keys:read" in response.json()["detail"]


def test_a_key_cannot_mint_a_stronger_key(client, tenant_a):
    weak = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["keys:write"])
    response = post(client, "/v1/api-keys", {"name": "strong", "scopes": ["audit:read"]}, **bearer(weak.plaintext))
    assert response.status_code == 403
    assert response.json()["code"] == "scope_escalation"
    assert not ApiKey.objects.filter(name="strong").exists()


def test_malformed_json_is_a_400_problem(client, tenant_a):
    response = client.post("/v1/api-keys", "{not json", content_type="application/json", **bearer(tenant_a.key))
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_request"


def test_unknown_path_is_a_404_problem(client, db):
    response = client.get("/v1/does-not-exist")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"


def test_wrong_method_is_405_problem(client, tenant_a):
    response = client.delete("/v1/tenant", **bearer(tenant_a.key))
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_portal_hostname_of_another_tenant_refuses_the_key(client, tenant_a):
    other = services.tenant_provision(name="Host", slug=unique_slug("host"), sla_tier="standard",
                                      domains=["portal-other.example.com"], actor=services.Actor(kind="system", id="t"))
    response = client.get("/v1/tenant", HTTP_HOST="portal-other.example.com", **bearer(tenant_a.key))
    assert response.status_code == 403
    assert response.json()["code"] == "credential_tenant_mismatch"
    own = client.get("/v1/tenant", HTTP_HOST="portal-other.example.com", **bearer(other.admin_key.plaintext))
    assert own.status_code == 200


# --- Platform operator ----------------------------------------------------------------------------

def test_operator_provisions_suspends_reactivates_and_deletes(client, operator_key):
    slug = unique_slug("ops")
    created = post(client, "/v1/platform/tenants",
                   {"name": "Ops Co", "slug": slug, "sla_tier": "professional", "domains": ["ops.example.com"]},
                   **bearer(operator_key))
    assert created.status_code == 201
    tenant_key = created.json()["admin_key"]["secret"]
    assert created.json()["tenant"]["status"] == "active"
    assert client.get("/v1/tenant", **bearer(tenant_key)).json()["sla_tier"] == "professional"

    suspended = post(client, f"/v1/platform/tenants/{slug}/suspend", {"reason": "payment failed"},
                     **bearer(operator_key))
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
    refused = client.get("/v1/tenant", **bearer(tenant_key))
    assert refused.status_code == 403
    assert refused.json()["code"] == "tenant_suspended" and "payment failed" in refused.json()["detail"]
    assert post(client, f"/v1/platform/tenants/{slug}/suspend", {"reason": "again"},
                **bearer(operator_key)).status_code == 409

    assert post(client, f"/v1/platform/tenants/{slug}/reactivate", {}, **bearer(operator_key)).status_code == 200
    assert client.get("/v1/tenant", **bearer(tenant_key)).status_code == 200

    unconfirmed = client.delete(f"/v1/platform/tenants/{slug}", json.dumps({"confirm": "nope"}),
                                content_type="application/json", **bearer(operator_key))
    assert unconfirmed.status_code == 400 and "confirm" in unconfirmed.json()["errors"]
    assert Tenant.objects.get(slug=slug).status == "active"
    deleted = client.delete(f"/v1/platform/tenants/{slug}", json.dumps({"confirm": slug}),
                            content_type="application/json", **bearer(operator_key))
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    assert client.get("/v1/tenant", **bearer(tenant_key)).status_code == 401


def test_operator_reissues_a_key_for_a_tenant(client, operator_key, tenant_a):
    response = post(client, f"/v1/platform/tenants/{tenant_a.tenant.slug}/api-keys",
                    {"name": "recovery", "scopes": ["keys:read", "keys:write"]}, **bearer(operator_key))
    assert response.status_code == 201
    assert client.get("/v1/api-keys", **bearer(response.json()["secret"])).status_code == 200


def test_operator_input_errors_are_clear(client, operator_key):
    response = post(client, "/v1/platform/tenants", {"name": "", "slug": "Bad Slug!", "sla_tier": "gold"},
                    **bearer(operator_key))
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"name", "sla_tier"}
    response = post(client, "/v1/platform/tenants", {"name": "X", "slug": "Bad Slug!"}, **bearer(operator_key))
    assert response.status_code == 400 and "slug" in response.json()["errors"]
    assert client.get("/v1/platform/tenants/nobody", **bearer(operator_key)).status_code == 404


def test_tenant_keys_cannot_use_operator_endpoints(client, tenant_a):
    response = client.get("/v1/platform/tenants", **bearer(tenant_a.key))
    assert response.status_code == 401
    assert post(client, "/v1/platform/tenants", {"name": "x", "slug": unique_slug("x")},
                **bearer(tenant_a.key)).status_code == 401


def test_operator_keys_cannot_read_tenant_data(client, operator_key, tenant_a):
    response = client.get("/v1/api-keys", **bearer(operator_key))
    assert response.status_code == 401


def test_operator_lists_tenants_by_status(client, operator_key, tenant_a):
    response = client.get("/v1/platform/tenants?status=active&limit=500", **bearer(operator_key))
    assert response.status_code == 200
    assert tenant_a.tenant.slug in [t["slug"] for t in response.json()["results"]]
    assert client.get("/v1/platform/tenants?status=gone", **bearer(operator_key)).status_code == 400


def test_an_oversized_body_is_413_and_stores_nothing(client, tenant_a, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(client, "/v1/api-keys", {"name": "x" * 2000, "scopes": ["tenant:read"]}, **bearer(tenant_a.key))
    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    assert "1000 bytes" in response.json()["detail"]
    assert not ApiKey.objects.filter(name="x" * 2000).exists()


def test_an_unexpected_failure_is_a_500_problem_without_internals(client, tenant_a):
    # given: a tenant whose schema vanished under it (a real database error, not a mock)
    provisioned = services.tenant_provision(name="Broken", slug=unique_slug("broken"), sla_tier="standard",
                                            domains=[], actor=services.Actor(kind="system", id="t"))
    with owner_context(), connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA "{provisioned.tenant.schema_name}" CASCADE')
    # when
    response = client.get("/v1/pings", **bearer(provisioned.admin_key.plaintext))
    # then
    assert response.status_code == 500
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "internal_error"
    assert "relation" not in response.json()["detail"]  # no SQL or stack details leak


def test_an_expired_operator_key_is_refused(client, db):
    expired = OperatorKeyFactory(expires_at=timezone.now() - timedelta(minutes=1))
    response = client.get("/v1/platform/tenants", **bearer(expired.plaintext))
    assert response.status_code == 401
    assert response.json()["code"] == "credential_expired"
