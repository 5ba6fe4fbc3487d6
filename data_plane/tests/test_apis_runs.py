"""The runs API: start, read, list, lifecycle transitions, events; scopes and errors.

The services dispatch steps only after commit and these tests never commit, so no worker runs: what is
asserted is what the API does synchronously.
"""

from __future__ import annotations

import json
import uuid

from django_tenants.utils import schema_context

from conftest import bearer
from data_plane.models import Run
from tenants.tests.factories import ApiKeyFactory

SPEC = {"instructions": "Be exact.", "models": ["openai/gpt-4o-mini"]}
USER_MESSAGE = {"role": "user", "content": "What is 6*7?", "tool_calls": [], "tool_call_id": None, "name": None,
                "attachments": []}


def post(client, path, body, key):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def create_agent(client, key, name="calc", spec=SPEC) -> dict:
    response = post(client, "/v1/agents", {"name": name, "spec": spec}, key)
    assert response.status_code == 201, response.json()
    return response.json()


def start_run(client, key, agent_id, **extra) -> dict:
    response = post(client, "/v1/runs", {"agent_id": agent_id, "input": "What is 6*7?", **extra}, key)
    assert response.status_code == 202, response.json()
    return response.json()


def run_statuses(tenant) -> list[tuple[str, str]]:
    with schema_context(tenant.schema):
        return list(Run.objects.order_by("created_at").values_list("status", "status_reason"))


def test_start_run_is_202_queued_with_a_step_0_checkpoint_holding_the_input(client, tenant_a):
    # given
    agent = create_agent(client, tenant_a.key)
    # when
    response = post(client, "/v1/runs", {"agent_id": agent["id"], "input": "What is 6*7?",
                                         "values": {"topic": "math"}}, tenant_a.key)
    # then
    assert response.status_code == 202
    run = response.json()
    assert {k: run[k] for k in ("status", "status_reason", "input", "output", "error", "agent_id", "agent_name",
                                "agent_version", "step", "cost_usd", "input_tokens", "output_tokens",
                                "parent_run_id", "source_checkpoint_id", "base_run_id", "finished_at")} == {
        "status": "queued", "status_reason": "", "input": "What is 6*7?", "output": "", "error": None,
        "agent_id": agent["id"], "agent_name": "calc", "agent_version": 1, "step": 0, "cost_usd": 0.0,
        "input_tokens": 0, "output_tokens": 0, "parent_run_id": None, "source_checkpoint_id": None,
        "base_run_id": None, "finished_at": None}
    checkpoints = client.get(f"/v1/runs/{run['id']}/checkpoints", **bearer(tenant_a.key)).json()
    assert checkpoints["count"] == 1
    checkpoint = checkpoints["results"][0]
    assert (checkpoint["id"], checkpoint["run_id"], checkpoint["step"], checkpoint["parent_id"],
            checkpoint["status"]) == (run["head_checkpoint_id"], run["id"], 0, None, "running")
    state = client.get(f"/v1/runs/{run['id']}/checkpoints/{checkpoint['id']}", **bearer(tenant_a.key)).json()
    assert state["id"] == checkpoint["id"] and state["run_id"] == run["id"]
    assert state["state"] == {
        "status": "running", "messages": [USER_MESSAGE], "values": {"topic": "math"}, "frontier": ["plan"],
        "steps": 0, "pending_approval": None, "output": None, "error": None, "cost_usd": 0.0, "input_tokens": 0,
        "output_tokens": 0}
    assert client.get(f"/v1/runs/{run['id']}", **bearer(tenant_a.key)).json() == run


def test_a_started_runs_step_is_sent_before_its_events_are_published(client, tenant_a,
                                                                   django_capture_on_commit_callbacks):
    """Once the start commits, the step's task goes out first: it is on the turn's critical path, the "queued"
    event to the run's subscribers is not (they fill any gap from the database)."""
    from data_plane import streams, tasks

    agent = create_agent(client, tenant_a.key)
    with django_capture_on_commit_callbacks() as callbacks:
        start_run(client, tenant_a.key, agent["id"])
    called = [getattr(callback, "func", callback) for callback in callbacks]
    assert tasks.run_step_task.apply_async in called and streams.run_publish in called
    assert called.index(tasks.run_step_task.apply_async) < called.index(streams.run_publish)


