"""Attachments at the model's edge: the parts each model gets, through the gateway (real litellm over HTTP to
the model server started in this process, transcription included) and the in-process scripted model alike."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator

import httpx
import pytest

from data_plane.model_server import ServerHandle, start_in_thread
from data_plane.model_server.scenarios import Scenario
from data_plane.runtime.adapters.llm import LiteLLMChatModel
from data_plane.runtime.adapters.media import AttachmentRefused, Capabilities, ModelCapabilities, \
    attachment_refusal, render_messages
from data_plane.runtime.adapters.scripted import ScriptedChatModel
from data_plane.runtime.core.messages import AttachmentPart, Message
from data_plane.runtime.core.ports import ModelRequest, ProviderRejected
from data_plane.tests import media_files

pytestmark = [pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
              pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier:UserWarning")]

CAPABILITIES = Capabilities(image_models=["openai/vision-*", "openai/omni-*"], audio_models=["openai/omni-*"],
                            transcription_model="openai/whisper-1")
PNG = media_files.png()
WAV = media_files.wav()
IMAGE = AttachmentPart(id=str(uuid.UUID(int=1)), media_type="image/png")
AUDIO = AttachmentPart(id=str(uuid.UUID(int=2)), media_type="audio/wav")
OGG_AUDIO = AttachmentPart(id=str(uuid.UUID(int=3)), media_type="audio/ogg")
DESCRIBE = ("Images: {{images}} ({{image_types}}). Audio clips: {{audio}} ({{audio_formats}}). "
            "Text: {{last_user}}")


class StoredBytes:
    """The MediaSource port on a dict: object storage and its transcripts, without a database."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.transcripts: dict[tuple[str, str], str] = {}

    async def read(self, attachment_id: str) -> bytes | None:
        return self.blobs.get(attachment_id)

    async def transcript(self, attachment_id: str, *, model: str) -> str | None:
        return self.transcripts.get((attachment_id, model))

    async def remember_transcript(self, attachment_id: str, *, model: str, text: str) -> None:
        self.transcripts[(attachment_id, model)] = text


class CountingTranscriber:
    model = "test/transcriber"

    def __init__(self) -> None:
        self.calls = 0

    async def transcribe(self, audio: bytes, *, media_type: str) -> str:
        self.calls += 1
        return f"heard {len(audio)} bytes of {media_type}"


def user(text: str, *parts: AttachmentPart) -> tuple[Message, ...]:
    return (Message(role="system", content="Describe."), Message(role="user", content=text, attachments=parts))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_in_thread()
    yield handle
    handle.stop()


def register(server: ServerHandle, scripted: ScriptedChatModel | None, prefix: str) -> str:
    document = {"name": f"{prefix}-{uuid.uuid4().hex[:8]}", "repeat_last": True, "turns": [{"content": DESCRIBE}]}
    httpx.post(f"{server.root_url}/admin/scenarios", json=document, timeout=5).raise_for_status()
    if scripted is not None:
        scripted.book.register(Scenario.from_json(document))
    return f"openai/{document['name']}"


def script_transcript(server: ServerHandle, scripted: ScriptedChatModel | None, audio: bytes, text: str) -> None:
    digest = hashlib.sha256(audio).hexdigest()
    httpx.post(f"{server.root_url}/admin/transcripts", json={"sha256": digest, "text": text},
               timeout=5).raise_for_status()
    if scripted is not None:
        scripted.book.register_transcript(digest, text)


def transcriptions(server: ServerHandle) -> int:
    return httpx.get(f"{server.root_url}/admin/stats", timeout=5).json()["transcriptions"]


# --- which model takes what ---------------------------------------------------------------------------

