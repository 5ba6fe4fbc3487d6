"""Attachment services: upload (type from the bytes, size per kind), delete, and runs and messages that carry
them, against the real database and a storage folder of the test's own."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR
from control_plane.audit.models import AuditEvent
from data_plane import services
from data_plane.attachment_storage import LocalFolderStorage
from data_plane.errors import AttachmentInvalid, AttachmentNotFound, AttachmentNotSupportedByModel, \
    AttachmentTooLarge, AttachmentTypeMismatch, AttachmentTypeUnsupported, IllegalTransition
from data_plane.models import Attachment, Run
from data_plane.runtime.adapters.checkpoints import PostgresCheckpointStore
from data_plane.runtime.adapters.media import Capabilities
from data_plane.runtime.core.media import AttachmentLimits
from data_plane.runtime.core.messages import AttachmentPart, Message
from data_plane.runtime.core.spec import spec_from_json
from data_plane.runtime.core.state import Status
from data_plane.services.attachments import message_attachments
from data_plane.tests import media_files

LIMITS = AttachmentLimits(max_image_bytes=1000, max_audio_bytes=4000)
VISION_SPEC = {"instructions": "", "models": ["openai/vision-a"]}
TEXT_SPEC = {"instructions": "", "models": ["openai/vision-a", "openai/text-only"]}


@pytest.fixture
def storage(tmp_path: Path) -> LocalFolderStorage:
    return LocalFolderStorage(tmp_path / "attachments")


def upload(tenant, storage, data: bytes, media_type: str = "", filename: str = "file") -> Attachment:
    return services.attachment_upload(tenant=tenant.tenant, actor=TEST_ACTOR, stream=io.BytesIO(data),
                                      filename=filename, declared_media_type=media_type, storage=storage,
                                      limits=LIMITS)


def stored_files(storage: LocalFolderStorage) -> list[Path]:
    return sorted(path for path in storage.root.rglob("*") if path.is_file())


def test_upload_stores_the_bytes_under_a_key_of_the_tenant_and_records_it(tenant_a, storage):
    # given
    png = media_files.png()
    with schema_context(tenant_a.schema):
        # when
        attachment = upload(tenant_a, storage, png, "image/png", filename="../../etc/passwd\x00.png")
        # then
        row = Attachment.objects.get(id=attachment.id)
        audited = AuditEvent.objects.get(action="attachment.upload")
    assert (row.media_type, row.size_bytes, row.sha256, row.filename, row.created_by, row.run_id) == (
        "image/png", len(png), hashlib.sha256(png).hexdigest(), "passwd.png", "system:tests", None)
    assert row.storage_key == f"{tenant_a.schema}/{attachment.id.hex[:2]}/{attachment.id.hex}"
    assert (storage.root / row.storage_key).read_bytes() == png
    assert (audited.target_id, audited.data) == (str(attachment.id), {
        "media_type": "image/png", "size_bytes": len(png), "sha256": row.sha256})


@pytest.mark.parametrize(("declared", "data", "expected"), [
    ("", media_files.wav(), "audio/wav"),
    ("application/octet-stream", media_files.GIF, "image/gif"),
    ("image/jpg", media_files.JPEG, "image/jpeg"),
    ("audio/x-wav", media_files.wav(), "audio/wav"),
    ("audio/opus", media_files.OGG, "audio/ogg"),
])
def test_the_type_is_what_the_bytes_show_when_the_declared_one_agrees(tenant_a, storage, declared, data, expected):
    with schema_context(tenant_a.schema):
        assert upload(tenant_a, storage, data, declared).media_type == expected


@pytest.mark.parametrize(("declared", "data", "error", "message"), [
    ("image/png", media_files.JPEG, AttachmentTypeMismatch,
     "The file was declared image/png but its content is image/jpeg; declare image/jpeg (or nothing), or send "
     "the file you meant."),
    ("application/pdf", media_files.PDF, AttachmentTypeUnsupported,
     "Type 'application/pdf' is not taken; attach one of image/png, image/jpeg, image/gif, image/webp, "
     "audio/wav, audio/mpeg, audio/ogg, audio/flac, audio/webm."),
    ("", media_files.PDF, AttachmentTypeUnsupported,
     "The file's content is none of the types taken (image/png, image/jpeg, image/gif, image/webp, audio/wav, "
     "audio/mpeg, audio/ogg, audio/flac, audio/webm); check that it is an image or audio file, not a renamed "
     "document."),
    ("image/png", b"", AttachmentInvalid, "The file is empty; attach an image or an audio clip."),
    ("image/png", media_files.png(width=40, height=40, rgb=(1, 2, 3)) + b"\x00" * 1000, AttachmentTooLarge,
     None),
    ("audio/wav", media_files.wav(milliseconds=1000), AttachmentTooLarge,
     "The audio is more than 4000 bytes; audio attachments may be at most 4000 bytes. Send a smaller or more "
     "compressed file."),
])
def test_a_refused_upload_says_what_to_fix_and_leaves_nothing(tenant_a, storage, declared, data, error, message):
    with schema_context(tenant_a.schema):
        # when
        with pytest.raises(error) as raised:
            upload(tenant_a, storage, data, declared)
        # then
        assert not Attachment.objects.exists() and not AuditEvent.objects.filter(action="attachment.upload").exists()
    assert stored_files(storage) == []
    if message is not None:
        assert raised.value.message == message
    else:
        assert raised.value.message.startswith("The image is ") and "image attachments may be at most 1000" in \
            raised.value.message
    assert raised.value.http_status == {AttachmentTypeMismatch: 415, AttachmentTypeUnsupported: 415,
                                        AttachmentInvalid: 400, AttachmentTooLarge: 413}[error]


def test_delete_removes_the_row_and_the_bytes_after_commit(tenant_a, storage, django_capture_on_commit_callbacks):
    with schema_context(tenant_a.schema):
        attachment = upload(tenant_a, storage, media_files.png(), "image/png")
        # when
        with django_capture_on_commit_callbacks(execute=True):
            services.attachment_delete(tenant=tenant_a.tenant, attachment_id=attachment.id, actor=TEST_ACTOR,
                                       storage=storage)
        # then
        assert not Attachment.objects.exists()
        assert AuditEvent.objects.get(action="attachment.delete").target_id == str(attachment.id)
        with pytest.raises(AttachmentNotFound):
            services.attachment_delete(tenant=tenant_a.tenant, attachment_id=attachment.id, actor=TEST_ACTOR,
                                       storage=storage)
    assert stored_files(storage) == []


def _agent(tenant, spec, name="looker"):
    return services.agent_create(tenant=tenant.tenant, name=name, description="", spec=spec, actor=TEST_ACTOR)


def test_a_run_starts_with_its_attachments_as_parts_of_the_first_message(tenant_a, storage):
    with schema_context(tenant_a.schema):
        # given
        image = upload(tenant_a, storage, media_files.png(), "image/png")
        audio = upload(tenant_a, storage, media_files.wav(), "audio/wav")
        agent = _agent(tenant_a, VISION_SPEC)
        # when
        run = services.run_start(tenant=tenant_a.tenant, agent_id=agent.id, input="What is this?", actor=TEST_ACTOR,
                                 attachments=[image.id, audio.id, image.id])
        # then
        head = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection).load(run.head_id)
        parts = (AttachmentPart(id=str(image.id), media_type="image/png"),
                 AttachmentPart(id=str(audio.id), media_type="audio/wav"))
        assert head.state.messages == (Message(role="user", content="What is this?", attachments=parts),)
        assert run.input_attachments == [part.to_json() for part in parts]
        assert set(Attachment.objects.values_list("run_id", flat=True)) == {run.id}
        assert AuditEvent.objects.get(action="run.start").data["attachments"] == [str(image.id), str(audio.id)]


def test_a_run_is_refused_for_an_unknown_attachment_or_one_a_model_cannot_take(tenant_a, storage):
    with schema_context(tenant_a.schema):
        # given
        image = upload(tenant_a, storage, media_files.png(), "image/png")
        vision, mixed = _agent(tenant_a, VISION_SPEC, "vision"), _agent(tenant_a, TEXT_SPEC, "mixed")
        unknown = uuid.uuid4()
        # when
        with pytest.raises(AttachmentNotFound) as missing:
            services.run_start(tenant=tenant_a.tenant, agent_id=vision.id, input="x", actor=TEST_ACTOR,
                               attachments=[image.id, unknown])
        with pytest.raises(AttachmentNotSupportedByModel) as refused:
            services.run_start(tenant=tenant_a.tenant, agent_id=mixed.id, input="x", actor=TEST_ACTOR,
                               attachments=[image.id])
        # then
        assert not Run.objects.exists()
        assert Attachment.objects.get(id=image.id).run_id is None
    assert missing.value.message == (f"Attachment {unknown} not found; upload files with POST /v1/attachments and "
                                     "send the ids it returns.")
    assert refused.value.http_status == 400
    assert refused.value.message == (
        f"Agent 'mixed' cannot take these attachments: model openai/text-only does not take images (attachment "
        f"{image.id}, image/png); use a vision model in the agent's policy, or leave the image out.")


def test_another_tenants_attachment_is_not_found(tenant_a, tenant_b, storage):
    with schema_context(tenant_a.schema):
        image = upload(tenant_a, storage, media_files.png(), "image/png")
    with schema_context(tenant_b.schema):
        agent = _agent(tenant_b, VISION_SPEC)
        with pytest.raises(AttachmentNotFound) as raised:
            services.run_start(tenant=tenant_b.tenant, agent_id=agent.id, input="x", actor=TEST_ACTOR,
                               attachments=[image.id])
        assert not Run.objects.exists()
    assert raised.value.message.startswith(f"Attachment {image.id} not found")


def test_audio_is_accepted_for_a_text_only_model_when_it_can_be_transcribed(tenant_a, storage):
    with schema_context(tenant_a.schema):
        audio = upload(tenant_a, storage, media_files.wav(), "audio/wav")
        spec = services.agent_create(tenant=tenant_a.tenant, name="t", description="", actor=TEST_ACTOR,
                                     spec={"instructions": "", "models": ["openai/text-only"]})
        parsed = spec_from_json(spec.versions.get().spec)
        transcribing = Capabilities(transcription_model="openai/whisper-1")
        assert message_attachments(tenant_schema=tenant_a.schema, attachment_ids=[audio.id], spec=parsed,
                                   agent_name="t", capabilities=transcribing) == (
            AttachmentPart(id=str(audio.id), media_type="audio/wav"),)
        with pytest.raises(AttachmentNotSupportedByModel, match="no transcription model is configured"):
            message_attachments(tenant_schema=tenant_a.schema, attachment_ids=[audio.id], spec=parsed,
                                agent_name="t", capabilities=Capabilities())


def test_a_message_carries_attachments_into_a_completed_run(tenant_a, storage):
    with schema_context(tenant_a.schema):
        # given: a completed run
        agent = _agent(tenant_a, VISION_SPEC)
        run = services.run_start(tenant=tenant_a.tenant, agent_id=agent.id, input="hi", actor=TEST_ACTOR)
        store = PostgresCheckpointStore(schema=tenant_a.schema, connection=connection)
        head = store.load(run.head_id)
        done = head.state.evolve(status=Status.COMPLETED, output="hello",
                                 messages=head.state.messages + (Message(role="assistant", content="hello"),))
        store.commit(run_id=run.id, expected_version=Run.objects.get(id=run.id).version, checkpoint_id=uuid.uuid4(),
                     parent_id=head.id, step=1, previous=head.state, state=done, run_status="completed",
                     release_lease=True, events=[])
        image = upload(tenant_a, storage, media_files.png(), "image/png")
        # when
        continued = services.run_message_send(tenant=tenant_a.tenant, run_id=run.id, text="", actor=TEST_ACTOR,
                                              attachments=[image.id])
        # then
        last = store.load(continued.head_id).state.messages[-1]
        assert last == Message(role="user", content="", attachments=(
            AttachmentPart(id=str(image.id), media_type="image/png"),))
        event = continued.events.get(type="message.user")
        assert event.data == {"message_seq": 2, "content": "",
                              "attachments": [{"id": str(image.id), "media_type": "image/png"}]}
        assert Attachment.objects.get(id=image.id).run_id == run.id
        with pytest.raises(IllegalTransition):  # the run is queued again: a second message waits its turn
            services.run_message_send(tenant=tenant_a.tenant, run_id=run.id, text="more", actor=TEST_ACTOR,
                                      attachments=[image.id])
