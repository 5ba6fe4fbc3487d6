"""The media types attachments may have, told apart by their first bytes (magic numbers), not by names.

Pure: callers pass bytes in. A declared type is normalized (``image/jpg`` is ``image/jpeg``) before it is
compared with what the bytes say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["image", "audio"]

# Every type we accept, by kind. Images: what vision models take (OpenAI: PNG, JPEG, GIF, WEBP). Audio:
# what transcription takes (Whisper: WAV, MP3, OGG/Opus, FLAC, WEBM).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
AUDIO_TYPES = ("audio/wav", "audio/mpeg", "audio/ogg", "audio/flac", "audio/webm")
SUPPORTED_TYPES = IMAGE_TYPES + AUDIO_TYPES

# The formats a model's ``input_audio`` part takes (OpenAI's chat API: wav and mp3 only); other audio is
# transcribed instead.
INPUT_AUDIO_FORMATS = {"audio/wav": "wav", "audio/mpeg": "mp3"}

# File extensions of each type: the name a download is offered under.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp",
              "audio/wav": "wav", "audio/mpeg": "mp3", "audio/ogg": "ogg", "audio/flac": "flac",
              "audio/webm": "webm"}

_ALIASES = {
    "image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg",
    "audio/wave": "audio/wav", "audio/x-wav": "audio/wav", "audio/vnd.wave": "audio/wav",
    "audio/x-pn-wav": "audio/wav",
    "audio/mp3": "audio/mpeg", "audio/x-mp3": "audio/mpeg", "audio/mpeg3": "audio/mpeg", "audio/x-mpeg": "audio/mpeg",
    "audio/opus": "audio/ogg", "application/ogg": "audio/ogg", "audio/x-ogg": "audio/ogg",
    "audio/x-flac": "audio/flac",
    "video/webm": "audio/webm",  # a WEBM container; only its audio is used
}

# Types a client sends when it does not know: the bytes decide.
UNDECLARED = ("", "application/octet-stream", "binary/octet-stream")

# How many leading bytes ``sniff`` needs at most.
SNIFF_BYTES = 16


def normalize(media_type: str) -> str:
    """The canonical form of a declared type: lower case, no parameters, aliases resolved."""
    bare = media_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(bare, bare)


def kind_of(media_type: str) -> Kind | None:
    """``image`` or ``audio`` for a supported type; None for anything else."""
    normalized = normalize(media_type)
    if normalized in IMAGE_TYPES:
        return "image"
    if normalized in AUDIO_TYPES:
        return "audio"
    return None


def sniff(head: bytes) -> str | None:
    """The supported type the leading bytes show, or None when they are none of ours."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
                                   and head[1] & 0x06 != 0):  # an MPEG audio frame sync, layer set
        return "audio/mpeg"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "audio/webm"
    return None


@dataclass(frozen=True)
class AttachmentLimits:
    """The largest attachment of each kind, in bytes."""

    max_image_bytes: int
    max_audio_bytes: int

    def for_kind(self, kind: str) -> int:
        return self.max_image_bytes if kind == "image" else self.max_audio_bytes

    @property
    def largest(self) -> int:
        return max(self.max_image_bytes, self.max_audio_bytes)
