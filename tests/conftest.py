from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

from tests.processes import LOG_DIR, celery_worker_args, daphne_args, free_port, log_tail, process_env, running, \
    wait_for


@pytest.fixture(scope="session")
def model_server() -> Iterator[str]:
    """Our scripted OpenAI-compatible model server, as its own process; yields its /v1 base URL."""
    log = LOG_DIR / "model-server.log"
    port = free_port()
    with running([sys.executable, "-m", "data_plane.model_server", "--host", "127.0.0.1", "--port", str(port)],
                 log_path=log, env=dict(os.environ)):
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/healthz"), timeout=30, what=f"the model server; log:\n{log_tail(log)}",
                 interval=0.1)
        yield f"{url}/v1"


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def runtime_env(model_server: str, **extra: str) -> dict[str, str]:
    """The environment of test workers: the test database, and our model server as the LLM provider."""
    return process_env(**{"LLM_API_BASE": model_server, "LLM_LOCAL_PRICES": "openai/plan-act-reflect,openai/metered-e2e",
                          "RUN_LEASE_SECONDS": "3", **extra})


@pytest.fixture(scope="session")
def worker_process(django_db_setup, django_db_blocker, model_server) -> Iterator[Path]:
    """A real Celery worker (prefork, one child) on the test database and the test broker database, consuming the
    default queue and every tier's run queue."""
    # stale tasks only: the default queue and the tiers' run queues, which this worker consumes (no -Q: the
    # settings' CELERY_TASK_QUEUES)
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(*(queue.name for queue in settings.CELERY_TASK_QUEUES))
    log = LOG_DIR / "celery-worker.log"
    with django_db_blocker.unblock():
        env = runtime_env(model_server)
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
