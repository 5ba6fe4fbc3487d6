"""RunFeed on the real Redis channel layer and database: live messages a subscriber lost are filled from the
run's log in order; a subscriber too far behind is told so and where to resume; an idle feed finds events
whose live message never came. (The end-to-end stream tests are in tests/test_streaming.py.)"""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import selectors, services
from data_plane.feeds import Cursor, InvalidCursor, RunFeed
from data_plane.models import RunEvent
from data_plane.runtime.loop import submit_in_order

SPEC = {"instructions": "x", "models": ["openai/none"], "graph": {
    "entry": "answer", "nodes": [{"id": "answer", "kind": "llm", "next": "end"}, {"id": "end", "kind": "end"}]}}


@pytest.fixture
def queued_run(committed, settings):
    # no worker takes this run: its steps go to a queue nobody reads
    settings.RUN_STEP_QUEUE = f"feeds-test-{uuid.uuid4().hex[:8]}"
    provisioned = provision_for_test("feeds")
    with schema_context(provisioned.tenant.schema_name):
        agent = services.agent_create(tenant=provisioned.tenant, name="feeds", description="", spec=SPEC,
                                      actor=TEST_ACTOR)
        run = services.run_start(tenant=provisioned.tenant, agent_id=agent.id, input="go", actor=TEST_ACTOR)
    yield provisioned.tenant, run
    destroy_tenant(provisioned.tenant)


def _toggle(tenant, run_id, times: int) -> None:
    """Pause and resume the run alternately: one run.status event each. Returns once their live messages
    have been sent (publishing is asynchronous, in order, on the process's IO loop)."""
    with schema_context(tenant.schema_name):
        for _ in range(times):
            run = selectors.run_get(tenant_schema=tenant.schema_name, run_id=run_id)
            change = services.run_resume if run.status == "paused" else services.run_pause
            change(tenant=tenant, run_id=run_id, actor=TEST_ACTOR)
    sent = threading.Event()

    async def mark() -> None:
        sent.set()

    submit_in_order(mark)
    assert sent.wait(10)


async def _take(items, count: int, timeout: float = 10) -> list[dict]:
    async with asyncio.timeout(timeout):
        return [await anext(items) for _ in range(count)]


async def _live(feed: RunFeed) -> tuple[object, asyncio.Future]:
    """The feed's items, already past its replay and waiting on the live stream (the next item pending)."""
    items = feed.items()
    first = asyncio.ensure_future(anext(items))
    await asyncio.sleep(0.3)
    assert not first.done()
    return items, first


def _seqs(items: list[dict]) -> list[int]:
    return [item["seq"] for item in items]


def test_messages_the_layer_lost_are_filled_from_the_log_in_order(queued_run):
    tenant, run = queued_run

    async def scenario() -> list[dict]:
        feed = RunFeed(tenant_schema=tenant.schema_name, run_id=run.id, cursor=Cursor(seq=run.event_seq),
                       layer=get_channel_layer(), lag_limit=10)
        await feed.open()
        try:
            items, first = await _live(feed)
            # given: the subscription drops out of the group (what a full channel looks like to its reader)...
            await feed.layer.group_discard(feed.group, feed.channel)
            await sync_to_async(_toggle)(tenant, run.id, 4)
            await feed.layer.group_add(feed.group, feed.channel)
            # when: ...and the next live message arrives after the hole
            await sync_to_async(_toggle)(tenant, run.id, 1)
            return [await asyncio.wait_for(first, 10)] + await _take(items, 4)
        finally:
            await feed.close()

    items = asyncio.run(scenario())
    # then: the four lost events come first, from the log, then the live one: no gap, no duplicate
    assert _seqs(items) == list(range(run.event_seq + 1, run.event_seq + 6))
    assert [i["data"]["status"] for i in items] == ["paused", "queued", "paused", "queued", "paused"]
    assert [i["id"] for i in items] == [str(s) for s in _seqs(items)]