def test_capabilities_come_from_the_operators_patterns_or_the_lookup():
    capabilities = Capabilities(image_models=["openai/vision-*"], audio_models=["local/omni"],
                                lookup=lambda model: ModelCapabilities(images=model == "openai/gpt-4o"))
    assert capabilities.of("openai/vision-x") == ModelCapabilities(images=True, audio=False)
    assert capabilities.of("openai/gpt-4o") == ModelCapabilities(images=True, audio=False)
    assert capabilities.of("local/omni") == ModelCapabilities(images=False, audio=True)
    assert capabilities.of("openai/echo") == ModelCapabilities()


def test_refusals_name_the_model_the_attachment_and_the_fix():
    without_transcription = Capabilities(audio_models=["omni"])
    assert attachment_refusal(IMAGE, "openai/vision-1", CAPABILITIES) is None
    assert attachment_refusal(IMAGE, "openai/echo", CAPABILITIES) == (
        f"model openai/echo does not take images (attachment {IMAGE.id}, image/png); use a vision model in the "
        "agent's policy, or leave the image out")
    assert attachment_refusal(AUDIO, "openai/echo", CAPABILITIES) is None  # transcribed
    assert attachment_refusal(AUDIO, "omni", without_transcription) is None
    assert attachment_refusal(OGG_AUDIO, "omni", without_transcription) == (
        f"model omni does not take audio in this format (attachment {OGG_AUDIO.id}, audio/ogg) and no "
        "transcription model is configured (LLM_TRANSCRIPTION_MODEL); use a model that takes audio, or send the "
        "text instead")


# --- rendering ------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_each_model_gets_the_parts_it_takes():
    # given
    media = StoredBytes({IMAGE.id: PNG, AUDIO.id: WAV, OGG_AUDIO.id: media_files.OGG})
    transcriber = CountingTranscriber()
    messages = user("look and listen", IMAGE, AUDIO, OGG_AUDIO)
    # when
    omni = await render_messages(messages, model="openai/omni-1", capabilities=CAPABILITIES, media=media,
                                 transcriber=transcriber)
    vision = await render_messages(messages, model="openai/vision-1", capabilities=CAPABILITIES, media=media,
                                   transcriber=transcriber)
    # then
    image_part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}}
    ogg_transcript = {"type": "text", "text": f"[transcript of audio attachment {OGG_AUDIO.id}] heard "
                                              f"{len(media_files.OGG)} bytes of audio/ogg"}
    assert omni == [{"role": "system", "content": "Describe."}, {"role": "user", "content": [
        {"type": "text", "text": "look and listen"}, image_part,
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "wav"}},
        ogg_transcript]}]
    assert vision[1]["content"] == [
        {"type": "text", "text": "look and listen"}, image_part,
        {"type": "text", "text": f"[transcript of audio attachment {AUDIO.id}] heard {len(WAV)} bytes of audio/wav"},
        ogg_transcript]
    assert transcriber.calls == 2  # each clip once: the second render reused the kept OGG transcript
    assert media.transcripts == {(OGG_AUDIO.id, "test/transcriber"): f"heard {len(media_files.OGG)} bytes of audio/ogg",
                                 (AUDIO.id, "test/transcriber"): f"heard {len(WAV)} bytes of audio/wav"}


@pytest.mark.asyncio
async def test_an_image_for_a_text_only_model_is_refused_and_a_deleted_one_is_announced():
    media = StoredBytes({})
    with pytest.raises(AttachmentRefused, match="does not take images"):
        await render_messages(user("x", IMAGE), model="openai/echo", capabilities=CAPABILITIES, media=media,
                              transcriber=None)
    rendered = await render_messages(user("", IMAGE), model="openai/vision-1", capabilities=CAPABILITIES,
                                     media=media, transcriber=None)
    assert rendered[1] == {"role": "user", "content": [
        {"type": "text", "text": f"[attachment {IMAGE.id} (image/png) was deleted]"}]}


# --- through the gateway and in process -----------------------------------------------------------------

