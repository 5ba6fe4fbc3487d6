"""Time travel over the API: read a checkpoint's full state, fork it with changes, replay it."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, bearer
from data_plane import selectors, services
from data_plane.errors import CheckpointNotFound
from data_plane.models import Checkpoint, EffectRecord, Run
from data_plane.runtime.adapters.checkpoints import CheckpointNotFound as StoredCheckpointNotFound
from data_plane.sealing import checkpoint_store
from data_plane.runtime.core.messages import Message
from tenants.tests.factories import ApiKeyFactory

SPEC = {"instructions": "Be exact.", "models": ["openai/gpt-4o-mini"]}


def post(client, path, body, key):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def message(role: str, content: str) -> dict:
    return {"role": role, "content": content, "tool_calls": [], "tool_call_id": None, "name": None, "attachments": []}


def started_run(client, key) -> tuple[dict, str]:
    """A queued run with values {"topic": "math"}, and its step-0 checkpoint's id."""
    agent = post(client, "/v1/agents", {"name": "calc", "spec": SPEC}, key).json()
    run = post(client, "/v1/runs", {"agent_id": agent["id"], "input": "What is 6*7?", "values": {"topic": "math"}},
               key).json()
    return run, run["head_checkpoint_id"]


def state_of(client, key, run_id) -> tuple[dict, dict]:
    """The run's only checkpoint and the state it holds."""
    checkpoints = client.get(f"/v1/runs/{run_id}/checkpoints", **bearer(key)).json()["results"]
    assert len(checkpoints) == 1
    detail = client.get(f"/v1/runs/{run_id}/checkpoints/{checkpoints[0]['id']}", **bearer(key)).json()
    return checkpoints[0], detail["state"]


def test_fork_with_a_values_patch_is_a_new_run_based_on_the_source(client, tenant_a):
    # given
    source, checkpoint_id = started_run(client, tenant_a.key)
    # when
    response = post(client, f"/v1/runs/{source['id']}/checkpoints/{checkpoint_id}/fork",
                    {"values": {"topic": "physics", "depth": 2}}, tenant_a.key)
    # then
    assert response.status_code == 201
    fork = response.json()
    assert fork["id"] != source["id"]
    assert {k: fork[k] for k in ("status", "base_run_id", "source_checkpoint_id", "step", "reexecute", "input",
                                 "agent_id", "agent_version")} == {
        "status": "queued", "base_run_id": source["id"], "source_checkpoint_id": checkpoint_id, "step": 0,
        "reexecute": False, "input": "What is 6*7?", "agent_id": source["agent_id"], "agent_version": 1}
    fork_checkpoint, fork_state = state_of(client, tenant_a.key, fork["id"])
    assert fork_checkpoint["parent_id"] == checkpoint_id
    assert fork_state["values"] == {"topic": "physics", "depth": 2}
    assert fork_state["messages"] == [message("user", "What is 6*7?")]
    # and the source is untouched
    _, source_state = state_of(client, tenant_a.key, source["id"])
    assert source_state["values"] == {"topic": "math"}
    assert client.get(f"/v1/runs/{source['id']}", **bearer(tenant_a.key)).json() == source


def test_fork_appends_messages(client, tenant_a):
    # given
    source, checkpoint_id = started_run(client, tenant_a.key)
    # when
    response = post(client, f"/v1/runs/{source['id']}/checkpoints/{checkpoint_id}/fork",
                    {"messages": [{"role": "user", "content": "Show your work."}], "reexecute": True}, tenant_a.key)
    # then
    assert response.status_code == 201
    assert response.json()["reexecute"] is True
    _, fork_state = state_of(client, tenant_a.key, response.json()["id"])
    assert fork_state["messages"] == [message("user", "What is 6*7?"), message("user", "Show your work.")]
    assert fork_state["values"] == {"topic": "math"}
    _, source_state = state_of(client, tenant_a.key, source["id"])
    assert source_state["messages"] == [message("user", "What is 6*7?")]


def test_replay_is_a_new_run_with_the_same_state(client, tenant_a):
    # given
    source, checkpoint_id = started_run(client, tenant_a.key)
    _, source_state = state_of(client, tenant_a.key, source["id"])
    # when
    default = post(client, f"/v1/runs/{source['id']}/checkpoints/{checkpoint_id}/replay", {}, tenant_a.key)
    reexecuted = post(client, f"/v1/runs/{source['id']}/checkpoints/{checkpoint_id}/replay", {"reexecute": True},
                      tenant_a.key)
    # then
    for response, reexecute in ((default, False), (reexecuted, True)):
        assert response.status_code == 201
        replay = response.json()
        assert (replay["base_run_id"], replay["source_checkpoint_id"], replay["reexecute"], replay["status"]) == (
            source["id"], checkpoint_id, reexecute, "queued")
        assert state_of(client, tenant_a.key, replay["id"])[1] == source_state
    with schema_context(tenant_a.schema):
        assert Run.objects.filter(base_run_id=source["id"]).count() == 2


def test_fork_input_errors_create_nothing(client, tenant_a):
    # given
    source, checkpoint_id = started_run(client, tenant_a.key)
    # when
    response = post(client, f"/v1/runs/{source['id']}/checkpoints/{checkpoint_id}/fork",
                    {"values": "x", "messages": [{"role": "tool", "content": "x"}], "reexecute": "sometimes"},
                    tenant_a.key)
    # then
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"values", "messages", "reexecute"}
    assert response.json()["errors"]["messages"] == {"0": {"role": ['"tool" is not a valid choice.']}}
    with schema_context(tenant_a.schema):
        assert Run.objects.count() == 1


