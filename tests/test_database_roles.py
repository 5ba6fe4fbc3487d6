"""Defence in depth: the connection takes on the Postgres role of the schema it is in (tenants.db_roles).

In tenant A, SQL naming tenant B's schema (as the checkpoint store's SQL names its schema) is refused by
Postgres; in the public schema (a forgotten tenant switch) every tenant's tables are refused; a role never
outlives its request on a reused connection; a worker's task in A cannot read B; deletion drops the role.
Each refusal is checked against the owner, who can read the same rows: the test fails without the guard.
"""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, bearer, destroy_tenant, provision_for_test, unique_slug
from data_plane import services as data_services
from data_plane.models import Ping, Run
from data_plane.runtime.adapters.checkpoints import PostgresCheckpointStore
from tenants import db_roles
from tenants import services as tenant_services
from tests.conftest import LOG_DIR, runtime_env
from tests.processes import celery_worker_args, log_tail, running, wait_for

SPEC = {"instructions": "Be exact.", "models": ["openai/gpt-4o-mini"]}


def role_of(schema: str) -> str:
    return db_roles.role_for_schema(connection.settings_dict["NAME"], schema)


def server_state() -> tuple[str, str]:
    """The role and search_path the server has now, read beside Django's cursor (nothing is switched)."""
    row = connection.connection.execute("SELECT current_user, current_setting('search_path')").fetchone()
    return row[0], row[1]


def refused(sql: str, params: list | None = None) -> str:
    """The first line of the error the statement gets (the test fails if it succeeds)."""
    with pytest.raises(DatabaseError) as error, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
    return str(error.value).splitlines()[0]


def start_run(client, key: str) -> dict:
    agent = client.post("/v1/agents", json.dumps({"name": "calc", "spec": SPEC}), content_type="application/json",
                        **bearer(key)).json()
    response = client.post("/v1/runs", json.dumps({"agent_id": agent["id"], "input": "What is 6*7?"}),
                           content_type="application/json", **bearer(key))
    assert response.status_code == 202, response.json()
    return response.json()


def test_in_tenant_a_the_checkpoint_store_given_tenant_bs_schema_is_refused(client, tenant_a, tenant_b):
    # given: a run with a checkpoint in tenant B
    run = start_run(client, tenant_b.key)
    with db_roles.owner_context():  # the owner reads it: the rows are there to be leaked
        loaded = PostgresCheckpointStore(schema=tenant_b.schema, connection=connection).load(run["head_checkpoint_id"])
    assert str(loaded.run_id) == run["id"]
    # when: code serving tenant A names B's schema (a wrong schema name given to the store)
    with schema_context(tenant_a.schema):
        with pytest.raises(DatabaseError) as error, transaction.atomic():
            PostgresCheckpointStore(schema=tenant_b.schema, connection=connection).load(run["head_checkpoint_id"])
        state = server_state()
    # then
    assert str(error.value).startswith("permission denied for schema " + tenant_b.schema)
    assert state == (role_of(tenant_a.schema), f'"{tenant_a.schema}","public"')


def test_a_prepared_statement_is_checked_again_under_each_tenants_role(tenant_a, tenant_b):
    # given: a statement naming A's schema, prepared on the connection (server-side, after two executions)
    sql = f'SELECT count(*) FROM "{tenant_a.schema}".data_plane_run WHERE status <> %s'
    with schema_context(tenant_a.schema), connection.cursor() as cursor:
        for _ in range(4):
            cursor.execute(sql, ["none"])
    # when: the same statement runs in tenant B
    with schema_context(tenant_b.schema):
        error = refused(sql, ["none"])
    # then
    assert error.startswith(f"permission denied for schema {tenant_a.schema}")


def test_a_forgotten_tenant_switch_reads_no_tenants_tables(client, tenant_a, tenant_b):
    # given: a run in tenant A; and the connection left in the public schema, as code that forgot the switch
    run = start_run(client, tenant_a.key)
    connection.set_schema_to_public()
    # when
    by_name = [refused(f'SELECT count(*) FROM "{schema}".data_plane_run') for schema in (tenant_a.schema,
                                                                                          tenant_b.schema)]
    with pytest.raises(DatabaseError) as store_error, transaction.atomic():
        PostgresCheckpointStore(schema=tenant_a.schema, connection=connection).load(run["head_checkpoint_id"])
    unqualified = refused("SELECT count(*) FROM data_plane_run")
    # then
    assert by_name[0].startswith(f"permission denied for schema {tenant_a.schema}")
    assert by_name[1].startswith(f"permission denied for schema {tenant_b.schema}")
    assert str(store_error.value).startswith(f"permission denied for schema {tenant_a.schema}")
    assert unqualified.startswith('relation "data_plane_run" does not exist')
    assert server_state() == (role_of("public"), '"public"')


def test_the_orm_and_the_api_work_as_before_in_a_tenant(client, tenant_a):
    # when
    run = start_run(client, tenant_a.key)
    listed = client.get("/v1/runs", **bearer(tenant_a.key))
    with schema_context(tenant_a.schema):
        status = Run.objects.get(id=run["id"]).status
        Run.objects.filter(id=run["id"]).update(status_reason="checked")
        reason = Run.objects.get(id=run["id"]).status_reason
    # then
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()["results"]] == [run["id"]]
    assert (status, reason) == ("queued", "checked")


