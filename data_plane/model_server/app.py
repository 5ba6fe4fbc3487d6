"""The scripted OpenAI-compatible model server (aiohttp): chat completions, streamed as OpenAI streams them.

Routes: ``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``POST /v1/audio/transcriptions``,
``GET /v1/models``, ``GET /healthz``, and for tests ``GET|POST /admin/scenarios``,
``GET|DELETE /admin/scenarios/{name}``, ``POST /admin/transcripts``, ``GET|DELETE /admin/stats``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from data_plane.model_server.scenarios import InjectedFailure, InvalidRequest, InvalidScenario, Plan, Scenario, \
    ScenarioBook, UnknownScenario, builtin_book

WORDS_PER_CHUNK = 3
ARGUMENT_FRAGMENT_CHARS = 16
BOOK = web.AppKey("book", ScenarioBook)
# When each streamed reply's first text chunk was written (wall clock): the benchmark's start of the time to
# first token the platform adds. The latest 1000, oldest first.
FIRST_TEXT = web.AppKey("first_text", collections.deque)
_WORDS = re.compile(r"\s*\S+\s*|\s+")
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "invalid_request_error", 409: "invalid_request_error", 422: "invalid_request_error",
                429: "requests"}
_ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


def create_app(book: ScenarioBook | None = None) -> web.Application:
    """The aiohttp application; ``book`` defaults to the scenarios shipped with the package."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[BOOK] = book if book is not None else builtin_book()
    app[FIRST_TEXT] = collections.deque(maxlen=1000)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/embeddings", embeddings)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/audio/transcriptions", transcriptions)
    app.router.add_get("/v1/models", models_list)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/admin/scenarios", scenarios_list)
    app.router.add_post("/admin/scenarios", scenario_register)
    app.router.add_get("/admin/scenarios/{name}", scenario_get)
    app.router.add_delete("/admin/scenarios/{name}", scenario_delete)
    app.router.add_post("/admin/transcripts", transcript_register)
    app.router.add_get("/admin/stats", stats_get)
    app.router.add_delete("/admin/stats", stats_reset)
    app.router.add_get("/admin/first-text", first_text_list)
    return app


# --- OpenAI-compatible API ---------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except ValueError:
        return openai_error(400, "The request body is not valid JSON.")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return openai_error(400, "'messages' is required and must be a list.", param="messages")
    try:
        plan = request.app[BOOK].plan(body)
    except UnknownScenario as exc:
        return openai_error(404, str(exc), param="model")
    except InvalidRequest as exc:
        return openai_error(400, str(exc), param="messages")
    model = str(body.get("model") or plan.scenario)
    failure = plan.failure
    if failure is not None and (failure.after_chunks is None or not body.get("stream")):
        if plan.turn.first_token_delay_ms:
            await asyncio.sleep(plan.turn.first_token_delay_ms / 1000)
        return injected_error(plan, failure)
    if body.get("stream"):
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return await stream_reply(request, plan, model, include_usage=include_usage)
    if plan.turn.first_token_delay_ms:
        await asyncio.sleep(plan.turn.first_token_delay_ms / 1000)
    return web.json_response(completion(plan, model), dumps=_dumps)


def completion(plan: Plan, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": plan.content if plan.content or not plan.tool_calls
                               else None, "refusal": None}
    if plan.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in plan.tool_calls]
    return {"id": _completion_id(plan), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}],
            "usage": usage(plan), "system_fingerprint": "fp_scripted"}


