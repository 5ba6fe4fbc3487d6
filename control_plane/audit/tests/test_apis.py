"""GET /v1/audit-events (search), /export (streamed jsonl and csv that verify offline) and /verify."""

from __future__ import annotations

import csv
import io

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from common.actors import Actor
from conftest import bearer
from control_plane.audit import chain
from control_plane.audit.models import AuditEvent
from control_plane.audit.selectors import audit_event_export
from control_plane.audit.services import audit_event_record
from tenants.tests.factories import ApiKeyFactory


@pytest.fixture
def logged(tenant_a) -> dict[str, AuditEvent]:
    with schema_context(tenant_a.schema):
        return {
            "start": audit_event_record(tenant=tenant_a.tenant, actor=Actor(kind="api_key", id="k1"),
                                        action="run.start", target_type="run", target_id="r1",
                                        data={"input": "Grüße 😀", "cost": 0.1, "tokens": 10**20}),
            "cancel": audit_event_record(tenant=tenant_a.tenant, actor=Actor(kind="api_key", id="k2"),
                                         action="run.cancel", target_type="run", target_id="r1"),
            "tool": audit_event_record(tenant=tenant_a.tenant, actor=Actor(kind="system", id="runtime"),
                                       action="tool.call", target_type="run", target_id="r2",
                                       data={"arguments": {"b": 1, "a": [1.5e-07, None]}}),
            "runner": audit_event_record(tenant=tenant_a.tenant, actor=Actor(kind="system", id="runtime"),
                                         action="runner.x", target_type="agent", target_id="g1"),
        }


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


@pytest.mark.parametrize(("query", "expected"), [
    ("action=run.start", ["start"]),
    ("action=run.", ["cancel", "start"]),  # a prefix: not runner.x
    ("action=run.*", ["cancel", "start"]),
    ("actor_kind=system", ["runner", "tool"]),
    ("actor_id=k2", ["cancel"]),
    ("target_type=run&target_id=r1", ["cancel", "start"]),
    ("target_type=agent", ["runner"]),
])
def test_list_filters(client, tenant_a, logged, query, expected):
    response = client.get(f"/v1/audit-events?{query}&from_seq={logged['start'].seq}", **bearer(tenant_a.key))
    assert ids(response) == [str(logged[name].id) for name in expected]  # newest (highest seq) first


def test_list_by_seq_range_and_time(client, tenant_a, logged):
    # given
    seqs = f"from_seq={logged['cancel'].seq}&to_seq={logged['tool'].seq}"
    after = (logged["cancel"].occurred_at).isoformat().replace("+00:00", "Z")
    until = (logged["runner"].occurred_at).isoformat()
    # then
    assert ids(client.get(f"/v1/audit-events?{seqs}", **bearer(tenant_a.key))) == [
        str(logged["tool"].id), str(logged["cancel"].id)]
    in_window = client.get("/v1/audit-events", {"since": after, "until": until}, **bearer(tenant_a.key))
    assert ids(in_window) == [str(logged["tool"].id), str(logged["cancel"].id)]
    first = client.get(f"/v1/audit-events?from_seq={logged['start'].seq}&limit=1", **bearer(tenant_a.key)).json()
    assert first["count"] == 4 and first["results"][0]["seq"] == logged["runner"].seq
    assert first["results"][0]["prev_hash"] == logged["tool"].hash


@pytest.mark.parametrize(("query", "field", "message"), [
    ("since=yesterday", "since", "Datetime has wrong format"),
    ("until=2026-13-01T00:00:00Z", "until", "Datetime has wrong format"),
    ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "until", "must be later than since"),
    ("from_seq=5&to_seq=2", "to_seq", "must not be below from_seq"),
    ("from_seq=-1", "from_seq", "greater than or equal to 0"),
    ("to_seq=abc", "to_seq", "A valid integer is required"),
])
def test_bad_filters_are_400s_that_say_what_to_fix(client, tenant_a, query, field, message):
    for path in ("/v1/audit-events", "/v1/audit-events/export"):
        response = client.get(f"{path}?{query}", **bearer(tenant_a.key))
        assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
        assert message in response.json()["errors"][field][0]
        assert field in response.json()["detail"]


def test_export_format_must_be_known(client, tenant_a):
    response = client.get("/v1/audit-events/export?format=xml", **bearer(tenant_a.key))
    assert response.status_code == 400
    assert response.json()["errors"]["format"] == ['"xml" is not a valid choice.']


def _parsed(response, export_format: str) -> list[dict]:
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode()
    if export_format == "jsonl":
        return [chain.parse_json(line) for line in text.splitlines()]
    rows = list(csv.DictReader(io.StringIO(text)))
    return [{**row, "seq": int(row["seq"]), "data": chain.parse_json(row["data"])} for row in rows]


@pytest.mark.parametrize(("export_format", "content_type"), [("jsonl", "application/x-ndjson; charset=utf-8"),
                                                             ("csv", "text/csv; charset=utf-8")])
def test_an_export_parses_back_and_verifies_offline(client, tenant_a, logged, export_format, content_type):
    # when
    response = client.get(f"/v1/audit-events/export?format={export_format}", **bearer(tenant_a.key))
    # then
    assert response["Content-Type"] == content_type and response.streaming
    events = _parsed(response, export_format)
    with schema_context(tenant_a.schema):
        assert [e["seq"] for e in events] == list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    report = chain.verify_chain(events, anchor=None, expect_anchor=False)
    assert report.ok, report.first_failure
    assert report.head_hash == logged["runner"].hash
    start = next(e for e in events if e["id"] == str(logged["start"].id))
    assert start["data"] == {"input": "Grüße 😀", "cost": chain.parse_json("0.1"), "tokens": 10**20}


def test_a_filtered_export_holds_the_matching_events_with_their_hashes(client, tenant_a, logged):
    response = client.get("/v1/audit-events/export?action=run.&format=jsonl", **bearer(tenant_a.key))
    events = _parsed(response, "jsonl")
    assert [(e["id"], e["hash"]) for e in events] == [(str(logged[n].id), logged[n].hash) for n in ("start", "cancel")]
    # each event still proves itself
    assert all(chain.event_hash(e) == e["hash"] for e in events)


def test_the_export_reads_in_chunks_of_the_same_events(tenant_a, logged):
    with schema_context(tenant_a.schema):
        whole = list(audit_event_export(tenant_schema=tenant_a.schema))
    connection.set_schema_to_public()  # each chunk enters the schema itself, as a streamed response's do
    assert list(audit_event_export(tenant_schema=tenant_a.schema, chunk=2)) == whole
    assert len(whole) > 4


@pytest.mark.parametrize("path", ["/v1/audit-events", "/v1/audit-events/export", "/v1/audit-events/verify"])
def test_audit_endpoints_need_the_audit_read_scope(client, tenant_a, path):
    limited = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:read"])
    response = client.get(path, **bearer(limited.plaintext))
    assert response.status_code == 403 and response.json()["code"] == "missing_scope"
    assert "audit:read" in response.json()["detail"]