def test_start_runs_a_given_version_or_the_latest(client, tenant_a):
    # given
    agent = create_agent(client, tenant_a.key)
    changed = client.patch(f"/v1/agents/{agent['id']}", json.dumps({"spec": {**SPEC, "instructions": "v2"}}),
                           content_type="application/json", **bearer(tenant_a.key))
    assert changed.json()["latest_version"] == 2
    # when
    pinned = start_run(client, tenant_a.key, agent["id"], version=1)
    latest = start_run(client, tenant_a.key, agent["id"])
    missing = post(client, "/v1/runs", {"agent_id": agent["id"], "input": "x", "version": 9}, tenant_a.key)
    # then
    assert (pinned["agent_version"], latest["agent_version"]) == (1, 2)
    assert missing.status_code == 404
    assert missing.json()["code"] == "agent_not_found"


def test_a_version_beyond_any_number_is_not_found_not_a_server_error(client, tenant_a):
    """A version larger than the database's integers is simply no version of the agent: 404, nothing started."""
    agent = create_agent(client, tenant_a.key)
    huge = 2 ** 40
    started = post(client, "/v1/runs", {"agent_id": agent["id"], "input": "x", "version": huge}, tenant_a.key)
    read = client.get(f"/v1/agents/{agent['id']}/versions/{huge}", **bearer(tenant_a.key))
    for response in (started, read):
        assert response.status_code == 404, response.content
        assert response.json()["code"] == "agent_not_found"
        assert f"has no version {huge} (latest: 1)" in response.json()["detail"]
    assert run_statuses(tenant_a) == []


def test_start_run_input_errors(client, tenant_a):
    # when
    invalid = post(client, "/v1/runs", {"agent_id": "nope", "values": [1], "version": 0}, tenant_a.key)
    unknown = post(client, "/v1/runs", {"agent_id": str(uuid.uuid4()), "input": "x"}, tenant_a.key)
    # then
    assert invalid.status_code == 400
    assert invalid.json()["code"] == "invalid"
    assert set(invalid.json()["errors"]) == {"agent_id", "input", "values", "version"}
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "agent_not_found"
    assert run_statuses(tenant_a) == []


def test_list_runs_filters_by_status_and_agent(client, tenant_a):
    # given
    first = create_agent(client, tenant_a.key, name="first")
    second = create_agent(client, tenant_a.key, name="second")
    old = start_run(client, tenant_a.key, first["id"])
    paused = start_run(client, tenant_a.key, first["id"])
    other = start_run(client, tenant_a.key, second["id"])
    assert post(client, f"/v1/runs/{paused['id']}/pause", {}, tenant_a.key).status_code == 200

    def ids(query: str) -> list[str]:
        response = client.get(f"/v1/runs{query}", **bearer(tenant_a.key))
        assert response.status_code == 200
        return [run["id"] for run in response.json()["results"]]

    # then: newest first
    assert ids("") == [other["id"], paused["id"], old["id"]]
    assert ids(f"?agent_id={first['id']}") == [paused["id"], old["id"]]
    assert ids("?status=paused") == [paused["id"]]
    assert ids(f"?status=queued&agent_id={first['id']}") == [old["id"]]
    assert ids(f"?parent_run_id={old['id']}") == []
    bad = client.get("/v1/runs?status=sleeping&agent_id=x", **bearer(tenant_a.key))
    assert bad.status_code == 400
    assert set(bad.json()["errors"]) == {"status", "agent_id"}


def test_pause_resume_cancel(client, tenant_a):
    # given
    run = start_run(client, tenant_a.key, create_agent(client, tenant_a.key)["id"])
    # when / then
    paused = post(client, f"/v1/runs/{run['id']}/pause", {}, tenant_a.key)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    resumed = post(client, f"/v1/runs/{run['id']}/resume", {}, tenant_a.key)
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    cancelled = post(client, f"/v1/runs/{run['id']}/cancel", {"reason": "no longer needed"}, tenant_a.key)
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["status_reason"]) == ("cancelled", "no longer needed")
    assert cancelled.json()["finished_at"] is not None
    assert run_statuses(tenant_a) == [("cancelled", "no longer needed")]