def usage(plan: Plan) -> dict[str, Any]:
    return {"prompt_tokens": plan.prompt_tokens, "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": min(plan.turn.cached_tokens, plan.prompt_tokens),
                                      "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def deltas(plan: Plan) -> list[dict[str, Any]]:
    """The ``delta`` objects of a streamed reply, in order: content by words, then each tool call by fragments."""
    out: list[dict[str, Any]] = []
    if plan.content or not plan.tool_calls:
        out.append({"role": "assistant", "content": "", "refusal": None})
        words = _WORDS.findall(plan.content)
        out.extend({"content": "".join(words[i:i + WORDS_PER_CHUNK])} for i in range(0, len(words), WORDS_PER_CHUNK))
    for index, call in enumerate(plan.tool_calls):
        header: dict[str, Any] = {"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                                  "function": {"name": call.name, "arguments": ""}}]}
        if not out:
            header = {"role": "assistant", "content": None, "refusal": None, **header}
        out.append(header)
        fragments = (call.arguments[i:i + ARGUMENT_FRAGMENT_CHARS]
                     for i in range(0, len(call.arguments), ARGUMENT_FRAGMENT_CHARS))
        out.extend({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]} for fragment in fragments)
    return out


async def stream_reply(request: web.Request, plan: Plan, model: str, *, include_usage: bool) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    head = {"id": _completion_id(plan), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_scripted"}
    frames = [{**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
              for delta in deltas(plan)]
    frames.append({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": plan.finish_reason}]})
    if include_usage and not plan.turn.omit_usage:
        frames.append({**head, "choices": [], "usage": usage(plan)})
    cut_after = plan.failure.after_chunks if plan.failure is not None else None
    first_text = next((number for number, frame in enumerate(frames) if frame["choices"]
                       and frame["choices"][0]["delta"].get("content")), None)
    turn = plan.turn
    try:
        for number, frame in enumerate(frames):
            if number == cut_after:
                _drop_connection(request)
                return response
            delay_ms = turn.first_token_delay_ms if number == 0 else turn.chunk_delay_ms
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            await response.write(b"data: " + _dumps(frame).encode() + b"\n\n")
            if number == first_text:
                request.app[FIRST_TEXT].append({"scenario": plan.scenario, "conversation": plan.conversation,
                                                "at": time.time()})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:  # the client gave up (its timeout, or it was cancelled): nothing to answer
        pass
    return response


def _drop_connection(request: web.Request) -> None:
    """Cut the stream mid-body, the way a crashed upstream does: the client sees an incomplete response."""
    if request.transport is not None:
        request.transport.abort()


def injected_error(plan: Plan, failure: InjectedFailure) -> web.Response:
    message = failure.message or (f"Scripted failure {failure.status} from scenario {plan.scenario!r} "
                                  f"(conversation {plan.conversation}).")
    headers = {"Retry-After": "0"} if failure.status == 429 else None
    return openai_error(failure.status, message, code=failure.code, headers=headers)


def openai_error(status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    error = {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": param,
             "code": code or _ERROR_CODES.get(status)}
    return web.json_response({"error": error}, status=status, headers=headers, dumps=_dumps)


EMBEDDING_DIMENSIONS = 1536


async def embeddings(request: web.Request) -> web.Response:
    """Embeddings as OpenAI's API returns them: deterministic hashed bags of words (texts sharing words are
    near), as long as ``dimensions`` asks (default 1536); for tests of provider embeddings."""
    try:
        body = await request.json()
    except ValueError:
        return openai_error(400, "The body is not JSON.")
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or not texts:
        return openai_error(400, "input is a string or a list of strings.", param="input")
    if not isinstance(dimensions, int) or not 1 <= dimensions <= EMBEDDING_DIMENSIONS:
        return openai_error(400, f"dimensions is from 1 to {EMBEDDING_DIMENSIONS}.", param="dimensions")
    data = [{"object": "embedding", "index": i, "embedding": hashed_embedding(text, dimensions)}
            for i, text in enumerate(texts)]
    tokens = sum(len(text.split()) for text in texts)
    return web.json_response({"object": "list", "data": data, "model": body.get("model", ""),
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def hashed_embedding(text: str, dimensions: int) -> list[float]:
    import hashlib

    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()) or [""]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest[:4], "big") % dimensions] += 1.0 if digest[4] & 1 else -1.0
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]


async def transcriptions(request: web.Request) -> web.Response:
    """OpenAI's transcription endpoint (multipart: ``file``, ``model``, ``response_format``): a deterministic
    transcript of the file (see ``ScenarioBook.transcribe``)."""
    if not request.content_type.startswith("multipart/"):
        return openai_error(400, "Send the audio as multipart/form-data with a 'file' part.", param="file")
    form = await request.post()
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        return openai_error(400, "'file' is required: the audio to transcribe.", param="file")
    audio = upload.file.read()
    if not audio:
        return openai_error(400, "The audio file is empty.", param="file")
    text = request.app[BOOK].transcribe(audio)
    response_format = str(form.get("response_format") or "json")
    if response_format == "text":
        return web.Response(text=text, content_type="text/plain")
    if response_format == "verbose_json":
        return web.json_response({"task": "transcribe", "language": "english", "duration": 0.0, "text": text,
                                  "segments": []}, dumps=_dumps)
    return web.json_response({"text": text}, dumps=_dumps)


async def models_list(request: web.Request) -> web.Response:
    names = sorted(request.app[BOOK].scenarios)
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "agentplane-model-server"} for name in names]})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "scenarios": len(request.app[BOOK].scenarios)})


