"""Approvals over the API: a run waits at an approval node, a human decides, the run moves on."""

from __future__ import annotations

import json

from django_tenants.utils import schema_context

from conftest import bearer
from data_plane.models import Approval, Run
from tenants.tests.factories import ApiKeyFactory

GATE_SPEC = {"instructions": "", "models": ["openai/gpt-4o-mini"], "graph": {"entry": "gate", "nodes": [
    {"id": "gate", "kind": "approval", "prompt": "ok?", "next": "end"}, {"id": "end", "kind": "end"}]}}


def post(client, path, body, key):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def waiting_run(client, key, name="gated") -> dict:
    agent = post(client, "/v1/agents", {"name": name, "spec": GATE_SPEC}, key).json()
    response = post(client, "/v1/runs", {"agent_id": agent["id"], "input": "Deploy it"}, key)
    assert response.status_code == 202
    return response.json()


def pending_approval(client, key, run_id) -> dict:
    approvals = client.get(f"/v1/approvals?run_id={run_id}", **bearer(key)).json()["results"]
    assert len(approvals) == 1
    return approvals[0]


def stored(tenant) -> list[tuple[str, str, str]]:
    with schema_context(tenant.schema):
        return list(Approval.objects.order_by("created_at").values_list("status", "comment", "run__status"))


def test_a_run_at_an_approval_node_waits_with_a_pending_approval(client, tenant_a):
    # when
    run = waiting_run(client, tenant_a.key)
    # then
    assert run["status"] == "waiting_approval"
    listed = client.get("/v1/approvals", **bearer(tenant_a.key)).json()
    assert listed["count"] == 1
    approval = listed["results"][0]
    assert {k: approval[k] for k in ("run_id", "key", "node_id", "kind", "prompt", "calls", "status", "decided_by",
                                     "decided_at", "comment", "arguments")} == {
        "run_id": run["id"], "key": "1:gate", "node_id": "gate", "kind": "node", "prompt": "ok?", "calls": [],
        "status": "pending", "decided_by": "", "decided_at": None, "comment": "", "arguments": {}}
    assert client.get(f"/v1/approvals/{approval['id']}", **bearer(tenant_a.key)).json() == approval
    state = client.get(f"/v1/runs/{run['id']}/checkpoints/{run['head_checkpoint_id']}", **bearer(tenant_a.key))
    assert state.json()["state"]["pending_approval"] == {"id": "1:gate", "node_id": "gate", "kind": "node",
                                                         "prompt": "ok?", "calls": []}


