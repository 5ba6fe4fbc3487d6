"""Real processes for end-to-end tests: a Celery worker and a Daphne server on the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from django.db import connection

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The suite runs in pytest-xdist workers (the Makefile's -n): each one's processes log to a folder of its own.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
LOG_DIR = REPO / ".data" / "test-logs" / XDIST_WORKER
T = TypeVar("T")


def test_database_url() -> str:
    """The URL of the database pytest-django created, for processes started by a test."""
    settings = connection.settings_dict
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    return (f"postgres://{settings['USER']}{password}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}")


def process_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="control_plane.settings.test", DATABASE_URL=test_database_url(),
               PYTHONUNBUFFERED="1", **extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"Timed out after {timeout}s waiting for {what}.")


@contextmanager
def running(args: list[str], *, log_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run a process for the duration of the block, then stop it (TERM, then KILL)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)


def celery_worker_args(*, name: str, concurrency: int = 1) -> list[str]:
    return [str(BIN / "celery"), "-A", "control_plane", "worker", "--loglevel=INFO",
            f"--hostname={name}@%h-{XDIST_WORKER}", f"--concurrency={concurrency}", "--pool=prefork",
            "--without-gossip", "--without-mingle"]


def daphne_args(*, port: int) -> list[str]:
    return [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "control_plane.asgi:application"]


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
