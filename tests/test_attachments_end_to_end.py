"""An image and a voice note, uploaded through the API, reach the model through a real Celery worker: the
model server (over HTTP, through litellm) sees the image part, and hears the audio as a transcript because
the agent's model takes images but not audio."""

from __future__ import annotations

import hashlib
import json
import uuid

import httpx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django_tenants.utils import schema_context

from conftest import bearer, destroy_tenant, provision_for_test
from data_plane.models import Attachment, EffectRecord, Run
from data_plane.tests import media_files
from tests.processes import wait_for

pytestmark = pytest.mark.worker


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("e2e-media")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def admin(model_server: str, path: str) -> str:
    return model_server.removesuffix("/v1") + path


def upload(client, key: str, name: str, data: bytes, content_type: str) -> dict:
    response = client.post("/v1/attachments", {"file": SimpleUploadedFile(name, data, content_type=content_type)},
                           **bearer(key))
    assert response.status_code == 201, response.content
    return response.json()


def test_an_image_and_a_voice_note_reach_a_vision_model_through_a_worker(worker_process, model_server, tenant,
                                                                         client):
    # given: a vision model (openai/vision-*, see the test settings) that says what it was given, twice
    scenario = f"vision-e2e-{uuid.uuid4().hex[:8]}"
    httpx.post(admin(model_server, "/admin/scenarios"), timeout=10, json={"name": scenario, "turns": [
        {"content": "Images: {{images}} ({{image_types}}). Audio clips: {{audio}}. Heard: {{last_user}}"},
        {"content": "Still {{images}} image and {{audio}} audio clips."}]}).raise_for_status()
    voice = media_files.wav(milliseconds=120, level=7)
    httpx.post(admin(model_server, "/admin/transcripts"), timeout=10, json={
        "sha256": hashlib.sha256(voice).hexdigest(), "text": "turn on the lights"}).raise_for_status()
    transcriptions_before = httpx.get(admin(model_server, "/admin/stats"), timeout=10).json()["transcriptions"]
    image = upload(client, tenant.key, "dot.png", media_files.png(), "image/png")
    audio = upload(client, tenant.key, "note.wav", voice, "audio/wav")
    created = client.post("/v1/agents", json.dumps({"name": "looker", "spec": {
        "instructions": "Describe what you get.", "models": [f"openai/{scenario}"],
        "graph": {"entry": "look", "nodes": [{"id": "look", "kind": "llm", "next": "again"},
                                             {"id": "again", "kind": "llm", "next": "end"},
                                             {"id": "end", "kind": "end"}]}}}),
        content_type="application/json", **bearer(tenant.key))
    assert created.status_code == 201, created.content
    # when
    started = client.post("/v1/runs", json.dumps({"agent_id": created.json()["id"], "input": "What is this?",
                                                  "attachments": [image["id"], audio["id"]]}),
                          content_type="application/json", **bearer(tenant.key))
    assert started.status_code == 202, started.content
    run_id = started.json()["id"]
    done = wait_for(lambda: _finished(tenant.schema, run_id), timeout=60, what="the run to finish")
    # then: the model saw the image part, and the audio as its transcript (a text-only model for audio)
    assert done.status == "completed", done.error
    assert done.output == "Still 1 image and 0 audio clips."
    state = client.get(f"/v1/runs/{run_id}/checkpoints/{done.head_id}", **bearer(tenant.key)).json()["state"]
    first_reply = state["messages"][1]
    assert first_reply["role"] == "assistant"
    assert first_reply["content"] == (f"Images: 1 (image/png). Audio clips: 0. Heard: What is this?[transcript of "
                                      f"audio attachment {audio['id']}] turn on the lights")
    assert state["messages"][0]["attachments"] == [{"id": image["id"], "media_type": "image/png"},
                                                   {"id": audio["id"], "media_type": "audio/wav"}]
    # and the audio was transcribed once, for both model calls, and kept on the attachment
    stats = httpx.get(admin(model_server, "/admin/stats"), timeout=10).json()
    assert stats["transcriptions"] - transcriptions_before == 1
    assert stats["requests_per_scenario"][scenario] == 2
    with schema_context(tenant.schema):
        kept = Attachment.objects.get(id=audio["id"])
        assert (kept.transcript, kept.transcript_model, str(kept.run_id)) == (
            "turn on the lights", "openai/whisper-1", run_id)
        assert EffectRecord.objects.filter(run_id=run_id, kind="model", status="succeeded").count() == 2
    assert client.get(f"/v1/attachments/{audio['id']}", **bearer(tenant.key)).json()["transcript"] == \
        "turn on the lights"


def _finished(schema: str, run_id: str) -> Run | None:
    with schema_context(schema):
        run = Run.objects.get(id=run_id)
    return run if run.status in ("completed", "failed", "cancelled") else None
