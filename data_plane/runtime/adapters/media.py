"""Attachments at the model's edge: which models take which media, and the content parts a model gets.

An image becomes an ``image_url`` part (a data URL of its bytes) for a model that takes images. Audio
becomes an ``input_audio`` part for a model that takes audio (in the formats the chat API takes: WAV, MP3);
otherwise it is transcribed and the transcript goes in as text (kept, so a conversation pays for it once).
Anything else (an image for a text-only model, audio with no transcription configured) is refused with
the reason: the API refuses the same combinations when a run starts (``attachment_refusal``), so a worker
only meets one when the operator's settings changed in between.

No litellm here: the gateway passes its capability lookup and transcriber in (the scripted model passes its
own), so both edges render the same parts.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from data_plane.runtime.adapters.openai_format import openai_message
from data_plane.runtime.core.media import INPUT_AUDIO_FORMATS
from data_plane.runtime.core.messages import AttachmentPart, Message
from data_plane.runtime.core.ports import MediaSource


@dataclass(frozen=True)
class ModelCapabilities:
    images: bool = False
    audio: bool = False


class Capabilities:
    """Which media each model takes: the operator's patterns (``LLM_IMAGE_MODELS``, ``LLM_AUDIO_MODELS``:
    fnmatch patterns, for models litellm does not know, like our local ``openai/<scenario>``), or else what
    ``lookup`` (litellm's model map) says. ``transcription_model`` empty: audio is never transcribed."""

    def __init__(self, *, image_models: Sequence[str] = (), audio_models: Sequence[str] = (),
                 transcription_model: str = "", lookup: Callable[[str], ModelCapabilities] | None = None) -> None:
        self.image_models = tuple(image_models)
        self.audio_models = tuple(audio_models)
        self.transcription_model = transcription_model
        self.lookup = lookup

    def of(self, model: str) -> ModelCapabilities:
        known = self.lookup(model) if self.lookup is not None else ModelCapabilities()
        return ModelCapabilities(images=known.images or _matches(model, self.image_models),
                                 audio=known.audio or _matches(model, self.audio_models))


def _matches(model: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in patterns)


def attachment_refusal(part: AttachmentPart, model: str, capabilities: Capabilities) -> str | None:
    """Why ``model`` cannot be given ``part`` (one sentence, naming both), or None when it can."""
    can = capabilities.of(model)
    if part.kind == "image" and not can.images:
        return (f"model {model} does not take images (attachment {part.id}, {part.media_type}); use a vision "
                "model in the agent's policy, or leave the image out")
    if part.kind == "audio" and not (can.audio and part.media_type in INPUT_AUDIO_FORMATS) \
            and not capabilities.transcription_model:
        takes = "audio in this format" if can.audio else "audio"
        return (f"model {model} does not take {takes} (attachment {part.id}, {part.media_type}) and no "
                "transcription model is configured (LLM_TRANSCRIPTION_MODEL); use a model that takes audio, or "
                "send the text instead")
    return None


class AttachmentRefused(Exception):
    """The model cannot be given an attachment (``attachment_refusal``'s reason)."""


class Transcriber(Protocol):
    model: str

    async def transcribe(self, audio: bytes, *, media_type: str) -> str:
        """The text spoken in ``audio``. Raises ProviderUnavailable or ProviderRejected."""
        ...


async def render_messages(messages: Sequence[Message], *, model: str, capabilities: Capabilities,
                          media: MediaSource | None, transcriber: Transcriber | None) -> list[dict[str, Any]]:
    """The messages in the OpenAI chat format for ``model``, their attachments as content parts. Raises
    AttachmentRefused, and what the transcriber raises."""
    parts = {part.id: part for message in messages for part in message.attachments}
    if not parts:
        return [openai_message(m) for m in messages]
    if media is None:
        raise AttachmentRefused("the request has attachments but no media source to read them from")
    can = capabilities.of(model)
    rendered = await asyncio.gather(*(_render(part, model=model, can=can, capabilities=capabilities, media=media,
                                              transcriber=transcriber) for part in parts.values()))
    by_id = dict(zip(parts, rendered))
    return [openai_message(m, parts=by_id) for m in messages]


async def _render(part: AttachmentPart, *, model: str, can: ModelCapabilities, capabilities: Capabilities,
                  media: MediaSource, transcriber: Transcriber | None) -> dict[str, Any]:
    refusal = attachment_refusal(part, model, capabilities)
    if refusal is not None:
        raise AttachmentRefused(refusal)
    if part.kind == "audio" and not (can.audio and part.media_type in INPUT_AUDIO_FORMATS):
        return await _transcript_part(part, media=media, transcriber=transcriber)
    data = await media.read(part.id)
    if data is None:  # deleted since: the conversation goes on without it, and the model is told
        return {"type": "text", "text": f"[attachment {part.id} ({part.media_type}) was deleted]"}
    encoded = base64.b64encode(data).decode("ascii")
    if part.kind == "image":
        return {"type": "image_url", "image_url": {"url": f"data:{part.media_type};base64,{encoded}"}}
    return {"type": "input_audio", "input_audio": {"data": encoded, "format": INPUT_AUDIO_FORMATS[part.media_type]}}


async def _transcript_part(part: AttachmentPart, *, media: MediaSource,
                           transcriber: Transcriber | None) -> dict[str, Any]:
    if transcriber is None:
        raise AttachmentRefused(f"audio attachment {part.id} needs transcribing and no transcriber is configured")
    text = await media.transcript(part.id, model=transcriber.model)
    if text is None:
        data = await media.read(part.id)
        if data is None:
            return {"type": "text", "text": f"[attachment {part.id} ({part.media_type}) was deleted]"}
        text = await transcriber.transcribe(data, media_type=part.media_type)
        await media.remember_transcript(part.id, model=transcriber.model, text=text)
    return {"type": "text", "text": f"[transcript of audio attachment {part.id}] {text}"}
