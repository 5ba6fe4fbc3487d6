"""API fuzzing: schemathesis generates requests from our OpenAPI schema and checks every answer.

Every operation of /v1/openapi.json is called in process through Django's WSGI application (no network), on
the real test Postgres and Redis, three ways:

- with a provisioned tenant's admin key (tenant operations) or an operator key (platform operations): no
  5xx, the status code, content type and body each match what the schema documents, and an operation that
  answers 2xx refuses the same request without a credential or with an invalid one (``ignored_auth``);
- without any credential: a 401 problem document, never a 5xx.

Each generated request runs in a savepoint that is rolled back, so every example starts from the same
tenant data and nothing is committed: work scheduled "on commit" (a run's first step, a ping) is never
dispatched, so no model is called. About half the well-formed requests name real objects of the tenant
(an agent, a run waiting for approval, its checkpoint, a memory, ...) instead of random ids, so the fuzzer
gets past "not found". Registering or refreshing an MCP server may start the tests' stdio toolbox (a local
process); sockets may reach loopback only, so a generated URL never leaves the machine.

Bounded and reproducible: ``FUZZ_MAX_EXAMPLES`` examples per operation (default 12) with derandomized
generation, so CI runs the same requests every time. ``FUZZ_MAX_EXAMPLES=500`` fuzzes deeper (see
docs/security-fuzzing.md).
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, connection, transaction
from django_tenants.utils import schema_context
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode

from common.actors import Actor
from conftest import ProvisionedForTest
from data_plane import services as data_plane_services
from data_plane.models import Approval, Checkpoint, McpServer, McpTool
from data_plane.tests import media_files
from guardrails.models import GuardrailFlag
from tenants import services as tenant_services
from tenants.tests.factories import ApiKeyFactory
from tests.mcp_servers import TOOLBOX

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "12"))
UNAUTHENTICATED_MAX_EXAMPLES = int(os.environ.get("FUZZ_UNAUTHENTICATED_MAX_EXAMPLES", "3"))

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "ignored_auth")

# Not enabled: positive_data_acceptance and negative_data_rejection judge validation by the schema alone,
# while DRF coerces on purpose (0 is "0" for a string, 0 is false for a boolean, an empty filter is no filter)
# and the services refuse schema-valid input for reasons JSON Schema cannot say (an unknown scope, a slug
# already taken); both answers are 4xx problem documents that name the field to fix. unsupported_method: a
# method a path does not serve is DRF's 405, the same for every view.
ENABLED_CHECKS = {"checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}}}

# Values that broke, or could break, storage and parsing: mixed into the generated strings and numbers so
# that a few examples of every field try them (NUL broke jsonb columns; unpaired surrogates cannot be sent as UTF-8, see common/tests/test_parsers.py).
HOSTILE = {
    "hostile-strings": {"values": ["a\u0000b", "\u202eevil", "\ufeff", "😀" * 3,
                                   "' OR '1'='1", "../../etc/passwd", "%00", "{{7*7}}", " ", "x" * 5000]},
    "hostile-numbers": {"values": [2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 1e308, -1e308, 5e-324]},
}
HOSTILE_GENERATION = {"string": {"dictionary": "hostile-strings", "probability": 0.1},
                      "integer": {"dictionary": "hostile-numbers", "probability": 0.1},
                      "number": {"dictionary": "hostile-numbers", "probability": 0.1}}

CONFIG = SchemathesisConfig.from_dict({
    "dictionaries": HOSTILE,
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                   "dictionaries": HOSTILE_GENERATION},
    # one request at a time, each independent: the stateful phase chains requests (links), which the
    # savepoint around each request deliberately undoes
    "phases": {"stateful": {"enabled": False}, "coverage": {"unexpected-methods": []}},
    **ENABLED_CHECKS,
})
# Without a credential every operation must refuse before it reads its input: a few random requests each.
UNAUTHENTICATED_CONFIG = SchemathesisConfig.from_dict({
    "generation": {"max-examples": UNAUTHENTICATED_MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "phases": {"stateful": {"enabled": False}, "coverage": {"enabled": False}, "examples": {"enabled": False}},
    **ENABLED_CHECKS,
})

# The schema as /v1/openapi.json serves it (test_the_fuzzed_schema_is_the_served_one); generated here, at
# collection, because serving it needs the test database that does not exist yet.
OPENAPI = SchemaGenerator().get_schema(request=None, public=True)
APPLICATION = get_wsgi_application()
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)
schema.app = APPLICATION
unauthenticated_schema = schemathesis.openapi.from_dict(OPENAPI, config=UNAUTHENTICATED_CONFIG)
unauthenticated_schema.app = APPLICATION

PLATFORM = "^/v1/platform/"

# "METHOD /path" -> why it is expected to fail. Each entry is a real bug not fixed yet, with the reason;
# strict, so a fixed bug makes the test fail until its entry goes.
KNOWN_FAILURES: dict[str, str] = {}

EXAMPLES: Counter[str] = Counter()  # requests sent, per test and operation (reported at the end of the module)
SECONDS: Counter[str] = Counter()


# --- the harness -----------------------------------------------------------------------------------

def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Names resolve and sockets connect to this machine only: a fuzzed URL (an MCP server's, an embedding
    provider's) is refused like an unreachable host, and no traffic leaves the machine."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not _is_loopback(name):
            raise socket.gaierror(socket.EAI_NONAME, f"the API fuzz tests resolve no name but localhost ({name})")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):  # type: ignore[no-untyped-def]
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
            raise ConnectionRefusedError(f"the API fuzz tests connect to loopback only, not {address[0]}")
        return real_connect(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        patch.setattr(socket.socket, "connect", connect)
        yield


@contextmanager
def _requests_on_this_connection() -> Iterator[None]:
    """Django closes a connection at each request's start and end when it is not in autocommit, which would
    end the module's transaction; its test client disconnects that handler the same way."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@dataclass(frozen=True)
