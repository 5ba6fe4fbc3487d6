"""One channel-layer subscription per run per process, fanned out to that process's subscribers.

Without it, every websocket following a run would hold its own channel in the run's group, and every token
would cost one Redis write and one Redis read per subscriber. With it, a Daphne process receives each
message of a run once and hands it to each local subscriber's bounded queue. A subscriber whose queue is
full is marked ``lagged`` (its feed tells the client to resume from its cursor); the others and the run
never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

logger = logging.getLogger(__name__)

QUEUE_SIZE = 2000


class Subscription:
    """One subscriber's view of a run's live messages, in order, until ``lagged``."""

    def __init__(self, room: _Room, size: int) -> None:
        self.room = room
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=size)
        self.lagged = False

    @property
    def channel(self) -> str:
        """The process's channel in the run's group (shared by this process's subscribers of the run)."""
        assert self.room.channel is not None
        return self.room.channel

    async def get(self) -> dict[str, Any]:
        return await self.queue.get()

    def offer(self, message: dict[str, Any]) -> None:
        if self.lagged:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.lagged = True


class _Room:
    def __init__(self, group: str) -> None:
        self.group = group
        self.channel: str | None = None
        self.subscribers: set[Subscription] = set()
        self.ready = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None


CLOSE_SECONDS = 5.0


class Hub:
    """The rooms of one event loop (one process's Daphne loop; each test's own loop)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.rooms: dict[str, _Room] = {}

    async def subscribe(self, group: str, *, size: int = QUEUE_SIZE) -> Subscription:
        """A new subscription to the group: receives every message sent to it from when this returns."""
        room = self.rooms.get(group)
        if room is None:
            room = self.rooms[group] = _Room(group)
            subscription = Subscription(room, size)
            room.subscribers.add(subscription)
            try:
                room.channel = await self.layer.new_channel()
                await self.layer.group_add(group, room.channel)
            except BaseException:
                del self.rooms[group]
                room.ready.set()
                raise
            room.pump = asyncio.create_task(self._pump(room))
            room.ready.set()
            return subscription
        subscription = Subscription(room, size)
        room.subscribers.add(subscription)
        await room.ready.wait()
        if room.pump is None:  # its opening failed: try afresh
            room.subscribers.discard(subscription)
            return await self.subscribe(group, size=size)
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        room = subscription.room
        room.subscribers.discard(subscription)
        if room.subscribers or self.rooms.get(room.group) is not room:
            return
        del self.rooms[room.group]
        # Bounded: a receive that does not end on cancellation, or a Redis that does not answer, must not hold
        # up a closing stream (the group's membership expires with the channel layer's group_expiry anyway).
        if room.pump is not None:
            room.pump.cancel()
            _, pending = await asyncio.wait({room.pump}, timeout=CLOSE_SECONDS)
            if pending:
                logger.warning("The receiver of %s did not stop within %s s", room.group, CLOSE_SECONDS)
        if room.channel is not None:
            try:
                await asyncio.wait_for(self.layer.group_discard(room.group, room.channel), CLOSE_SECONDS)
            except Exception as exc:  # best effort (a timeout, a Redis error): the stream closes either way
                logger.warning("Leaving %s failed (%s); its membership will expire", room.group, exc)

    async def _pump(self, room: _Room) -> None:
        assert room.channel is not None
        while True:
            try:
                message = await self.layer.receive(room.channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis hiccup: the feeds fill what they miss from the database
                logger.warning("Receiving for %s failed; retrying", room.group, exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for subscription in list(room.subscribers):
                subscription.offer(message)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub_for(layer: Any) -> Hub:
    """The running loop's hub. It receives through a channel-layer instance of its own, made like ``layer``:
    channels_redis allows one event loop to receive per instance, and a process may run several loops (a
    worker's IO loop, a test's)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

        own = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER) if layer is channel_layers[DEFAULT_CHANNEL_LAYER] \
            else layer
        hub = _hubs[loop] = Hub(own)
    return hub
