"""One long-lived asyncio loop per worker process, in a background thread.

Steps are sync Celery tasks; their IO (model streams, tool calls, channel-layer sends) is async. Running
it all on one persistent loop lets connections (HTTP sessions, Redis pools) live across steps and lets
the waits of many concurrent steps share one thread. Forked children start their own loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_owner_pid: int | None = None

# Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005). Every step hands
# work to the IO loop's thread and takes the result back, several times; a thread woken by the other (a
# socket write to the loop's self-pipe, a future's result) waited up to the whole interval for the GIL, and
# the per-step benchmark spent a quarter of its time there. 0.5 ms cut a step's overhead by 35-40 % on a
# loaded 2-core machine. AGENTPLANE_GIL_SWITCH_INTERVAL changes it (0 keeps Python's).
SWITCH_INTERVAL = float(os.environ.get("AGENTPLANE_GIL_SWITCH_INTERVAL", "0.0005"))


def _shorten_switch_interval() -> None:
    if 0 < SWITCH_INTERVAL < sys.getswitchinterval():
        sys.setswitchinterval(SWITCH_INTERVAL)


def _get_loop() -> asyncio.AbstractEventLoop:
    global _loop, _owner_pid
    with _lock:
        if _loop is None or _owner_pid != os.getpid() or not _loop.is_running():
            _shorten_switch_interval()  # a process with an IO loop thread hands the GIL over sooner
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()

            threading.Thread(target=serve, name="agentplane-io-loop", daemon=True).start()
            started.wait()
            _loop, _owner_pid = loop, os.getpid()
        return _loop


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the process's IO loop and wait for its result (from any non-loop thread)."""
    return asyncio.run_coroutine_threadsafe(coroutine, _get_loop()).result()


def spawn(make_coroutine: Any) -> None:
    """Start ``make_coroutine()`` on the IO loop and return at once (its failure is logged)."""
    async def run() -> None:
        import logging

        try:
            await make_coroutine()
        except Exception:
            logging.getLogger(__name__).warning("Background IO failed", exc_info=True)

    asyncio.run_coroutine_threadsafe(run(), _get_loop())


_background: asyncio.Queue | None = None  # type: ignore[type-arg]
_background_loop: asyncio.AbstractEventLoop | None = None


def submit_in_order(make_coroutine: Any) -> None:
    """Run ``make_coroutine()`` on the IO loop without waiting for it; submissions from this process run
    one after another in submission order (a run's events must reach subscribers in sequence)."""
    global _background, _background_loop
    loop = _get_loop()
    with _lock:
        if _background is None or _background_loop is not loop:
            queue: asyncio.Queue = asyncio.Queue()  # type: ignore[type-arg]
            _background, _background_loop = queue, loop
            asyncio.run_coroutine_threadsafe(_drain(queue), loop)
        queue = _background
    loop.call_soon_threadsafe(queue.put_nowait, make_coroutine)


async def _drain(queue: asyncio.Queue) -> None:  # type: ignore[type-arg]
    import logging

    while True:
        make_coroutine = await queue.get()
        try:
            await make_coroutine()
        except Exception:  # a background send is best effort; its caller is long gone
            logging.getLogger(__name__).warning("Background IO failed", exc_info=True)


def shutdown() -> None:
    """Stop the IO loop and its worker threads (their database connections close with them)."""
    global _loop
    with _lock:
        loop, _loop = _loop, None
    if loop is None or not loop.is_running():
        return
    asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
