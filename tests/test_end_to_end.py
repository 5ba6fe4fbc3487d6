"""The whole foundation over real processes: Daphne serves the API, a Celery worker runs the task."""

from __future__ import annotations

import re

import httpx
import pytest

from conftest import destroy_tenant, unique_slug
from tenants import services as tenant_services
from tenants.models import Tenant
from tests.processes import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.server]


@pytest.fixture
def operator(committed):
    issued = tenant_services.operator_key_create(name=unique_slug("e2e-operator"))
    yield issued.plaintext
    issued.key.delete()


def test_provision_call_and_ping_through_daphne_and_a_worker(daphne_url, worker_process, operator, committed):
    slug = unique_slug("e2e")
    with httpx.Client(base_url=daphne_url, timeout=30) as http:
        # given: a tenant provisioned through the operator API
        created = http.post("/v1/platform/tenants", json={"name": "E2E", "slug": slug, "sla_tier": "enterprise"},
                            headers={"Authorization": f"Bearer {operator}"})
        assert created.status_code == 201, created.text
        try:
            headers = {"Authorization": f"Bearer {created.json()['admin_key']['secret']}"}
            # when: the tenant's key calls the API and sends a ping
            assert http.get("/v1/tenant", headers=headers).json()["slug"] == slug
            ping = http.post("/v1/pings", json={"message": "e2e"}, headers=headers)
            assert ping.status_code == 202
            # then: a real worker answers it from the tenant's schema
            answered = wait_for(
                lambda: (body := http.get(f"/v1/pings/{ping.json()['id']}", headers=headers).json())["status"]
                == "completed" and body,
                timeout=30, what="the worker to answer the ping", interval=0.1)
            assert answered["observed_schema"] == "t_" + slug.replace("-", "_")
            assert answered["worker"].startswith("test-worker@")
            audit = http.get("/v1/audit-events", params={"action": "ping.create"}, headers=headers).json()
            assert [event["target_id"] for event in audit["results"]] == [answered["id"]]
        finally:
            destroy_tenant(Tenant.objects.get(slug=slug))


def test_probes_schema_and_reference_page_are_served(daphne_url):
    with httpx.Client(base_url=daphne_url, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        schema = http.get("/v1/openapi.json")
        assert schema.status_code == 200
        assert schema.json()["openapi"].startswith("3.")
        assert "/v1/platform/tenants" in schema.json()["paths"]
        docs = http.get("/v1/docs")
        assert docs.status_code == 200 and "swagger-ui" in docs.text
        # the reference page's assets are served locally (no CDN: there may be no internet)
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', docs.text)
        assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
        for asset in assets:
            assert http.get(asset).status_code == 200, asset
        missing = http.get("/v1/nothing-here")
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