def test_a_subscriber_too_far_behind_is_told_where_to_resume(queued_run):
    tenant, run = queued_run

    async def scenario() -> tuple[list[dict], list[dict]]:
        feed = RunFeed(tenant_schema=tenant.schema_name, run_id=run.id, cursor=Cursor(seq=run.event_seq),
                       layer=get_channel_layer(), lag_limit=2)
        await feed.open()
        try:
            items, first = await _live(feed)
            await feed.layer.group_discard(feed.group, feed.channel)
            await sync_to_async(_toggle)(tenant, run.id, 4)
            await feed.layer.group_add(feed.group, feed.channel)
            await sync_to_async(_toggle)(tenant, run.id, 1)
            told = [await asyncio.wait_for(first, 10)]
            with pytest.raises(StopAsyncIteration):
                await anext(items)  # the feed ends: the client reconnects
        finally:
            await feed.close()
        # when: the client resumes from where it was told
        resumed = RunFeed(tenant_schema=tenant.schema_name, run_id=run.id,
                          cursor=Cursor.parse(told[0]["data"]["resume_after"]), layer=get_channel_layer())
        await resumed.open()
        try:
            return told, await _take(resumed.items(), 5)
        finally:
            await resumed.close()

    told, resumed = asyncio.run(scenario())
    # then
    assert told[0]["type"] == "stream.lagged"
    assert told[0]["data"]["resume_after"] == str(run.event_seq) and told[0]["data"]["behind"] == 4
    assert "reconnect with after=" in told[0]["data"]["message"]
    assert _seqs(resumed) == list(range(run.event_seq + 1, run.event_seq + 6))


def test_an_idle_feed_finds_events_whose_live_message_never_came(queued_run):
    tenant, run = queued_run

    async def scenario() -> list[dict]:
        feed = RunFeed(tenant_schema=tenant.schema_name, run_id=run.id, cursor=Cursor(seq=run.event_seq),
                       layer=get_channel_layer(), idle_check_seconds=1.0)
        await feed.open()
        try:
            items, first = await _live(feed)
            await feed.layer.group_discard(feed.group, feed.channel)
            await sync_to_async(_toggle)(tenant, run.id, 2)  # the last events of a run: nothing comes after them
            return [await asyncio.wait_for(first, 10)] + await _take(items, 2)
        finally:
            await feed.close()

    items = asyncio.run(scenario())
    assert [i["type"] for i in items] == ["run.status", "run.status", "stream.idle"]
    assert _seqs(items[:2]) == [run.event_seq + 1, run.event_seq + 2]


def test_a_replay_sends_the_whole_log_then_goes_live(queued_run):
    tenant, run = queued_run
    with schema_context(tenant.schema_name):
        logged = list(RunEvent.objects.filter(run_id=run.id).order_by("seq").values_list("seq", "type"))

    async def scenario() -> list[dict]:
        feed = RunFeed(tenant_schema=tenant.schema_name, run_id=run.id, cursor=Cursor(), layer=get_channel_layer())
        await feed.open()
        try:
            items = feed.items()
            replayed = await _take(items, len(logged))
            await sync_to_async(_toggle)(tenant, run.id, 1)
            return replayed + await _take(items, 1)
        finally:
            await feed.close()

    items = asyncio.run(scenario())
    assert [(i["seq"], i["type"]) for i in items[:-1]] == logged
    assert (items[-1]["seq"], items[-1]["data"]["status"]) == (logged[-1][0] + 1, "paused")


@pytest.mark.parametrize("text", ["x", "1.2.3", "-4", "12;drop", "1." + "9" * 30])
def test_a_cursor_that_is_not_an_event_id_is_refused_with_what_to_send(text):
    with pytest.raises(InvalidCursor) as refused:
        Cursor.parse(text)
    assert refused.value.http_status == 400 and "send the 'id' of the last event you received" in \
        refused.value.message


def test_cursors_round_trip():
    assert (Cursor.parse(None), Cursor.parse(""), Cursor.parse("42"), Cursor.parse("42.17")) == (
        Cursor(0, 0), Cursor(0, 0), Cursor(42, 0), Cursor(42, 17))
    assert (str(Cursor(42, 0)), str(Cursor(42, 17))) == ("42", "42.17")