def test_cancel_without_a_reason_names_the_actor(client, tenant_a):
    key = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:write"])
    run = start_run(client, tenant_a.key, create_agent(client, tenant_a.key)["id"])
    response = post(client, f"/v1/runs/{run['id']}/cancel", {}, key.plaintext)
    assert response.json()["status_reason"] == f"cancelled by api_key:{key.id}"


def test_illegal_transitions_are_409_naming_the_status(client, tenant_a):
    # given
    run = start_run(client, tenant_a.key, create_agent(client, tenant_a.key)["id"])
    assert post(client, f"/v1/runs/{run['id']}/cancel", {"reason": "done"}, tenant_a.key).status_code == 200
    # when
    attempts = {action: post(client, f"/v1/runs/{run['id']}/{action}", {}, tenant_a.key)
                for action in ("cancel", "pause", "resume", "retry")}
    # then
    for action, response in attempts.items():
        assert response.status_code == 409, action
        assert response["Content-Type"] == "application/problem+json"
        assert response.json()["code"] == "illegal_transition"
        assert f"Run {run['id']} is cancelled" in response.json()["detail"]
    assert "only a failed run can be retried" in attempts["retry"].json()["detail"]
    assert run_statuses(tenant_a) == [("cancelled", "done")]


def test_retry_of_a_queued_run_is_409(client, tenant_a):
    run = start_run(client, tenant_a.key, create_agent(client, tenant_a.key)["id"])
    response = post(client, f"/v1/runs/{run['id']}/retry", {}, tenant_a.key)
    assert response.status_code == 409
    assert response.json()["detail"] == f"Run {run['id']} is queued; only a failed run can be retried."
    assert client.get(f"/v1/runs/{run['id']}/checkpoints", **bearer(tenant_a.key)).json()["count"] == 1


def test_resume_of_a_queued_run_is_409(client, tenant_a):
    run = start_run(client, tenant_a.key, create_agent(client, tenant_a.key)["id"])
    response = post(client, f"/v1/runs/{run['id']}/resume", {}, tenant_a.key)
    assert response.status_code == 409
    assert response.json()["detail"] == f"Run {run['id']} is queued; resume needs it to be paused."
    assert run_statuses(tenant_a) == [("queued", "")]


def test_unknown_run_is_404(client, tenant_a):
    missing = uuid.uuid4()
    for response in (client.get(f"/v1/runs/{missing}", **bearer(tenant_a.key)),
                     post(client, f"/v1/runs/{missing}/cancel", {}, tenant_a.key)):
        assert response.status_code == 404
        assert response.json()["code"] == "run_not_found"
        assert str(missing) in response.json()["detail"]


def test_events_are_read_after_a_sequence_number(client, tenant_a):
    # given
    run = start_run(client, tenant_a.key, create_agent(client, tenant_a.key)["id"])
    post(client, f"/v1/runs/{run['id']}/pause", {}, tenant_a.key)
    post(client, f"/v1/runs/{run['id']}/resume", {}, tenant_a.key)

    def events(query: str) -> dict:
        response = client.get(f"/v1/runs/{run['id']}/events{query}", **bearer(tenant_a.key))
        assert response.status_code == 200
        return response.json()

    # then
    every = events("")
    assert [(e["seq"], e["type"], e["data"]) for e in every["results"]] == [
        (1, "run.status", {"status": "queued"}), (2, "run.status", {"status": "paused"}),
        (3, "run.status", {"status": "queued"})]
    assert [e["seq"] for e in events("?after_seq=1")["results"]] == [2, 3]
    assert events("?after_seq=3")["results"] == []
    page = events("?after_seq=1&limit=1")
    assert (page["count"], [e["seq"] for e in page["results"]]) == (2, [2])
    assert page["next"] is not None
    bad = client.get(f"/v1/runs/{run['id']}/events?after_seq=-1", **bearer(tenant_a.key))
    assert bad.status_code == 400 and "after_seq" in bad.json()["errors"]


