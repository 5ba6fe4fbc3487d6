"""Attachments: upload (type sniffed from the bytes, size checked per kind), delete, and the checks a message
that carries them must pass before a run takes it (every id the tenant's, every model able to take them).

The bytes go to object storage (``attachment_storage``) outside any transaction; the row and its audit event
are written together after that, and a failed write removes the stored bytes again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from functools import partial
from typing import BinaryIO
from uuid import UUID, uuid4

from django.db import transaction

from common.actors import Actor
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from data_plane.attachment_storage import BlobStorage, attachment_key
from data_plane.errors import AttachmentInvalid, AttachmentNotSupportedByModel, AttachmentTooLarge, \
    AttachmentTypeMismatch, AttachmentTypeUnsupported
from data_plane.models import Attachment
from data_plane.runtime.adapters.media import Capabilities, attachment_refusal
from data_plane.runtime.core import media
from data_plane.runtime.core.media import AttachmentLimits
from data_plane.runtime.core.messages import AttachmentPart
from data_plane.runtime.core.spec import AgentSpec
from data_plane.selectors import attachment_get, attachment_list_by_ids

logger = logging.getLogger(__name__)

# What a multipart body adds around the file (boundaries, part headers, small fields).
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def attachment_request_check(*, content_length: int, limits: AttachmentLimits | None = None) -> None:
    """Refuse an upload whose request is larger than any attachment may be, before its body is read.
    Raises AttachmentTooLarge."""
    limits = limits or _wiring().attachment_limits()
    if content_length > limits.largest + MULTIPART_OVERHEAD_BYTES:
        raise AttachmentTooLarge(f"The upload is {content_length} bytes; attachments may be at most "
                                 f"{limits.max_image_bytes} bytes (images) or {limits.max_audio_bytes} bytes "
                                 "(audio). Send a smaller or more compressed file.")


def attachment_upload(*, tenant, actor: Actor, stream: BinaryIO, filename: str,  # type: ignore[no-untyped-def]
                      declared_media_type: str, storage: BlobStorage | None = None,
                      limits: AttachmentLimits | None = None) -> Attachment:
    """Check and store an uploaded file. Its type is what its first bytes show, which must match the declared
    type (an undeclared or generic one takes the sniffed type). Raises AttachmentInvalid (400),
    AttachmentTooLarge (413), AttachmentTypeUnsupported and AttachmentTypeMismatch (415). Audited."""
    require_schema(tenant.schema_name)
    storage = storage or _wiring().attachment_storage()
    limits = limits or _wiring().attachment_limits()
    declared = media.normalize(declared_media_type)
    if declared not in media.UNDECLARED and media.kind_of(declared) is None:
        raise AttachmentTypeUnsupported(
            f"Type {declared_media_type!r} is not taken; attach one of {', '.join(media.SUPPORTED_TYPES)}.")
    data = stream.read(limits.largest + 1)
    if not data:
        raise AttachmentInvalid("The file is empty; attach an image or an audio clip.",
                                extra={"errors": {"file": ["empty"]}})
    sniffed = media.sniff(data[:media.SNIFF_BYTES])
    if sniffed is None:
        raise AttachmentTypeUnsupported(
            f"The file's content is none of the types taken ({', '.join(media.SUPPORTED_TYPES)}); check that it is "
            "an image or audio file, not a renamed document.")
    if declared not in media.UNDECLARED and declared != sniffed:
        raise AttachmentTypeMismatch(f"The file was declared {declared} but its content is {sniffed}; declare "
                                     f"{sniffed} (or nothing), or send the file you meant.",
                                     extra={"declared": declared, "detected": sniffed})
    kind = media.kind_of(sniffed)
    assert kind is not None
    limit = limits.for_kind(kind)
    if len(data) > limit:
        size = f"more than {limits.largest}" if len(data) > limits.largest else str(len(data))
        raise AttachmentTooLarge(f"The {kind} is {size} bytes; {kind} attachments may be at most {limit} bytes. "
                                 "Send a smaller or more compressed file.", extra={"max_bytes": limit})
    attachment_id = uuid4()
    key = attachment_key(tenant_schema=tenant.schema_name, attachment_id=attachment_id)
    digest = hashlib.sha256(data).hexdigest()
    storage.put(key, data)
    try:
        with transaction.atomic():
            attachment = Attachment.objects.create(
                id=attachment_id, media_type=sniffed, size_bytes=len(data), sha256=digest, storage_key=key,
                filename=_display_name(filename), created_by=str(actor))
            audit_event_record(tenant=tenant, actor=actor, action="attachment.upload", target_type="attachment",
                               target_id=str(attachment.id), data={"media_type": sniffed, "size_bytes": len(data),
                                                                   "sha256": digest})
    except BaseException:
        storage.delete(key)
        raise
    return attachment


def _wiring():  # type: ignore[no-untyped-def]
    from data_plane.runtime import wiring  # the settings' choices: storage, limits, models' capabilities

    return wiring


def _display_name(filename: str) -> str:
    """The uploader's file name, for display only: no folders, no control characters, at most 255 characters."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(character for character in name if character.isprintable())[:255]


def attachment_delete(*, tenant, attachment_id: UUID, actor: Actor,  # type: ignore[no-untyped-def]
                      storage: BlobStorage | None = None) -> None:
    """Delete an attachment and its bytes. Messages that referenced it keep the reference: models are told it
    was deleted. Raises AttachmentNotFound. Audited."""
    storage = storage or _wiring().attachment_storage()
    with transaction.atomic():
        attachment = attachment_get(tenant_schema=tenant.schema_name, attachment_id=attachment_id, for_update=True)
        key = attachment.storage_key
        attachment.delete()
        audit_event_record(tenant=tenant, actor=actor, action="attachment.delete", target_type="attachment",
                           target_id=str(attachment_id), data={"media_type": attachment.media_type,
                                                               "sha256": attachment.sha256})
        transaction.on_commit(partial(_delete_blob, storage, key))


def _delete_blob(storage: BlobStorage, key: str) -> None:
    try:
        storage.delete(key)
    except OSError:  # the row is gone, so nothing reads it again; the object is left for a sweep
        logger.exception("could not delete attachment object %s", key)


def message_attachments(*, tenant_schema: str, attachment_ids: Sequence[UUID], spec: AgentSpec, agent_name: str,
                        capabilities: Capabilities | None = None) -> tuple[AttachmentPart, ...]:
    """The parts a message carrying these attachments gets, once every id is the tenant's and every model the
    agent may call can take them. Raises AttachmentNotFound, AttachmentNotSupportedByModel."""
    if not attachment_ids:
        return ()
    capabilities = capabilities or _wiring().capabilities()
    rows = attachment_list_by_ids(tenant_schema=tenant_schema, attachment_ids=list(attachment_ids))
    parts = tuple(AttachmentPart(id=str(row.id), media_type=row.media_type) for row in rows)
    refusals = [refusal for part in parts for model in spec.model_policy()
                if (refusal := attachment_refusal(part, model, capabilities)) is not None]
    if refusals:
        raise AttachmentNotSupportedByModel(
            f"Agent {agent_name!r} cannot take these attachments: {'; '.join(refusals)}.",
            extra={"errors": {"attachments": refusals}})
    return parts


def attachments_link(*, run_id: UUID, parts: Sequence[AttachmentPart]) -> None:
    """Link attachments to the run whose message first carried them (ones already linked keep their run)."""
    if parts:
        Attachment.objects.filter(id__in=[part.id for part in parts], run__isnull=True).update(run_id=run_id)