class FuzzWorld:
    tenant_key: str  # tenant A's admin key, every scope
    operator_key: str
    ids: dict[str, str]  # parameter name -> the id of a real object of tenant A


@pytest.fixture(scope="module")
def world(session_tenants, django_db_blocker) -> Iterator[FuzzWorld]:
    """The module's data, in one transaction rolled back at its end (each request also in a savepoint of
    its own), with requests served on this connection and sockets limited to loopback."""
    tenant_a, tenant_b = session_tenants
    with django_db_blocker.unblock(), _loopback_only(), _requests_on_this_connection(), transaction.atomic():
        try:
            yield FuzzWorld(tenant_key=tenant_a.key,
                            operator_key=tenant_services.operator_key_create(name="api-fuzz").plaintext,
                            ids=_seed(tenant_a, tenant_b))
        finally:
            transaction.set_rollback(True)
            connection.set_schema_to_public()


def _send(case, *, key: str | None, validate: bool = True) -> Any:  # type: ignore[no-untyped-def]
    """One request in a savepoint rolled back afterwards: every example sees the same data."""
    label = f"{'authenticated' if key else 'unauthenticated'} {case.operation.label}"
    EXAMPLES[label] += 1
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}"} if key else None
    with transaction.atomic():
        try:
            return case.call_and_validate(headers=headers) if validate else case.call(headers=headers)
        finally:
            transaction.set_rollback(True)
            SECONDS[label] += time.perf_counter() - started


def _expect_known_failure(request, case) -> None:  # type: ignore[no-untyped-def]
    reason = KNOWN_FAILURES.get(case.operation.label)
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


# --- real objects for the fuzzer to find ------------------------------------------------------------

SEEDED_AGENT = "fuzz-gated"
SEEDED_SPEC = {"instructions": "", "models": ["openai/gpt-4o-mini"], "graph": {"entry": "gate", "nodes": [
    {"id": "gate", "kind": "approval", "prompt": "ok?", "next": "end"}, {"id": "end", "kind": "end"}]}}


