"""The channel layer's group send, against the real Redis: what channels_redis's own receive, group_add and
group_discard see is what the library's group send would have left."""

from __future__ import annotations

import asyncio
import time
import uuid

from channels.layers import get_channel_layer

from common.channel_layer import FastGroupRedisChannelLayer


def test_the_configured_layer_is_ours():
    assert isinstance(get_channel_layer(), FastGroupRedisChannelLayer)


def test_a_group_send_reaches_each_member_once_and_no_one_else():
    async def scenario():
        layer = get_channel_layer()
        group, other = f"g-{uuid.uuid4().hex}", f"g-{uuid.uuid4().hex}"
        first, second, outsider, local = (await layer.new_channel(), await layer.new_channel(),
                                          await layer.new_channel(), f"{layer.client_prefix}!{uuid.uuid4().hex}")
        for channel in (first, second, local):
            await layer.group_add(group, channel)
        await layer.group_add(other, outsider)
        await layer.group_send(f"g-{uuid.uuid4().hex}", {"type": "nobody.listens"})  # an empty group: nothing
        await layer.group_send(group, {"type": "run.events", "events": [{"seq": 1}]})
        got = [await asyncio.wait_for(layer.receive(channel), 5) for channel in (first, second, local)]
        await layer.group_discard(group, second)
        await layer.group_send(group, {"type": "run.events", "events": [{"seq": 2}]})
        after = await asyncio.wait_for(layer.receive(first), 5)
        try:
            await asyncio.wait_for(layer.receive(second), 0.5)
            left = "received"
        except asyncio.TimeoutError:
            left = "nothing"
        try:
            await asyncio.wait_for(layer.receive(outsider), 0.5)
            outside = "received"
        except asyncio.TimeoutError:
            outside = "nothing"
        return got, after, left, outside

    got, after, left, outside = asyncio.run(scenario())
    assert got == [{"type": "run.events", "events": [{"seq": 1}]}] * 3
    assert after == {"type": "run.events", "events": [{"seq": 2}]}
    assert (left, outside) == ("nothing", "nothing")


def test_expired_members_are_dropped_and_a_full_channel_is_skipped():
    async def scenario():
        layer = get_channel_layer()
        group = f"g-{uuid.uuid4().hex}"
        # plain channels: a process's own ("specific.…!…") share one Redis key, and so one capacity
        stale, full, live = [f"test.{uuid.uuid4().hex}" for _ in range(3)]
        for channel in (stale, full, live):
            await layer.group_add(group, channel)
        connection = layer.connection(layer.consistent_hash(group))
        # a member added longer ago than the group expiry: dropped from the group by the next send
        await connection.zadd(layer._group_key(group), {stale: int(time.time()) - layer.group_expiry - 10})
        # a channel at its capacity: skipped (the others still get the message)
        capacity = layer.get_capacity(full)
        for index in range(capacity):
            await layer.send(full, {"type": "filler", "n": index})
        await layer.group_send(group, {"type": "run.events", "events": []})
        members = [name.decode() for name in await connection.zrange(layer._group_key(group), 0, -1)]
        received = await asyncio.wait_for(layer.receive(live), 5)
        queued = await connection.zcard(layer.prefix + full)
        await connection.delete(layer.prefix + full, layer._group_key(group))
        return members, received, queued, capacity

    members, received, queued, capacity = asyncio.run(scenario())
    assert len(members) == 2  # the stale one is gone
    assert received == {"type": "run.events", "events": []}
    assert queued == capacity  # the full channel got nothing more
