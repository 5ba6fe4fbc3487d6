"""The attachments API: multipart upload, metadata, content, delete; runs and messages that carry them;
scopes and the problem documents of bad input."""

from __future__ import annotations

import hashlib
import json
import uuid

from django_tenants.utils import schema_context

from conftest import bearer
from data_plane.models import Attachment, Run
from data_plane.tests import media_files
from tenants.tests.factories import ApiKeyFactory

VISION_SPEC = {"instructions": "", "models": ["openai/vision-a"]}
TEXT_SPEC = {"instructions": "", "models": ["openai/text-only"]}


def upload(client, key, data: bytes, content_type: str = "image/png", name: str = "pic.png", **fields):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post("/v1/attachments", {"file": SimpleUploadedFile(name, data, content_type=content_type),
                                           **fields}, **bearer(key))


def post(client, path, body, key):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def agent(client, key, spec, name="looker") -> str:
    response = post(client, "/v1/agents", {"name": name, "spec": spec}, key)
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def test_upload_read_download_list_and_delete(client, tenant_a):
    png = media_files.png()
    # when
    created = upload(client, tenant_a.key, png, name="red dot.png")
    # then
    assert created.status_code == 201, created.json()
    body = created.json()
    assert {k: v for k, v in body.items() if k not in ("id", "created_at", "created_by")} == {
        "media_type": "image/png", "kind": "image", "size_bytes": len(png), "sha256": hashlib.sha256(png).hexdigest(),
        "filename": "red dot.png", "run_id": None, "transcript": "",
        "content_url": f"/v1/attachments/{body['id']}/content"}
    assert body["created_by"].startswith("api_key:")
    assert client.get(f"/v1/attachments/{body['id']}", **bearer(tenant_a.key)).json() == body
    content = client.get(body["content_url"], HTTP_ACCEPT="image/*", **bearer(tenant_a.key))
    assert content.status_code == 200
    assert b"".join(content.streaming_content) == png
    assert (content["Content-Type"], content["X-Content-Type-Options"], content["ETag"]) == (
        "image/png", "nosniff", f'"{body["sha256"]}"')
    assert content["Content-Disposition"] == 'attachment; filename="red dot.png"'
    listed = client.get("/v1/attachments", **bearer(tenant_a.key)).json()
    assert [item["id"] for item in listed["results"]] == [body["id"]]
    # when
    deleted = client.delete(f"/v1/attachments/{body['id']}", **bearer(tenant_a.key))
    # then
    assert deleted.status_code == 204
    for path in (f"/v1/attachments/{body['id']}", body["content_url"]):
        gone = client.get(path, **bearer(tenant_a.key))
        assert (gone.status_code, gone.json()["code"]) == (404, "attachment_not_found")


def test_bad_uploads_are_problem_documents_that_say_what_to_fix(client, tenant_a, settings):
    settings.ATTACHMENT_MAX_IMAGE_BYTES = 100
    # when
    mismatch = upload(client, tenant_a.key, media_files.JPEG, content_type="image/png")
    unsupported = upload(client, tenant_a.key, media_files.PDF, content_type="application/pdf", name="a.pdf")
    too_large = upload(client, tenant_a.key, media_files.png(width=30, height=30, rgb=(1, 2, 3)) + b"\x01" * 200)
    no_file = client.post("/v1/attachments", {"media_type": "image/png"}, **bearer(tenant_a.key))
    as_json = post(client, "/v1/attachments", {"file": "aGk="}, tenant_a.key)
    # then
    assert (mismatch.status_code, mismatch.json()["code"], mismatch.json()["detected"]) == (
        415, "attachment_type_mismatch", "image/jpeg")
    assert mismatch["Content-Type"] == "application/problem+json"
    assert (unsupported.status_code, unsupported.json()["code"]) == (415, "attachment_type_unsupported")
    assert (too_large.status_code, too_large.json()["code"], too_large.json()["max_bytes"]) == (
        413, "attachment_too_large", 100)
    assert (no_file.status_code, no_file.json()["code"], list(no_file.json()["errors"])) == (400, "invalid", ["file"])
    assert (as_json.status_code, as_json.json()["code"]) == (415, "unsupported_media_type")
    with schema_context(tenant_a.schema):
        assert not Attachment.objects.exists()


def test_an_upload_larger_than_any_attachment_is_refused_before_it_is_read(client, tenant_a, settings):
    settings.ATTACHMENT_MAX_IMAGE_BYTES = settings.ATTACHMENT_MAX_AUDIO_BYTES = 10
    response = upload(client, tenant_a.key, media_files.wav(milliseconds=10_000), content_type="audio/wav")
    assert (response.status_code, response.json()["code"]) == (413, "attachment_too_large")
    assert "attachments may be at most 10 bytes (images) or 10 bytes (audio)" in response.json()["detail"]


