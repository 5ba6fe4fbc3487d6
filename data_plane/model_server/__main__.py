"""``python -m data_plane.model_server --host 127.0.0.1 --port 8011``: serve until SIGINT or SIGTERM.

The first line on stdout is ``listening on http://HOST:PORT`` (with the bound port when ``--port 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from data_plane.model_server.app import create_app, serve
from data_plane.model_server.scenarios import InvalidScenario, builtin_book, load_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_plane.model_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011, help="0 picks a free port")
    parser.add_argument("--scenarios", type=Path, action="append", default=[],
                        help="a directory of extra *.json scenarios (repeatable; same name replaces a built-in)")
    args = parser.parse_args(argv)
    book = builtin_book()
    try:
        for directory in args.scenarios:
            for scenario in load_dir(directory):
                book.register(scenario)
    except InvalidScenario as exc:
        print(f"invalid scenario: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve_until_signalled(create_app(book), host=args.host, port=args.port))
    return 0


async def _serve_until_signalled(app, *, host: str, port: int) -> None:
    runner, bound = await serve(app, host=host, port=port)
    print(f"listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
