"""OAuth through a real Daphne: a client registers, gets a JWT from /oauth/token over HTTP, calls the API and
follows a ping over a websocket with it; the same token in a URL, or in another tenant, is refused."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from django_tenants.utils import schema_context
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import destroy_tenant, provision_for_test
from data_plane.tests.factories import PingFactory

pytestmark = [pytest.mark.server]


@pytest.fixture
def committed_pair(committed):
    pair = provision_for_test("oauth-a"), provision_for_test("oauth-b")
    yield pair
    for provisioned in pair:
        destroy_tenant(provisioned.tenant)


async def first_messages(url: str, token: str | None, *, count: int) -> tuple[list[dict], int | None]:
    """Up to ``count`` messages, then the close code (None when we closed first)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    messages: list[dict] = []
    async with connect(url, additional_headers=headers, open_timeout=10) as ws:
        try:
            async with asyncio.timeout(15):
                while len(messages) < count:
                    messages.append(json.loads(await ws.recv()))
        except ConnectionClosed:
            return messages, ws.close_code
    return messages, None


def test_a_client_credentials_token_works_over_http_and_websockets(daphne_url, committed_pair):
    # given: a ping in each tenant and a client of A registered over HTTP
    owner, other = committed_pair
    with schema_context(owner.schema):
        ping = PingFactory()
    with schema_context(other.schema):
        other_ping = PingFactory()
    with httpx.Client(base_url=daphne_url, timeout=30) as http:
        registered = http.post("/v1/oauth/applications", headers={"Authorization": f"Bearer {owner.key}"},
                               json={"name": "watcher", "grant_type": "client_credentials",
                                     "scopes": ["tenant:read", "pings:read"]})
        app = registered.json()
        issued = http.post("/oauth/token", data={"grant_type": "client_credentials"},
                           auth=(app["client_id"], app["client_secret"]))
        token = issued.json()["access_token"]
        tenant = http.get("/v1/tenant", headers={"Authorization": f"Bearer {token}"})
    ws = daphne_url.replace("http://", "ws://")
    # when
    watched, _ = asyncio.run(first_messages(f"{ws}/v1/pings/{ping.id}/events", token, count=1))
    in_url, in_url_code = asyncio.run(first_messages(f"{ws}/v1/pings/{ping.id}/events?access_token={token}", None,
                                                     count=2))
    elsewhere, elsewhere_code = asyncio.run(first_messages(f"{ws}/v1/pings/{other_ping.id}/events", token, count=2))
    # then
    assert (registered.status_code, issued.status_code) == (201, 200)
    assert (tenant.status_code, tenant.json()["id"]) == (200, str(owner.tenant.id))
    assert (watched[0]["ping"]["id"], watched[0]["ping"]["status"]) == (str(ping.id), "queued")
    assert (in_url_code, in_url[0]["code"]) == (4401, "invalid_credentials")
    assert "Never put an OAuth access token in a URL" in in_url[0]["message"]
    assert (elsewhere_code, elsewhere[0]["code"]) == (4404, "ping_not_found")
