"""Websockets through a real Daphne, a real Celery worker and the Redis channel layer."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from django_tenants.utils import schema_context
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane.tests.factories import PingFactory
from data_plane.tasks import ping_answer_task
from tenants import services as tenant_services
from tenants.tests.factories import ApiKeyFactory

pytestmark = [pytest.mark.server, pytest.mark.worker]


@pytest.fixture
def committed_pair(committed):
    pair = provision_for_test("ws-a"), provision_for_test("ws-b")
    yield pair
    for provisioned in pair:
        destroy_tenant(provisioned.tenant)


def ws_url(daphne_url: str, path: str) -> str:
    return daphne_url.replace("http://", "ws://") + path


async def receive_all(url: str, key: str | None, *, timeout: float = 30) -> tuple[list[dict], int]:
    """Every message until the server closes, and the close code."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    messages = []
    async with connect(url, additional_headers=headers, open_timeout=10) as ws:
        try:
            async with asyncio.timeout(timeout):
                async for raw in ws:
                    messages.append(json.loads(raw))
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        return messages, ws.close_code


def test_subscriber_sees_the_ping_go_from_queued_to_completed(daphne_url, worker_process, committed_pair):
    # given: a ping whose task is not sent yet
    tenant = committed_pair[0]
    with schema_context(tenant.schema):
        ping = PingFactory()

    async def scenario() -> tuple[list[dict], int]:
        listener = asyncio.create_task(receive_all(ws_url(daphne_url, f"/v1/pings/{ping.id}/events"), tenant.key))
        await asyncio.sleep(0.5)  # the subscriber has received the queued state
        # when: the worker gets the task
        await asyncio.to_thread(ping_answer_task.delay, tenant_schema=tenant.schema, ping_id=str(ping.id))
        return await listener

    messages, code = asyncio.run(scenario())
    # then
    assert [m["ping"]["status"] for m in messages] == ["queued", "completed"]
    assert messages[-1]["ping"]["observed_schema"] == tenant.schema
    assert code == 1000


@pytest.mark.parametrize("key_of, expected_code, expected_error", [
    ("none", 4401, "invalid_credentials"),
    ("other", 4404, "ping_not_found"),
    ("garbage", 4401, "invalid_credentials"),
])
def test_a_client_cannot_subscribe_to_another_tenants_ping(daphne_url, committed_pair, key_of, expected_code,
                                                            expected_error):
    owner, other = committed_pair
    with schema_context(owner.schema):
        ping = PingFactory()
    key = {"none": None, "other": other.key, "garbage": "agp_000000000000_" + "x" * 40}[key_of]
    messages, code = asyncio.run(receive_all(ws_url(daphne_url, f"/v1/pings/{ping.id}/events"), key))
    assert code == expected_code
    assert messages == [{"type": "error", "code": expected_error, "message": messages[0]["message"]}]


def test_a_key_without_the_scope_is_closed_with_4403(daphne_url, committed_pair):
    owner = committed_pair[0]
    limited = ApiKeyFactory(tenant=owner.tenant, scopes=["tenant:read"])
    messages, code = asyncio.run(receive_all(ws_url(daphne_url, f"/v1/pings/{uuid.uuid4()}/events"),
                                             limited.plaintext))
    assert code == 4403
    assert messages[0]["code"] == "missing_scope"


def test_a_suspended_tenant_is_closed_with_4403(daphne_url, committed_pair):
    owner = committed_pair[0]
    tenant_services.tenant_suspend(tenant=owner.tenant, reason="unpaid", actor=TEST_ACTOR)
    messages, code = asyncio.run(receive_all(ws_url(daphne_url, f"/v1/pings/{uuid.uuid4()}/events"), owner.key))
    assert code == 4403
    assert messages[0]["code"] == "tenant_suspended"
