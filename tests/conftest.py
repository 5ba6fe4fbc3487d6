from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

from tests.processes import REPO, celery_worker_args, daphne_args, free_port, log_tail, process_env, running, \
    wait_for

LOG_DIR = REPO / ".data" / "test-logs"


@pytest.fixture(scope="session")
def worker_process(django_db_setup, django_db_blocker) -> Iterator[Path]:
    """A real Celery worker (prefork, one child) on the test database and the test broker database."""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # a dedicated test database: stale tasks only
    log = LOG_DIR / "celery-worker.log"
    with django_db_blocker.unblock():
        env = process_env()
    with running(celery_worker_args(name="test-worker"), log_path=log, env=env) as process:
        wait_for(lambda: "ready." in log.read_text(errors="replace") if log.exists() else None, timeout=60,
                 what=f"the Celery worker to start; log:\n{log_tail(log)}")
        yield log
        assert process.poll() is None, f"the worker died during the tests; log:\n{log_tail(log)}"


@pytest.fixture(scope="session")
def daphne_url(django_db_setup, django_db_blocker) -> Iterator[str]:
    """A real Daphne server (HTTP and websockets) on the test database."""
    import httpx

    port = free_port()
    log = LOG_DIR / "daphne.log"
    with django_db_blocker.unblock():
        env = process_env()
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    with running(daphne_args(port=port), log_path=log, env=env):
        wait_for(answers, timeout=60, what=f"Daphne to answer; log:\n{log_tail(log)}", interval=0.2)
        yield url