def test_pages_of_a_long_runs_events_are_its_log_cut_in_order(client, tenant_a):
    """The events API counts a run's events from its row and reads only the checkpoints a page needs: every page,
    from any point, is the run's log cut where it should be, whatever mix of commits and lone events made it."""
    from data_plane.models import Checkpoint, RunEvent
    from data_plane.runtime.core.messages import Message
    from data_plane.sealing import checkpoint_store

    # given: a run whose log is a lone event, then commits of 1 to 4 events each, a lone event among them
    run = start_run(client, tenant_a.key, create_agent(client, tenant_a.key)["id"])
    store = checkpoint_store(tenant_a.schema)
    with schema_context(tenant_a.schema):
        head = Checkpoint.objects.get(run_id=run["id"])
        state = store.load(head.id).state
    for step in range(1, 9):
        if step == 4:  # the API's requests leave the connection in the public schema
            post(client, f"/v1/runs/{run['id']}/pause", {}, tenant_a.key)
            post(client, f"/v1/runs/{run['id']}/resume", {}, tenant_a.key)
        with schema_context(tenant_a.schema):
            version = Run.objects.get(id=run["id"]).version
            after = state.evolve(messages=state.messages + (Message(role="assistant", content=f"step {step}"),))
            checkpoint = uuid.uuid4()
            store.commit(run_id=run["id"], expected_version=version, checkpoint_id=checkpoint, parent_id=head.id,
                         step=step, previous=state, state=after, run_status="queued",
                         events=[{"type": f"step{step}.{i}", "data": {"i": i}} for i in range(1 + step % 4)])
            head, state = Checkpoint.objects.get(id=checkpoint), after
    with schema_context(tenant_a.schema):
        log = [(e.seq, e.type) for e in RunEvent.objects.filter(run_id=run["id"]).order_by("seq")]
    assert [seq for seq, _ in log] == list(range(1, len(log) + 1)) and len(log) == 1 + 2 + sum(1 + s % 4 for s in
                                                                                              range(1, 9))

    def page(query: str) -> dict:
        response = client.get(f"/v1/runs/{run['id']}/events{query}", **bearer(tenant_a.key))
        assert response.status_code == 200, response.json()
        return response.json()

    # then: every window of every size is the log's, with its count and links
    for after_seq in (0, 2, 7):
        for limit in (1, 3, 50):
            for offset in range(0, len(log) - after_seq + 2):
                body = page(f"?after_seq={after_seq}&limit={limit}&offset={offset}")
                expected = log[after_seq + offset:after_seq + offset + limit]
                assert [(e["seq"], e["type"]) for e in body["results"]] == expected, (after_seq, limit, offset)
                assert body["count"] == len(log) - after_seq
                assert (body["next"] is not None) == (offset + limit < len(log) - after_seq)


def test_run_scopes_are_enforced(client, tenant_a):
    # given
    agent = create_agent(client, tenant_a.key)
    run = start_run(client, tenant_a.key, agent["id"])
    reader = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:read", "agents:read"])
    outsider = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["agents:read"])
    # when
    refused = [
        (post(client, "/v1/runs", {"agent_id": agent["id"], "input": "x"}, reader.plaintext), "runs:write"),
        *((post(client, f"/v1/runs/{run['id']}/{action}", {}, reader.plaintext), "runs:write")
          for action in ("pause", "resume", "cancel", "retry")),
        (client.get("/v1/runs", **bearer(outsider.plaintext)), "runs:read"),
        (client.get(f"/v1/runs/{run['id']}/events", **bearer(outsider.plaintext)), "runs:read"),
    ]
    # then
    for response, scope in refused:
        assert response.status_code == 403
        assert response.json()["code"] == "missing_scope"
        assert repr(scope) in response.json()["detail"]
    assert client.get(f"/v1/runs/{run['id']}", **bearer(reader.plaintext)).status_code == 200
    assert run_statuses(tenant_a) == [("queued", "")]