def test_approving_completes_the_run_and_a_second_decision_is_409(client, tenant_a):
    # given
    run = waiting_run(client, tenant_a.key)
    approval = pending_approval(client, tenant_a.key, run["id"])
    key = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["approvals:write"])
    # when
    response = post(client, f"/v1/approvals/{approval['id']}/decide", {"approved": True, "comment": "ship it"},
                    key.plaintext)
    # then
    assert response.status_code == 200
    decided = response.json()
    assert (decided["status"], decided["comment"], decided["decided_by"]) == ("approved", "ship it",
                                                                             f"api_key:{key.id}")
    assert decided["decided_at"] is not None
    finished = client.get(f"/v1/runs/{run['id']}", **bearer(tenant_a.key)).json()
    assert (finished["status"], finished["step"]) == ("completed", 1)
    assert finished["finished_at"] is not None
    checkpoints = client.get(f"/v1/runs/{run['id']}/checkpoints", **bearer(tenant_a.key)).json()["results"]
    assert [(c["step"], c["status"]) for c in checkpoints] == [(0, "waiting_approval"), (1, "completed")]
    events = client.get(f"/v1/runs/{run['id']}/events?after_seq=1", **bearer(tenant_a.key)).json()["results"]
    assert [(e["type"], e["data"]) for e in events] == [
        ("approval.decided", {"approval_id": approval["id"], "approved": True, "comment": "ship it"}),
        ("run.status", {"status": "completed"}),
        ("run.finished", {"status": "completed", "output": "", "error": None, "steps": 0,
                          "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}})]
    # and a second decision is refused
    again = post(client, f"/v1/approvals/{approval['id']}/decide", {"approved": False}, tenant_a.key)
    assert again.status_code == 409
    assert again.json()["code"] == "approval_not_pending"
    assert f"Approval {approval['id']} is approved (run {run['id']} is completed)" in again.json()["detail"]
    assert stored(tenant_a) == [("approved", "ship it", "completed")]


def test_rejecting_fails_the_run_which_can_then_be_retried(client, tenant_a):
    # given
    run = waiting_run(client, tenant_a.key)
    approval = pending_approval(client, tenant_a.key, run["id"])
    # when
    response = post(client, f"/v1/approvals/{approval['id']}/decide", {"approved": False, "comment": "not today"},
                    tenant_a.key)
    # then
    assert response.status_code == 200 and response.json()["status"] == "rejected"
    failed = client.get(f"/v1/runs/{run['id']}", **bearer(tenant_a.key)).json()
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "approval_rejected", "message": "Approval at 'gate' was rejected: not today"}
    # and a failed run can be retried: the rejected approval is asked again
    retried = post(client, f"/v1/runs/{run['id']}/retry", {}, tenant_a.key)
    assert retried.status_code == 200
    assert (retried.json()["status"], retried.json()["error"], retried.json()["step"]) == ("waiting_approval", None, 2)
    assert retried.json()["finished_at"] is None
    pending = client.get(f"/v1/approvals?run_id={run['id']}&status=pending", **bearer(tenant_a.key)).json()["results"]
    assert [(p["prompt"], p["id"] != approval["id"]) for p in pending] == [(approval["prompt"], True)]


def test_approvals_list_newest_first_and_filters(client, tenant_a):
    # given
    first = waiting_run(client, tenant_a.key, name="first")
    second = waiting_run(client, tenant_a.key, name="second")
    decided = pending_approval(client, tenant_a.key, first["id"])
    post(client, f"/v1/approvals/{decided['id']}/decide", {"approved": True}, tenant_a.key)

    def run_ids(query: str) -> list[str]:
        response = client.get(f"/v1/approvals{query}", **bearer(tenant_a.key))
        assert response.status_code == 200
        return [approval["run_id"] for approval in response.json()["results"]]

    # then
    assert run_ids("") == [second["id"], first["id"]]
    assert run_ids("?status=pending") == [second["id"]]
    assert run_ids("?status=approved") == [first["id"]]
    assert run_ids(f"?status=pending&run_id={first['id']}") == []
    bad = client.get("/v1/approvals?status=maybe&run_id=1", **bearer(tenant_a.key))
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"status", "run_id"}


def test_cancelling_a_waiting_run_cancels_its_approval(client, tenant_a):
    # given
    run = waiting_run(client, tenant_a.key)
    approval = pending_approval(client, tenant_a.key, run["id"])
    # when
    cancelled = post(client, f"/v1/runs/{run['id']}/cancel", {"reason": "changed plans"}, tenant_a.key)
    decided = post(client, f"/v1/approvals/{approval['id']}/decide", {"approved": True}, tenant_a.key)
    # then
    assert cancelled.json()["status"] == "cancelled"
    assert decided.status_code == 409 and decided.json()["code"] == "approval_not_pending"
    assert stored(tenant_a) == [("cancelled", "", "cancelled")]


def test_deciding_needs_approvals_write_and_valid_input(client, tenant_a):
    # given
    run = waiting_run(client, tenant_a.key)
    approval = pending_approval(client, tenant_a.key, run["id"])
    operator = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:read", "runs:write"])
    path = f"/v1/approvals/{approval['id']}/decide"
    # when
    refused = post(client, path, {"approved": True}, operator.plaintext)
    invalid = post(client, path, {"approved": "maybe", "arguments": {"call-1": 5}}, tenant_a.key)
    unknown_call = post(client, path, {"approved": True, "arguments": {"call-1": {"x": 1}}}, tenant_a.key)
    # then
    assert refused.status_code == 403
    assert refused.json()["code"] == "missing_scope" and "'approvals:write'" in refused.json()["detail"]
    assert invalid.status_code == 400
    assert set(invalid.json()["errors"]) == {"approved", "arguments"}
    assert unknown_call.status_code == 400
    assert unknown_call.json()["code"] == "approval_arguments_invalid"
    assert unknown_call.json()["errors"] == {"arguments": {"call-1": ["No call 'call-1' awaits approval; calls: none."]}}
    assert client.get(f"/v1/approvals/{approval['id']}", **bearer(operator.plaintext)).status_code == 200
    assert stored(tenant_a) == [("pending", "", "waiting_approval")]
    with schema_context(tenant_a.schema):
        assert Run.objects.get(id=run["id"]).step == 0


# --- Continuing a completed run's conversation: POST /v1/runs/<id>/messages ---------------------------------

def test_a_message_continues_a_completed_run_from_its_head_as_a_new_turn(client, tenant_a):
    # given: a run that completed
    run = waiting_run(client, tenant_a.key)
    approval = pending_approval(client, tenant_a.key, run["id"])
    assert post(client, f"/v1/approvals/{approval['id']}/decide", {"approved": True}, tenant_a.key).status_code == 200
    # when
    response = post(client, f"/v1/runs/{run['id']}/messages", {"text": "And now staging?"}, tenant_a.key)
    # then: the same run waits at the gate again, with the user's message appended to its conversation
    assert response.status_code == 202
    continued = response.json()
    assert (continued["id"], continued["status"], continued["step"], continued["finished_at"]) == (
        run["id"], "waiting_approval", 2, None)
    head = client.get(f"/v1/runs/{run['id']}/checkpoints/{continued['head_checkpoint_id']}",
                      **bearer(tenant_a.key)).json()
    assert [(m["role"], m["content"]) for m in head["state"]["messages"]][-2:] == [
        ("user", "Deploy it"), ("user", "And now staging?")]
    events = client.get(f"/v1/runs/{run['id']}/events?after_seq=4", **bearer(tenant_a.key)).json()["results"]
    assert [(e["type"], e["data"].get("content"), e["data"].get("status")) for e in events] == [
        ("message.user", "And now staging?", None), ("run.status", None, "waiting_approval")]


def test_a_message_to_a_run_that_is_not_completed_is_409_saying_what_to_do(client, tenant_a):
    # given
    run = waiting_run(client, tenant_a.key)
    # when
    response = post(client, f"/v1/runs/{run['id']}/messages", {"text": "hello?"}, tenant_a.key)
    empty = post(client, f"/v1/runs/{run['id']}/messages", {"text": ""}, tenant_a.key)
    # then
    assert (response.status_code, response.json()["code"]) == (409, "illegal_transition")
    assert response.json()["detail"] == (f"Run {run['id']} is waiting_approval; a message continues a completed "
                                         "run's conversation. Wait for its run.finished event, or cancel it.")
    assert (empty.status_code, list(empty.json()["errors"])) == (400, ["text"])
    with schema_context(tenant_a.schema):
        assert Run.objects.get(id=run["id"]).step == 0  # nothing changed


def test_a_stream_token_is_scoped_to_the_run_and_the_keys_streaming_scopes(client, tenant_a):
    # given
    run = waiting_run(client, tenant_a.key)
    reader = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:read", "agents:read"])
    # when
    issued = post(client, f"/v1/runs/{run['id']}/stream-token", {"ttl_seconds": 120}, reader.plaintext)
    unknown = post(client, f"/v1/runs/{run['id']}/stream-token", {"scopes": ["agents:read"]}, reader.plaintext)
    too_long = post(client, f"/v1/runs/{run['id']}/stream-token", {"ttl_seconds": 86400}, reader.plaintext)
    # then
    assert issued.status_code == 201
    body = issued.json()
    assert (body["scopes"], body["run_id"], body["stream_path"]) == (["runs:read"], run["id"],
                                                                      f"/v1/runs/{run['id']}/stream")
    from tenants.services import stream_token_authenticate

    grant = stream_token_authenticate(raw=body["token"])
    assert (grant.tenant.id, grant.key_id, grant.scopes, grant.run_id) == (
        tenant_a.tenant.id, str(reader.id), frozenset({"runs:read"}), run["id"])
    assert (unknown.status_code, unknown.json()["code"]) == (400, "unknown_scope")
    audited = client.get("/v1/audit-events?action=stream_token.issue", **bearer(tenant_a.key)).json()["results"]
    assert [(e["target_id"], e["actor_id"], e["data"]["scopes"]) for e in audited] == [
        (run["id"], str(reader.id), ["runs:read"])]
    assert (too_long.status_code, list(too_long.json()["errors"])) == (400, ["ttl_seconds"])