def test_scopes(client, tenant_a):
    reader = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:read"])
    refused = upload(client, reader.plaintext, media_files.png())
    assert (refused.status_code, refused.json()["code"]) == (403, "missing_scope")
    assert client.get("/v1/attachments", **bearer(reader.plaintext)).status_code == 200
    assert client.get("/v1/attachments").status_code == 401


def test_runs_and_messages_take_attachment_ids(client, tenant_a):
    # given
    image = upload(client, tenant_a.key, media_files.png()).json()
    audio = upload(client, tenant_a.key, media_files.wav(), content_type="audio/wav", name="v.wav").json()
    vision = agent(client, tenant_a.key, VISION_SPEC)
    # when
    started = post(client, "/v1/runs", {"agent_id": vision, "input": "", "attachments": [image["id"], audio["id"]]},
                   tenant_a.key)
    # then
    assert started.status_code == 202, started.json()
    run = started.json()
    assert run["input_attachments"] == [{"id": image["id"], "media_type": "image/png"},
                                        {"id": audio["id"], "media_type": "audio/wav"}]
    state = client.get(f"/v1/runs/{run['id']}/checkpoints/{run['head_checkpoint_id']}", **bearer(tenant_a.key))
    assert state.json()["state"]["messages"][0]["attachments"] == run["input_attachments"]
    assert client.get(f"/v1/attachments?run_id={run['id']}", **bearer(tenant_a.key)).json()["count"] == 2
    assert client.get(f"/v1/attachments/{image['id']}", **bearer(tenant_a.key)).json()["run_id"] == run["id"]
    # and a message to a run that is not completed is refused as before, attachments or not
    message = post(client, f"/v1/runs/{run['id']}/messages", {"text": "", "attachments": [image["id"]]},
                   tenant_a.key)
    assert (message.status_code, message.json()["code"]) == (409, "illegal_transition")


def test_runs_refuse_unknown_other_tenants_and_unsuitable_attachments(client, tenant_a, tenant_b):
    # given
    mine = upload(client, tenant_a.key, media_files.png()).json()
    theirs = upload(client, tenant_b.key, media_files.png()).json()
    text_only = agent(client, tenant_a.key, TEXT_SPEC, name="texter")
    vision = agent(client, tenant_a.key, VISION_SPEC)
    unknown = str(uuid.uuid4())
    # when
    not_mine = post(client, "/v1/runs", {"agent_id": vision, "input": "x", "attachments": [theirs["id"]]},
                    tenant_a.key)
    missing = post(client, "/v1/runs", {"agent_id": vision, "input": "x", "attachments": [unknown]}, tenant_a.key)
    unsuitable = post(client, "/v1/runs", {"agent_id": text_only, "input": "x", "attachments": [mine["id"]]},
                      tenant_a.key)
    empty = post(client, "/v1/runs", {"agent_id": vision, "input": " "}, tenant_a.key)
    malformed = post(client, "/v1/runs", {"agent_id": vision, "input": "x", "attachments": ["nope"]}, tenant_a.key)
    # then: another tenant's id reads exactly as an unknown one
    assert (not_mine.status_code, not_mine.json()["code"]) == (404, "attachment_not_found")
    assert not_mine.json()["detail"].replace(theirs["id"], "ID") == missing.json()["detail"].replace(unknown, "ID")
    assert (unsuitable.status_code, unsuitable.json()["code"]) == (400, "attachment_not_supported_by_model")
    assert unsuitable.json()["errors"]["attachments"] == [
        f"model openai/text-only does not take images (attachment {mine['id']}, image/png); use a vision model in "
        "the agent's policy, or leave the image out"]
    assert (empty.status_code, empty.json()["errors"]) == (400, {"input": [
        "This field may be blank only when attachments are sent."]})
    assert (malformed.status_code, list(malformed.json()["errors"])) == (400, ["attachments"])
    with schema_context(tenant_a.schema):
        assert not Run.objects.exists()


def test_the_schema_documents_every_media_type_the_content_is_served_as(client, db):
    # the content is served with the attachment's own media type (found by the API fuzzer: the schema said
    # application/octet-stream only, so clients generated from it refused a PNG)
    from data_plane.runtime.core.media import SUPPORTED_TYPES

    # when
    schema = client.get("/v1/openapi.json").json()
    # then
    content = schema["paths"]["/v1/attachments/{attachment_id}/content"]["get"]["responses"]["200"]["content"]
    assert sorted(content) == sorted(SUPPORTED_TYPES)
    assert "image/png" in content and "audio/wav" in content
