from __future__ import annotations

import pytest


def test_healthz_needs_nothing(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_postgres_redis_and_the_broker(client, db):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert set(response.json()["checks"]) == {"postgres", "redis", "broker"}
    assert all(check["ok"] for check in response.json()["checks"].values())


@pytest.mark.parametrize("setting", ["REDIS_URL", "CELERY_BROKER_URL"])
def test_readyz_is_503_naming_what_is_down(client, db, settings, setting):
    # given: a Redis URL nothing listens on (a real refused connection, not a mock)
    setattr(settings, setting, "redis://127.0.0.1:1/0")
    # when
    response = client.get("/readyz")
    # then
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "not_ready"
    failing = {name for name, check in body["checks"].items() if not check["ok"]}
    assert failing == ({"redis"} if setting == "REDIS_URL" else {"broker"})
    assert ", ".join(sorted(failing)) in body["detail"]
