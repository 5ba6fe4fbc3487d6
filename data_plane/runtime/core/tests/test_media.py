"""Media types told apart by their bytes, and messages' attachment parts through JSON (pure)."""

from __future__ import annotations

import json

import pytest

from data_plane.runtime.core import machine
from data_plane.runtime.core.media import AttachmentLimits, kind_of, normalize, sniff
from data_plane.runtime.core.messages import AttachmentPart, Message, ToolCall
from data_plane.runtime.core.spec import spec_from_json
from data_plane.tests import media_files


@pytest.mark.parametrize(("data", "expected"), [
    (media_files.png(), "image/png"),
    (media_files.JPEG, "image/jpeg"),
    (media_files.GIF, "image/gif"),
    (media_files.WEBP, "image/webp"),
    (media_files.wav(), "audio/wav"),
    (media_files.MP3, "audio/mpeg"),
    (media_files.MP3_FRAME, "audio/mpeg"),
    (media_files.OGG, "audio/ogg"),
    (media_files.FLAC, "audio/flac"),
    (media_files.WEBM, "audio/webm"),
    (media_files.PDF, None),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
    (b"RIFF\x00\x00\x00\x00AVI LIST", None),
    (b"", None),
])
def test_sniff_names_the_type_the_bytes_show(data, expected):
    assert sniff(data[:16]) == expected


@pytest.mark.parametrize(("declared", "expected"), [
    ("image/PNG", "image/png"), ("image/jpg", "image/jpeg"), ("audio/x-wav", "audio/wav"),
    ("audio/wave; codecs=1", "audio/wav"), ("audio/mp3", "audio/mpeg"), ("audio/opus", "audio/ogg"),
    ("audio/x-flac", "audio/flac"), ("video/webm", "audio/webm"), ("application/pdf", "application/pdf"),
])
def test_normalize_resolves_aliases_and_drops_parameters(declared, expected):
    assert normalize(declared) == expected


def test_kinds_and_limits():
    limits = AttachmentLimits(max_image_bytes=10, max_audio_bytes=25)
    assert (kind_of("image/webp"), kind_of("audio/x-wav"), kind_of("text/plain")) == ("image", "audio", None)
    assert (limits.for_kind("image"), limits.for_kind("audio"), limits.largest) == (10, 25, 25)


def test_a_message_without_attachments_keeps_the_stored_format():
    # given: a message as stored before attachments existed
    stored = {"role": "user", "content": "hi"}
    # when
    message = Message.from_json(stored)
    # then
    assert message.attachments == ()
    assert message.to_json() == stored


def test_attachment_parts_round_trip_through_json_as_references():
    # given
    message = Message(role="user", content="What is this?", attachments=(
        AttachmentPart(id="0b6c2d5e-1a1f-4a55-9f3c-3b2a1d0e9f01", media_type="image/png"),
        AttachmentPart(id="7f0e9a58-2c1d-4b8e-8a51-6f7d2c9b4e10", media_type="audio/wav")))
    # when
    encoded = json.dumps(message.to_json())
    # then
    assert json.loads(encoded) == {"role": "user", "content": "What is this?", "attachments": [
        {"id": "0b6c2d5e-1a1f-4a55-9f3c-3b2a1d0e9f01", "media_type": "image/png"},
        {"id": "7f0e9a58-2c1d-4b8e-8a51-6f7d2c9b4e10", "media_type": "audio/wav"}]}
    assert Message.from_json(json.loads(encoded)) == message
    assert [part.kind for part in message.attachments] == ["image", "audio"]
    assert Message.from_json(Message(role="assistant", tool_calls=(ToolCall("c", "t", {}),)).to_json()).attachments == ()


def test_a_run_starts_with_the_input_and_its_attachments():
    # given
    spec = spec_from_json({"instructions": "", "models": ["m"]})
    part = AttachmentPart(id="a", media_type="image/png")
    # when
    state, commands = machine.start(spec, input="look", now=0.0, attachments=(part,))
    # then
    assert state.messages[0] == Message(role="user", content="look", attachments=(part,))
    assert commands[0].request.messages[-1].attachments == (part,)


def test_the_model_policy_includes_the_graphs_own_models_once():
    spec = spec_from_json({"instructions": "", "models": ["a", "b"], "graph": {"entry": "one", "nodes": [
        {"id": "one", "kind": "llm", "models": ["c", "a"], "next": "two"},
        {"id": "two", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}})
    assert spec.model_policy() == ("a", "b", "c")