def test_a_checkpoint_of_another_run_is_404(client, tenant_a):
    # given
    first, first_checkpoint = started_run(client, tenant_a.key)
    second = post(client, "/v1/runs", {"agent_id": first["agent_id"], "input": "again"}, tenant_a.key).json()
    # when
    read = client.get(f"/v1/runs/{second['id']}/checkpoints/{first_checkpoint}", **bearer(tenant_a.key))
    forked = post(client, f"/v1/runs/{second['id']}/checkpoints/{first_checkpoint}/fork", {}, tenant_a.key)
    missing = client.get(f"/v1/runs/{uuid.uuid4()}/checkpoints", **bearer(tenant_a.key))
    # then
    for response in (read, forked):
        assert response.status_code == 404
        assert response.json()["code"] == "checkpoint_not_found"
        assert f"Checkpoint {first_checkpoint} of run {second['id']} not found" in response.json()["detail"]
    assert missing.status_code == 404 and missing.json()["code"] == "run_not_found"
    with schema_context(tenant_a.schema):
        assert Run.objects.count() == 2


def test_forking_needs_runs_write(client, tenant_a):
    # given
    source, checkpoint_id = started_run(client, tenant_a.key)
    reader = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:read"])
    # when
    forked = post(client, f"/v1/runs/{source['id']}/checkpoints/{checkpoint_id}/fork", {}, reader.plaintext)
    replayed = post(client, f"/v1/runs/{source['id']}/checkpoints/{checkpoint_id}/replay", {}, reader.plaintext)
    # then
    for response in (forked, replayed):
        assert response.status_code == 403
        assert "'runs:write'" in response.json()["detail"]
    assert client.get(f"/v1/runs/{source['id']}/checkpoints/{checkpoint_id}",
                      **bearer(reader.plaintext)).status_code == 200
    with schema_context(tenant_a.schema):
        assert Run.objects.count() == 1


def test_retention_prunes_old_checkpoints_but_keeps_every_head_and_every_state_whole(tenant_a):
    # given: a run of two steps (its first checkpoint no longer its head), a fork of its first checkpoint, a
    # checkpoint that changed nothing and one that holds only a model call's journal entry; all 8 days old (the
    # standard tier keeps 7 days), but one recent checkpoint
    with schema_context(tenant_a.schema):
        agent = services.agent_create(tenant=tenant_a.tenant, name="old", description="", actor=TEST_ACTOR, spec=SPEC)
        run = services.run_start(tenant=tenant_a.tenant, agent_id=agent.id, input="hi", actor=TEST_ACTOR)
        first = Checkpoint.objects.get(run=run)
        fork = services.run_fork(tenant=tenant_a.tenant, run_id=run.id, checkpoint_id=first.id, actor=TEST_ACTOR,
                                 append_messages=[Message(role="user", content="more")])
        store = checkpoint_store(tenant_a.schema)
        started = store.load(first.id).state
        run.refresh_from_db()
        second = uuid.uuid4()
        store.commit(run_id=run.id, expected_version=run.version, checkpoint_id=second, parent_id=first.id, step=1,
                     previous=started, run_status="running", state=started.evolve(
                         messages=started.messages + (Message(role="assistant", content="second"),)))
        unchanged = Checkpoint.objects.create(run=run, parent=first, step=2, control=first.control)
        call = {"step": 3, "key": "llm", "kind": "model", "idempotency_key": f"{run.id}:3:llm", "digest": "d",
                "name": "openai/x", "request": {}, "result": {"message": {"content": "paid for"}},
                "status": "succeeded", "latency_ms": 5.0, "input_tokens": 3, "output_tokens": 2, "cost_usd": 0.01,
                "ago": 0.0}
        journalled = Checkpoint.objects.create(run=run, parent=first, step=4, control=first.control,
                                               effects=json.dumps([call]), effect_ids=[10 ** 12])
        Checkpoint.objects.all().update(created_at=timezone.now() - timedelta(days=8))
        recent = Checkpoint.objects.create(run=run, parent=first, step=3, control=first.control)
        # when
        pruned = services.checkpoints_prune(tenant=tenant_a.tenant)
        # then: the old checkpoints that are no run's head are pruned: the one that changed nothing is gone, the
        # first keeps its row (its message is part of later states) but can no longer be read or listed, and so
        # does the one whose row is the journal of a model call (usage, and reuse on a replay, read it)
        fork_head = Run.objects.get(id=fork.id).head_id
        assert pruned == 3
        assert not Checkpoint.objects.filter(id=unchanged.id).exists()
        assert Checkpoint.objects.get(id=first.id).control is None
        assert Checkpoint.objects.get(id=journalled.id).control is None
        assert EffectRecord.objects.get(id=10 ** 12).result == {"message": {"content": "paid for"}}
        listed = [c.id for c in selectors.checkpoint_list(tenant_schema=tenant_a.schema, run_id=run.id)]
        assert listed == [second, recent.id]
        with pytest.raises(CheckpointNotFound):
            selectors.checkpoint_get(tenant_schema=tenant_a.schema, run_id=run.id, checkpoint_id=first.id)
        with pytest.raises(StoredCheckpointNotFound):
            store.load(first.id)
        # and the head and the fork still read their whole past
        head = selectors.checkpoint_state(tenant_schema=tenant_a.schema, run_id=run.id, checkpoint_id=second)
        forked = selectors.checkpoint_state(tenant_schema=tenant_a.schema, run_id=fork.id, checkpoint_id=fork_head)
    assert [m.content for m in head.messages] == ["hi", "second"]
    assert [m.content for m in forked.messages] == ["hi", "more"]
    # a second pass prunes nothing more
    with schema_context(tenant_a.schema):
        assert services.checkpoints_prune(tenant=tenant_a.tenant) == 0
