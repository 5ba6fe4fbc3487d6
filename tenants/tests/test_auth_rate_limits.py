"""Failed authentications are counted per client address and per presented key id in the tests' Redis."""

from __future__ import annotations

import logging
import random
import secrets

import jwt
import pytest
import redis

from conftest import bearer
from tenants.asgi import stream_principal
from tenants.authentication import auth_limiter


@pytest.fixture
def low_limits(settings):
    settings.AUTH_RATE_LIMIT_PER_ADDRESS = "3/minute"
    settings.AUTH_RATE_LIMIT_PER_CREDENTIAL = "2/minute"
    return settings


def an_address() -> str:
    """An address no other test uses, so windows never overlap."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def wrong_secret_of(key: str) -> str:
    prefix, lookup_id, _ = key.split("_")
    return f"{prefix}_{lookup_id}_{secrets.token_hex(20)}"


def a_stranger_key(prefix: str = "agp") -> str:
    return f"{prefix}_{secrets.token_hex(6)}_{secrets.token_hex(20)}"


def test_an_address_past_its_failures_gets_429_with_retry_after(client, tenant_a, low_limits):
    # given: three failures from one address (the limit)
    address = an_address()
    for _ in range(3):
        assert client.get("/v1/tenant", REMOTE_ADDR=address, **bearer(a_stranger_key())).status_code == 401
    # when: the fourth
    response = client.get("/v1/tenant", REMOTE_ADDR=address, **bearer(a_stranger_key()))
    # then
    assert response.status_code == 429
    assert response.json()["code"] == "rate_limited"
    assert address in response.json()["detail"]
    assert 1 <= int(response["Retry-After"]) <= 60
    # and the address is refused before its credential is checked, even a valid one; others are not
    assert client.get("/v1/tenant", REMOTE_ADDR=address, **bearer(tenant_a.key)).status_code == 429
    assert client.get("/v1/tenant", REMOTE_ADDR=an_address(), **bearer(tenant_a.key)).status_code == 200


def test_valid_keys_are_never_counted(client, tenant_a, low_limits):
    address = an_address()
    statuses = [client.get("/v1/tenant", REMOTE_ADDR=address, **bearer(tenant_a.key)).status_code
                for _ in range(10)]
    assert statuses == [200] * 10
    assert client.get("/v1/tenant", REMOTE_ADDR=address, **bearer(a_stranger_key())).status_code == 401


def test_a_key_id_guessed_from_many_addresses_gets_429_but_its_owner_gets_in(client, tenant_a, low_limits):
    # given: two wrong secrets for the tenant's key id, from two addresses (the per-credential limit)
    for _ in range(2):
        response = client.get("/v1/tenant", REMOTE_ADDR=an_address(), **bearer(wrong_secret_of(tenant_a.key)))
        assert response.status_code == 401
    # when: a third, from yet another address
    refused = client.get("/v1/tenant", REMOTE_ADDR=an_address(), **bearer(wrong_secret_of(tenant_a.key)))
    # then: refused for the key id; the owner, with the right secret, is not locked out
    assert refused.status_code == 429
    assert f"agp:{tenant_a.key.split('_')[1]}" in refused.json()["detail"]
    assert "Retry-After" in refused
    assert client.get("/v1/tenant", REMOTE_ADDR=an_address(), **bearer(tenant_a.key)).status_code == 200
    auth_limiter().clear(credential_id=f"agp:{tenant_a.key.split('_')[1]}")


def test_bad_operator_keys_are_limited_too(client, db, low_limits):
    address = an_address()
    statuses = [client.get("/v1/platform/tenants", REMOTE_ADDR=address, **bearer(a_stranger_key("agpop"))).status_code
                for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


def test_bad_stream_tokens_are_limited_on_streams(db, low_limits):
    # given: a forged stream token (signed with the wrong secret) for the streams' entry point
    forged = jwt.encode({"sub": secrets.token_hex(8), "tid": "x", "aud": "agentplane:stream"}, "not-our-secret" * 4,
                        algorithm="HS256")
    address = an_address()
    # when
    errors = [stream_principal(authorization=None, access_token=forged, address=address)["auth_error"]
              for _ in range(3)]
    # then: the credential limit (2) trips on the third
    assert [error["status"] for error in errors] == [401, 401, 429]
    assert errors[2]["code"] == "rate_limited"
    assert errors[2]["retry_after"] >= 1


def test_a_trip_is_logged_once_without_the_secret_and_counted_in_namespaced_keys(client, db, low_limits, caplog,
                                                                                settings):
    address = an_address()
    key = a_stranger_key()
    with caplog.at_level(logging.WARNING, logger="agentplane.security"):
        for _ in range(6):
            client.get("/v1/tenant", REMOTE_ADDR=address, **bearer(key))
    trips = [record.getMessage() for record in caplog.records if "rate limit tripped" in record.getMessage()]
    # the key id's limit (2) trips on the third failure, the address's (3) on the fourth: each logged once
    assert [trip.split(")")[0] for trip in trips] == [
        f"Authentication rate limit tripped (credential agp:{key.split('_')[1]}",
        f"Authentication rate limit tripped (address {address}"]
    assert all(address in trip and key.rsplit("_", 1)[1] not in trip for trip in trips)
    # the windows live in the tests' Redis database, under this checkout's prefix
    stored = redis.Redis.from_url(settings.RATE_LIMIT_REDIS_URL).keys(f"{settings.RATE_LIMIT_KEY_PREFIX}*{address}*")
    assert stored


def test_redis_down_lets_authentication_through(client, tenant_a, settings):
    # given: a limiter whose Redis does not answer (nothing listens on port 1)
    settings.RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"
    # when / then: a valid key still works and a bad one is a plain 401
    assert client.get("/v1/tenant", **bearer(tenant_a.key)).status_code == 200
    assert client.get("/v1/tenant", **bearer(a_stranger_key())).status_code == 401