@pytest.mark.asyncio
async def test_the_model_sees_the_image_and_hears_the_transcript_through_litellm(server):
    # given
    gateway = LiteLLMChatModel(api_base=server.base_url, api_key="test-key", max_retries=0,
                               capabilities=CAPABILITIES)
    model = register(server, None, "vision")
    audio = media_files.wav(milliseconds=60)
    script_transcript(server, None, audio, "turn on the lights")
    media = StoredBytes({IMAGE.id: PNG, AUDIO.id: audio})
    request = ModelRequest(models=(model,), messages=user("What now?", IMAGE, AUDIO))
    before = transcriptions(server)
    # when: two calls of one conversation
    first = await gateway.complete(request, media=media)
    second = await gateway.complete(request, media=media)
    # then
    expected = (f"Images: 1 (image/png). Audio clips: 0 (none). Text: What now?[transcript of audio attachment "
                f"{AUDIO.id}] turn on the lights")
    assert first.message.content == expected and second.message.content == expected
    assert transcriptions(server) - before == 1  # kept after the first call
    assert media.transcripts == {(AUDIO.id, "openai/whisper-1"): "turn on the lights"}


@pytest.mark.asyncio
async def test_a_model_that_takes_audio_gets_it_as_input_audio_in_process_as_over_http(server):
    # given
    scripted = ScriptedChatModel(max_retries=0, capabilities=CAPABILITIES)
    gateway = LiteLLMChatModel(api_base=server.base_url, api_key="test-key", max_retries=0,
                               capabilities=CAPABILITIES)
    model = register(server, scripted, "omni")
    request = ModelRequest(models=(model,), messages=user("hi", IMAGE, AUDIO))
    media = StoredBytes({IMAGE.id: PNG, AUDIO.id: WAV})
    # when
    ours = await scripted.complete(request, media=media)
    theirs = await gateway.complete(request, media=media)
    # then
    assert ours.message == theirs.message
    assert ours.message.content == "Images: 1 (image/png). Audio clips: 1 (wav). Text: hi"
    assert (ours.usage.input_tokens, ours.usage.output_tokens) == (theirs.usage.input_tokens,
                                                                   theirs.usage.output_tokens)


@pytest.mark.asyncio
async def test_the_scripted_model_transcribes_as_the_server_does(server):
    # given
    scripted = ScriptedChatModel(max_retries=0, capabilities=CAPABILITIES)
    gateway = LiteLLMChatModel(api_base=server.base_url, api_key="test-key", max_retries=0,
                               capabilities=CAPABILITIES)
    model = register(server, scripted, "vision")
    unscripted = media_files.wav(milliseconds=70, level=3)
    request = ModelRequest(models=(model,), messages=user("", AUDIO))
    # when
    ours = await scripted.complete(request, media=StoredBytes({AUDIO.id: unscripted}))
    theirs = await gateway.complete(request, media=StoredBytes({AUDIO.id: unscripted}))
    # then
    digest = hashlib.sha256(unscripted).hexdigest()[:12]
    assert ours.message == theirs.message
    assert ours.message.content == (f"Images: 0 (none). Audio clips: 0 (none). Text: [transcript of audio attachment "
                                    f"{AUDIO.id}] (audio of {len(unscripted)} bytes, sha256 {digest})")


@pytest.mark.asyncio
async def test_an_attachment_the_model_cannot_take_is_rejected_not_retried(server):
    gateway = LiteLLMChatModel(api_base=server.base_url, api_key="test-key", max_retries=3,
                               capabilities=CAPABILITIES)
    scripted = ScriptedChatModel(max_retries=3, capabilities=CAPABILITIES)
    for model in (gateway, scripted):
        with pytest.raises(ProviderRejected, match="Model openai/echo cannot be given this conversation: model "
                                                   "openai/echo does not take images"):
            await model.complete(ModelRequest(models=("openai/echo",), messages=user("x", IMAGE)),
                                 media=StoredBytes({IMAGE.id: PNG}))
