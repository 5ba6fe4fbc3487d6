"""``GET /v1/runs/<id>/stream``: a run's events as server-sent events. Thin: check the caller, read a RunFeed.

The same events, ids and resume semantics as the websocket (``Last-Event-ID`` or ``?after=<id>``), for
clients that cannot use websockets. An async view: a waiting subscriber holds no thread. The response ends
after the run's latest ``run.finished`` (``?follow=true`` keeps it open for later turns) or a
``stream.lagged``; a comment line every 15 s keeps idle connections alive through proxies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from common.errors import AppError
from common.problems import json_problem
from data_plane.feeds import Cursor, RunFeed
from tenants.asgi import stream_principal


def _frame(item: dict[str, Any]) -> str:
    return f"id: {item['id']}\nevent: {item['type']}\ndata: {json.dumps(item, separators=(',', ':'))}\n\n"


@require_GET
async def run_stream(request: HttpRequest, run_id: UUID) -> HttpResponse:
    principal = await sync_to_async(stream_principal)(authorization=request.headers.get("Authorization"),
                                                      access_token=request.GET.get("access_token"),
                                                      address=request.META.get("REMOTE_ADDR"))
    if "auth_error" in principal:
        error = principal["auth_error"]
        response = json_problem(error["status"], error["code"], error["message"])
        if error.get("retry_after"):
            response["Retry-After"] = str(error["retry_after"])
        return response
    host_tenant = getattr(request, "tenant", None)
    if host_tenant is not None and host_tenant.schema_name not in ("public", principal["tenant_schema"]):
        return json_problem(403, "credential_tenant_mismatch", "This credential belongs to a different tenant than "
                                                           "this hostname.")
    if "runs:read" not in principal["scopes"]:
        return json_problem(403, "missing_scope", "This credential lacks the scope 'runs:read'; use a key or token "
                                              "that has it.")
    if principal["allowed_run_id"] not in (None, str(run_id)):
        return json_problem(404, "run_not_found", f"Run {run_id} not found.")
    follow = request.GET.get("follow", "").lower() in ("1", "true", "yes")
    try:
        cursor = Cursor.parse(request.GET.get("after") or request.headers.get("Last-Event-ID"))
        feed = RunFeed(tenant_schema=principal["tenant_schema"], run_id=run_id, cursor=cursor,
                       layer=get_channel_layer())
        await feed.open()
    except AppError as exc:
        return json_problem(exc.http_status, exc.code, exc.message)
    response = StreamingHttpResponse(_events(feed, follow=follow), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a buffering proxy would hold the stream back
    return response


async def _events(feed: RunFeed, *, follow: bool) -> AsyncIterator[str]:
    try:
        yield "retry: 1000\n\n" + _frame(feed.opened())
        async for item in feed.items():
            if item["type"] == "stream.idle":
                yield ": idle\n\n"
                continue
            yield _frame(item)
            if item["type"] == "stream.lagged":
                return
            if item["type"] == "run.finished" and not follow and item["seq"] >= feed.last_seq_at_open:
                return  # the run's latest turn ended (an earlier turn's run.finished in a replay does not end it)
    finally:
        await feed.close()
