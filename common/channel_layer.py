"""channels_redis's Redis channel layer with a cheaper group send, and one a thread can make itself.

channels_redis 4 sends to a group in four round trips: drop the group's expired members, read the members,
drop each member channel's expired messages (a pipeline), then add the message to each channel (a script).
Every committed step of every run publishes its events to the run's group, most of them with nobody
listening, so on a step worker that is two Redis round trips a step for nothing, on the IO loop the steps
share (publishing cost the per-step benchmark 0.7 ms a step). Here it is one script for the members (none:
done) and one script that drops the expired messages and adds the message, with the same keys, scores, capacity
and expiry rules and the same message format, so the library's receive, group_add and group_discard work
unchanged. It leans on the library's own helpers (``_map_channel_keys_to_connection``, ``_group_key``,
``connection``), which is why channels-redis is pinned exactly in pyproject.toml; common/tests/
test_channel_layer.py checks the sends against the library's receive.

``group_send_blocking`` is the same send from a plain (non-async) thread, with a synchronous Redis client:
a step's thread publishing its commit's events itself waits one round trip, where handing the send to the
IO loop's thread cost it more (on a 2-core machine every hand-off of the interpreter lock between the two
threads costs tens of microseconds, and a send took several).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from channels_redis.core import RedisChannelLayer

logger = logging.getLogger(__name__)

# KEYS[1]: the group's sorted set of channels (scored by when each was added); ARGV[1]: the oldest score kept
_MEMBERS = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: channel keys; ARGV: their messages, their capacities, then the oldest message score kept, the message's
# score (now) and the channel key's expiry. Returns how many channels were over capacity (not sent to).
_SEND = """
local count = #KEYS
local oldest, now, expiry = ARGV[2 * count + 1], ARGV[2 * count + 2], ARGV[2 * count + 3]
local over_capacity = 0
for i = 1, count do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, oldest)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + count]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over_capacity = over_capacity + 1
    end
end
return over_capacity
"""


class FastGroupRedisChannelLayer(RedisChannelLayer):
    # A blocking send gives up after this long (seconds): the database is the truth, a publish is best effort.
    blocking_timeout = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._blocking_clients: dict[int, redis.Redis] = {}
        self._blocking_lock = threading.Lock()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every channel in ``group``: one round trip when the group is empty, two when not
        (per Redis host of its channels), instead of four."""
        members = await self.connection(self.consistent_hash(group)).eval(_MEMBERS, 1, *self._members_of(group))
        for index, args in self._sends(members, message):
            self._note_over_capacity(await self.connection(index).eval(_SEND, *args), len(members), group)

    def group_send_blocking(self, group: str, message: dict[str, Any]) -> None:
        """``group_send`` from a thread without an event loop: the same scripts, keys and message, through a
        synchronous client (thread-safe, one pool per Redis host). Raises what Redis raises."""
        members = self._blocking(self.consistent_hash(group)).eval(_MEMBERS, 1, *self._members_of(group))
        for index, args in self._sends(members, message):
            self._note_over_capacity(self._blocking(index).eval(_SEND, *args), len(members), group)

    def _members_of(self, group: str) -> tuple[str, int]:
        """_MEMBERS' key and argument for ``group``."""
        assert self.require_valid_group_name(group), "Group name not valid"
        return self._group_key(group), int(time.time()) - self.group_expiry

    def _sends(self, members: list[bytes], message: dict[str, Any]) -> list[tuple[int, list[Any]]]:
        """For each Redis host of the members' channels: its index and _SEND's key count, keys and arguments."""
        if not members:
            return []
        by_connection, messages, capacities = self._map_channel_keys_to_connection(
            [name.decode("utf8") for name in members], message)
        oldest, now = int(time.time()) - int(self.expiry), time.time()
        return [(index, [len(keys), *keys, *(messages[key] for key in keys), *(capacities[key] for key in keys),
                         oldest, now, self.expiry]) for index, keys in by_connection.items()]

    @staticmethod
    def _note_over_capacity(over_capacity: int, members: int, group: str) -> None:
        if over_capacity > 0:
            logger.info("%s of %s channels over capacity in group %s", over_capacity, members, group)

    def _blocking(self, index: int) -> redis.Redis:
        client = self._blocking_clients.get(index)
        if client is None:
            with self._blocking_lock:
                client = self._blocking_clients.get(index)
                if client is None:
                    host = dict(self.hosts[index])
                    if "master_name" in host:
                        raise NotImplementedError("A blocking group send through Redis Sentinel is not supported.")
                    host.update(socket_timeout=self.blocking_timeout, socket_connect_timeout=self.blocking_timeout)
                    address = host.pop("address", None)
                    pool = redis.ConnectionPool.from_url(address, **host) if address else redis.ConnectionPool(**host)
                    client = self._blocking_clients[index] = redis.Redis(connection_pool=pool)
        return client