# --- Admin API for tests -----------------------------------------------------------------------


async def scenarios_list(request: web.Request) -> web.Response:
    return web.json_response({"scenarios": sorted(request.app[BOOK].scenarios)})


async def scenario_register(request: web.Request) -> web.Response:
    try:
        scenario = Scenario.from_json(await request.json())
    except (ValueError, InvalidScenario) as exc:  # InvalidScenario is a ValueError; JSON errors too
        return web.json_response({"error": {"message": str(exc), "type": "invalid_scenario"}}, status=400)
    request.app[BOOK].register(scenario)
    return web.json_response({"name": scenario.name, "turns": len(scenario.turns)}, status=201)


async def scenario_get(request: web.Request) -> web.Response:
    scenario = request.app[BOOK].scenarios.get(request.match_info["name"])
    if scenario is None:
        return web.json_response({"error": {"message": f"no scenario {request.match_info['name']!r}"}}, status=404)
    return web.json_response(scenario.to_json())


async def scenario_delete(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not request.app[BOOK].remove(name):
        return web.json_response({"error": {"message": f"no scenario {name!r}"}}, status=404)
    return web.Response(status=204)


async def transcript_register(request: web.Request) -> web.Response:
    """``{"sha256": hex digest of the audio, "text": ...}``: what transcribing that audio answers."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("sha256"), str) or not isinstance(body.get("text"), str) \
            or not re.fullmatch(r"[0-9a-fA-F]{64}", body["sha256"]):
        return web.json_response({"error": {"message": "send {\"sha256\": <64 hex digits>, \"text\": <string>}",
                                            "type": "invalid_transcript"}}, status=400)
    request.app[BOOK].register_transcript(body["sha256"], body["text"])
    return web.json_response({"sha256": body["sha256"].lower()}, status=201)


async def stats_get(request: web.Request) -> web.Response:
    return web.json_response(request.app[BOOK].stats())


async def first_text_list(request: web.Request) -> web.Response:
    """``[{scenario, conversation, at}]``: when each streamed reply's first text was written (epoch seconds)."""
    scenario = request.query.get("scenario")
    return web.json_response([entry for entry in request.app[FIRST_TEXT]
                              if scenario is None or entry["scenario"] == scenario])


async def stats_reset(request: web.Request) -> web.Response:
    request.app[BOOK].reset_stats()
    return web.Response(status=204)


def _completion_id(plan: Plan) -> str:
    return f"chatcmpl-{plan.conversation}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- Running it --------------------------------------------------------------------------------


async def serve(app: web.Application, *, host: str, port: int,
                shutdown_timeout: float = 5.0) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host:port`` (0: a free port). Returns the runner (to clean up) and the bound port.

    On cleanup, requests still running (a scripted delay) get ``shutdown_timeout`` seconds to finish."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server  # aiohttp exposes the bound port only through the asyncio server
    sockets = getattr(server, "sockets", None) or ()
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound


@dataclass(frozen=True)
class ServerHandle:
    """A model server running in a background thread of this process."""

    host: str
    port: int
    loop: asyncio.AbstractEventLoop
    runner: web.AppRunner
    thread: threading.Thread

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``), what litellm's ``api_base`` takes."""
        return f"{self.root_url}/v1"

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and its connections, then end the thread. Idempotent."""
        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel handlers still inside a scripted delay when the server stops, as ``asyncio.run`` does at exit."""
    leftovers = asyncio.all_tasks(loop)
    for task in leftovers:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


def start_in_thread(host: str = "127.0.0.1", port: int = 0, *, book: ScenarioBook | None = None,
                    timeout: float = 10.0) -> ServerHandle:
    """Run the model server on its own event loop in a daemon thread; returns once it is listening."""
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            ready["runner"], ready["port"] = loop.run_until_complete(
                serve(create_app(book), host=host, port=port, shutdown_timeout=0.5))
        except BaseException as exc:  # handed to the starting thread, which raises it
            ready["error"] = exc
            started.set()
            loop.close()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            _cancel_leftovers(loop)
            loop.close()

    thread = threading.Thread(target=run, name=f"model-server-{host}:{port}", daemon=True)
    thread.start()
    if not started.wait(timeout):
        raise RuntimeError(f"the model server did not start on {host}:{port} within {timeout} s")
    if "error" in ready:
        raise ready["error"]
    return ServerHandle(host=host, port=ready["port"], loop=loop, runner=ready["runner"], thread=thread)