def _seed(tenant_a: ProvisionedForTest, tenant_b: ProvisionedForTest) -> dict[str, str]:
    """One of everything in tenant A, by the names of the parameters that take its id."""
    actor = Actor(kind="system", id="api-fuzz")
    tenant = tenant_a.tenant
    key = ApiKeyFactory(tenant=tenant, name="fuzz")
    with schema_context(tenant_a.schema):
        ping = data_plane_services.ping_create(tenant=tenant, message="fuzz", actor=actor)
        agent = data_plane_services.agent_create(tenant=tenant, name=SEEDED_AGENT, description="fuzz",
                                                 spec=SEEDED_SPEC, actor=actor)
        run = data_plane_services.run_start(tenant=tenant, agent_id=agent.id, input="fuzz", actor=actor)
        experiment = data_plane_services.experiment_create(
            tenant=tenant, agent_id=agent.id, name="fuzz-ab", actor=actor, variants=[
                {"name": "control", "weight": 1, "is_control": True},
                {"name": "terse", "weight": 1, "overrides": {"instructions": "Be terse."}}])
        server = McpServer.objects.create(name="fuzzbox", transport="stdio", command=sys.executable,
                                          args=[TOOLBOX], catalogue_version=1)
        McpTool.objects.create(server=server, name="fuzzbox__add", remote_name="add", description="Add.",
                               input_schema={"type": "object"})
        permission = data_plane_services.tool_permission_set(tenant=tenant, tool="fuzzbox__add", mode="deny",
                                                             actor=actor)
        [memory] = data_plane_services.memory_remember(
            tenant=tenant, actor=actor, drafts=[data_plane_services.memory_draft(text="Fuzz likes tea.",
                                                                                 end_user="fuzz")])
        attachment = data_plane_services.attachment_upload(
            tenant=tenant, actor=actor, stream=io.BytesIO(media_files.png()), filename="fuzz.png",
            declared_media_type="image/png")
        flag = GuardrailFlag.objects.create(agent=SEEDED_AGENT, point="input", check_name="pii", score=1.0,
                                            reasons=["pii.email"], message="An email address.")
        ids = {"key_id": key.id, "ping_id": ping.id, "agent_id": agent.id, "run_id": run.id,
               "source_run_id": run.id, "checkpoint_id": Checkpoint.objects.get(run=run).id,
               "approval_id": Approval.objects.get(run=run).id, "server_id": server.id,
               "permission_id": permission.id, "memory_id": memory.memory.id, "attachment_id": attachment.id,
               "flag_id": flag.id, "experiment_id": experiment.id, "agent": SEEDED_AGENT, "slug": tenant_b.tenant.slug}
    return {name: str(value) for name, value in ids.items()}


def _aim_at_seeded(case, ids: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """In about half the well-formed requests, ids name the seeded objects instead of random ones.

    Which half is decided by the generated value itself, so the same seed sends the same requests."""
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return
    containers = [case.path_parameters, case.query]
    if isinstance(case.body, dict):
        containers.append(case.body)
    for container in containers:
        if not container:
            continue
        for name, value in list(container.items()):
            if name in ids and isinstance(value, str) and zlib.crc32(value.encode()) % 2 == 0:
                container[name] = ids[name]


# --- the tests ---------------------------------------------------------------------------------------

def test_the_fuzzed_schema_is_the_served_one(client, db):
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.json() == OPENAPI


FUZZ_SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                HealthCheck.filter_too_much, HealthCheck.data_too_large])


@schema.exclude(path_regex=PLATFORM).parametrize()
@FUZZ_SETTINGS
def test_tenant_operation(case, request, world):
    _expect_known_failure(request, case)
    _aim_at_seeded(case, world.ids)
    _send(case, key=world.tenant_key)


@schema.include(path_regex=PLATFORM).parametrize()
@FUZZ_SETTINGS
def test_platform_operation(case, request, world):
    _expect_known_failure(request, case)
    _aim_at_seeded(case, world.ids)
    _send(case, key=world.operator_key)


@unauthenticated_schema.parametrize()
@FUZZ_SETTINGS
def test_unauthenticated_call(case, world):
    # given a request without a credential (whatever the schema generated for it)
    case.headers.pop("Authorization", None)
    # when
    response = _send(case, key=None, validate=False)
    # then: an operation that takes no credential only must not fail
    if not OPENAPI["paths"][case.path][case.method.lower()].get("security"):
        assert response.status_code < 500, response.text
        return
    # refused before anything else, unless the path itself does not route (a malformed id)
    expected = (401, 404) if case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH) else (401,)
    assert response.status_code in expected, response.text
    assert response.headers["content-type"] == ["application/problem+json"]
    # the signed-in user's own endpoints (/v1/auth/...) take a session only, and say so
    refused = "not_signed_in" if case.path.startswith("/v1/auth/") else "not_authenticated"
    assert response.json()["code"] == {401: refused, 404: "not_found"}[response.status_code]


@pytest.fixture(scope="module", autouse=True)
def _report_examples() -> Iterator[None]:
    yield
    for kind in ("authenticated", "unauthenticated"):
        labels = [label for label in EXAMPLES if label.startswith(kind + " ")]
        if labels:
            sys.stdout.write(f"\nAPI fuzz, {kind}: {len(labels)} operations, "
                             f"{sum(EXAMPLES[label] for label in labels)} requests in "
                             f"{sum(SECONDS[label] for label in labels):.1f} s; slowest:\n")
            for label in sorted(labels, key=SECONDS.__getitem__, reverse=True)[:8]:
                sys.stdout.write(f"  {SECONDS[label]:6.1f} s {EXAMPLES[label]:5d} requests  {label}\n")
