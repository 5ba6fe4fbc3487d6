"""Fixtures shared by every test: real Postgres (a test database with tenant schemas), real Redis.

Tenant schemas are created once per session by the real provisioning service and committed, like
django-tenants' FastTenantTestCase; each `db` test then runs in a transaction that is rolled back.
Tests that need committed data (real workers, a real Daphne) provision tenants of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from django.db import connection
from django.test import Client

from common.actors import Actor
from tenants import services as tenant_services
from tenants.models import Tenant

TEST_ACTOR = Actor(kind="system", id="tests")


@dataclass(frozen=True)
class ProvisionedForTest:
    tenant: Tenant
    key: str  # an admin key with every scope

    @property
    def schema(self) -> str:
        return self.tenant.schema_name


def unique_slug(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def provision_for_test(prefix: str) -> ProvisionedForTest:
    provisioned = tenant_services.tenant_provision(
        name=f"Test {prefix}", slug=unique_slug(prefix), sla_tier="standard", domains=[], actor=TEST_ACTOR
    )
    return ProvisionedForTest(tenant=provisioned.tenant, key=provisioned.admin_key.plaintext)


def destroy_tenant(tenant: Tenant) -> None:
    """Remove a committed test tenant completely: schema and every public row."""
    tenant_services.tenant_purge(tenant=tenant)


@pytest.fixture(scope="session")
def django_db_setup(request, django_test_environment, django_db_blocker, django_db_keepdb, django_db_createdb,
                    django_db_modify_db_settings) -> Iterator[None]:
    """The test database, always. pytest-django's own creates it only when a collected test is marked for the
    database; a session of tests that only commit (the ``committed`` fixture: end-to-end tests with real
    workers) would otherwise run against the developer's database."""
    from django.test.utils import setup_databases, teardown_databases

    keep = django_db_keepdb and not django_db_createdb
    with django_db_blocker.unblock():
        created = setup_databases(verbosity=request.config.option.verbose, interactive=False, aliases={"default"},
                                  serialized_aliases=set(), keepdb=keep)
    yield
    if not django_db_keepdb:
        with django_db_blocker.unblock():
            teardown_databases(created, verbosity=request.config.option.verbose)


@pytest.fixture(scope="session", autouse=True)
def _io_loop_closed_before_the_test_database_goes(django_db_setup, django_db_blocker) -> Iterator[None]:
    """The runtime's IO-loop threads hold database connections; end them before the test database is dropped."""
    test_database = connection.settings_dict["NAME"]
    assert test_database.startswith("test_"), f"tests must not run on {test_database!r}"
    yield
    from data_plane.runtime.loop import shutdown

    shutdown()
    # what those threads leave open (their connections close when collected) must not block the drop; never
    # anyone else's (a developer's server or benchmark on the same Postgres)
    from tenants.db_roles import owner_context

    with django_db_blocker.unblock(), owner_context(), connection.cursor() as cursor:  # the owner's sessions
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = %s AND pid <> pg_backend_pid()", [test_database])


@pytest.fixture(scope="session")
def session_tenants(django_db_setup, django_db_blocker) -> Iterator[tuple[ProvisionedForTest, ProvisionedForTest]]:
    with django_db_blocker.unblock():
        pair = (provision_for_test("alpha"), provision_for_test("beta"))
    yield pair
    with django_db_blocker.unblock():
        for provisioned in pair:
            destroy_tenant(provisioned.tenant)


@contextmanager
def _status_restored(provisioned: ProvisionedForTest) -> Iterator[ProvisionedForTest]:
    # The tenant object lives for the session while each test's writes roll back: a test that suspends it
    # must not leave it suspended in memory for the tests after it.
    tenant = provisioned.tenant
    status, reason = tenant.status, tenant.status_reason
    try:
        yield provisioned
    finally:
        tenant.status, tenant.status_reason = status, reason


@pytest.fixture
def tenant_a(session_tenants, db) -> Iterator[ProvisionedForTest]:
    with _status_restored(session_tenants[0]) as provisioned:
        yield provisioned
    connection.set_schema_to_public()


@pytest.fixture
def tenant_b(session_tenants, db) -> Iterator[ProvisionedForTest]:
    with _status_restored(session_tenants[1]) as provisioned:
        yield provisioned


@pytest.fixture
def committed(django_db_setup, django_db_blocker) -> Iterator[None]:
    """Database access outside a test transaction: writes commit, so other processes see them."""
    with django_db_blocker.unblock():
        yield
        connection.set_schema_to_public()


@pytest.fixture
def client() -> Client:
    return Client()


def bearer(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.fixture
def operator_key(db) -> str:
    return tenant_services.operator_key_create(name=unique_slug("operator")).plaintext


@pytest.fixture(autouse=True)
def _start_on_public_schema() -> Iterator[None]:
    yield
    connection.set_schema_to_public()


@pytest.fixture(scope="session")
def http_toolbox(tmp_path_factory) -> Iterator[str]:
    """The tests' MCP toolbox over streamable HTTP, as its own process; yields its endpoint URL."""
    import socket
    import sys

    from tests.mcp_servers import TOOLBOX
    from tests.processes import free_port, running, wait_for

    port = free_port()

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    log = tmp_path_factory.mktemp("toolbox") / "toolbox.log"
    with running([sys.executable, TOOLBOX, "--http", str(port), "--name", "remote"], log_path=log,
                 env={"PATH": "/usr/bin:/bin"}):
        wait_for(listening, timeout=30, what="the HTTP toolbox to listen")
        yield f"http://127.0.0.1:{port}/mcp"


# --- pytest-xdist (the Makefile runs the suite in two processes) ----------------------------------------
# Each worker says how many tests it collected; a run that reports fewer outcomes than that fails, however green
# its tests were. (--dist loadfile once dropped schemathesis' 269 fuzz tests without a word, and exited 0.)
_XDIST_COLLECTED: list[int] = []
_OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids) -> None:
    _XDIST_COLLECTED.append(len(ids))


def pytest_sessionfinish(session, exitstatus) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not _XDIST_COLLECTED or reporter is None or exitstatus != pytest.ExitCode.OK:
        return
    reported = sum(len(reporter.stats.get(outcome, ())) for outcome in _OUTCOMES)
    if reported < max(_XDIST_COLLECTED):
        reporter.write_line(f"pytest-xdist: {max(_XDIST_COLLECTED)} tests collected, {reported} reported: "
                            "the others never ran", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