def test_roles_do_not_leak_between_requests_on_one_connection(client, tenant_a, tenant_b):
    # given: every statement's server-side role and search_path, recorded as it runs
    seen: list[tuple[str, tuple[str, str]]] = []

    def record(execute, sql, params, many, context):
        if "data_plane_ping" in sql or "tenants_apikey" in sql:
            seen.append(("ping" if "data_plane_ping" in sql else "key", server_state()))
        return execute(sql, params, many, context)

    backend_pid = None
    # when: requests for A, B, A, on one connection (the test's transaction keeps it open)
    with connection.execute_wrapper(record):
        for provisioned in (tenant_a, tenant_b, tenant_a):
            assert client.get("/v1/pings", **bearer(provisioned.key)).status_code == 200
            pid = connection.connection.info.backend_pid
            assert backend_pid in (None, pid)
            backend_pid = pid
    # then: each request's tenant queries ran in its role only; credential lookups in the public role
    public = (role_of("public"), '"public"')
    in_a = (role_of(tenant_a.schema), f'"{tenant_a.schema}","public"')
    in_b = (role_of(tenant_b.schema), f'"{tenant_b.schema}","public"')
    assert [state for kind, state in seen if kind == "ping"] == [in_a, in_b, in_a]
    assert {state for kind, state in seen if kind == "key"} == {public}
    with connection.cursor():  # whatever the next request runs first, it runs in the public role
        assert server_state() == public


def test_a_rolled_back_switch_is_sent_again(tenant_a, tenant_b):
    # given: inside a transaction, a savepoint in which the connection switches to B, then rolls back
    with schema_context(tenant_a.schema):
        Ping.objects.count()
        with pytest.raises(ZeroDivisionError), transaction.atomic():
            with schema_context(tenant_b.schema):
                Ping.objects.count()
            1 / 0  # noqa: B018
        # when: the next query in B (the server's SET of B was rolled back with the savepoint)
        with schema_context(tenant_b.schema):
            Ping.objects.count()
            state = server_state()
    # then
    assert state == (role_of(tenant_b.schema), f'"{tenant_b.schema}","public"')


def test_deleting_a_tenant_drops_its_role(db):
    # given
    provisioned = tenant_services.tenant_provision(name="Doomed", slug=unique_slug("doomed"), sla_tier="standard",
                                                   domains=[], actor=TEST_ACTOR)
    role = role_of(provisioned.tenant.schema_name)
    with db_roles.owner_context(), connection.cursor() as cursor:  # (the public role cannot name the schema)
        cursor.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", [role])
        created = cursor.fetchall()
        cursor.execute("SELECT has_table_privilege(%s, %s, 'SELECT'), has_schema_privilege(%s, 'public', 'USAGE')",
                       [role, f'"{provisioned.tenant.schema_name}".data_plane_run', role])
        privileges = cursor.fetchone()
    # when
    tenant_services.tenant_delete(tenant=provisioned.tenant, actor=TEST_ACTOR)
    # then
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", [role])
        left = cursor.fetchone()[0]
    assert created == [(False,)]
    assert privileges == (True, True)
    assert left == 0


def test_role_names_are_unique_to_the_database_and_fit_postgres():
    longest = "t_" + "a" * 48
    assert db_roles.role_for_schema("agentplane", "public") != db_roles.role_for_schema("test_agentplane", "public")
    assert db_roles.role_for_schema("agentplane", longest) == db_roles.role_prefix("agentplane") + "_" + longest
    assert len(db_roles.role_for_schema("agentplane", longest)) <= 63
    assert len(db_roles.role_for_schema("agentplane", "x" * 63)) <= 63


@pytest.fixture
def probe_worker(django_db_setup, django_db_blocker, model_server):
    """A real Celery worker with the probe task, on a queue of its own."""
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-db-roles"
    log = LOG_DIR / "celery-db-roles.log"
    with django_db_blocker.unblock():
        env = runtime_env(model_server)
    args = celery_worker_args(name="db-roles") + ["--include=tests.db_role_probe", "-Q", queue]
    with running(args, log_path=log, env=env):
        wait_for(lambda: "ready." in log.read_text(errors="replace") if log.exists() else None, timeout=60,
                 what=f"the Celery worker to start; log:\n{log_tail(log)}")
        yield queue, log


@pytest.mark.worker
def test_a_worker_task_in_tenant_a_cannot_read_tenant_b(committed, probe_worker):
    from tests.db_role_probe import read_other_schema_task

    queue, log = probe_worker
    first, second = provision_for_test("roles-a"), provision_for_test("roles-b")
    try:
        with schema_context(second.schema):
            data_services.ping_create(tenant=second.tenant, message="secret", actor=TEST_ACTOR)
        report_key = f"{settings.STREAM_KEY_PREFIX}:db-roles:{uuid.uuid4().hex}"
        broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        # when
        read_other_schema_task.apply_async(kwargs={"tenant_schema": first.schema, "other_schema": second.schema,
                                                   "report_key": report_key}, queue=queue)
        report = json.loads(wait_for(lambda: broker.get(report_key), timeout=30,
                                     what=f"the probe's report; log:\n{log_tail(log)}"))
    finally:
        connection.set_schema_to_public()
        destroy_tenant(first.tenant)
        destroy_tenant(second.tenant)
    # then
    assert report == {"role": role_of(first.schema), "own_pings": 0,
                      "other": f"permission denied for schema {second.schema}"}
