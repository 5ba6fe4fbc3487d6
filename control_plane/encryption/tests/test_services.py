"""Keyrings, sealing and rotation against the real database (and a reader thread on its own connection)."""

import base64
import json
import os
import threading
import time

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django_tenants.utils import schema_context

from common.crypto import MasterKeyMissing, SecretBox, SecretUnreadable
from conftest import TEST_ACTOR, ProvisionedForTest, destroy_tenant, unique_slug
from control_plane.audit.models import AuditEvent
from data_plane.models import McpServer, MemorySettings
from data_plane.sealing import checkpoint_store, mcp_server_bound_to, memory_settings_bound_to
from data_plane.services.memory import memory_draft, memory_remember
from data_plane.services.runs import run_fork
from data_plane.services.tools import server_config
from data_plane.memory_selectors import memory_get, memory_search
from control_plane.encryption import services
from control_plane.encryption.models import TenantDataKey, TenantKeyring
from tenants import services as tenant_services


@pytest.fixture(autouse=True)
def _fresh_ciphers():
    services.tenant_cipher_forget()
    yield
    services.tenant_cipher_forget()


def new_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def server_with_secrets(tenant, sealed_by) -> McpServer:
    """An MCP server row whose credentials ``sealed_by(bound_to)`` sealed (no discovery: no server needed)."""
    server = McpServer(name=f"s{os.urandom(3).hex()}", transport="http", url="https://mcp.example.com/mcp",
                       secret_names={"headers": ["Authorization"], "env": []})
    server.sealed_secrets = sealed_by(mcp_server_bound_to(tenant.schema, server.id))
    server.save()
    return server


CREDENTIALS = {"headers": {"Authorization": "Bearer crm-token-123"}, "env": {}}


def test_a_secret_opens_where_it_was_sealed_and_nowhere_else(tenant_a, tenant_b):
    # given
    with schema_context(tenant_a.schema):
        cipher = services.tenant_cipher(tenant_schema=tenant_a.schema)
        server = server_with_secrets(tenant_a, lambda bound_to: cipher.seal(CREDENTIALS, bound_to=bound_to))
        other = server_with_secrets(tenant_a, lambda bound_to: cipher.seal({}, bound_to=bound_to))
        # when: copied to another row of the same tenant
        McpServer.objects.filter(id=other.id).update(sealed_secrets=server.sealed_secrets)
        other.refresh_from_db()
        # then
        assert server.sealed_secrets.startswith("v2:1:") and "crm-token" not in server.sealed_secrets
        assert server_config(tenant_schema=tenant_a.schema, server=server).headers == CREDENTIALS["headers"]
        with pytest.raises(SecretUnreadable):
            server_config(tenant_schema=tenant_a.schema, server=other)
    # and another tenant's data key does not open it even with the same place named
    with pytest.raises(SecretUnreadable):
        services.tenant_cipher(tenant_schema=tenant_b.schema).open(
            server.sealed_secrets, bound_to=mcp_server_bound_to(tenant_a.schema, server.id))


def test_a_rewritten_version_number_does_not_open(tenant_a):
    cipher = services.tenant_cipher(tenant_schema=tenant_a.schema)
    sealed = cipher.seal_text("hello", bound_to="here")
    forged = "v2:7:" + sealed.split(":", 2)[2]
    with pytest.raises(SecretUnreadable):
        cipher.open_text(forged, bound_to="here")


def test_v1_values_still_open_and_reseal_makes_them_v2(tenant_a, settings):
    # given: credentials and an embedding key sealed the v1 way (one key for every tenant)
    box = SecretBox(settings.SECRETS_KEY)
    with schema_context(tenant_a.schema):
        server = server_with_secrets(tenant_a, lambda bound_to: box.seal(CREDENTIALS, bound_to=bound_to))
        MemorySettings.objects.update_or_create(id=1, defaults={"embedding_api_key_encrypted": box.seal(
            "sk-provider-1", bound_to=memory_settings_bound_to(tenant_a.schema))})
        assert server_config(tenant_schema=tenant_a.schema, server=server).headers == CREDENTIALS["headers"]
        # when
        call_command("keys_reseal", "--tenant", tenant_a.tenant.slug, stdout=open(os.devnull, "w"))
        # then
        server.refresh_from_db()
        key = MemorySettings.objects.get(id=1).embedding_api_key_encrypted
        assert server.sealed_secrets.startswith("v2:1:") and key.startswith("v2:1:")
        assert server_config(tenant_schema=tenant_a.schema, server=server).headers == CREDENTIALS["headers"]
        assert services.tenant_cipher(tenant_schema=tenant_a.schema).open(
            key, bound_to=memory_settings_bound_to(tenant_a.schema)) == "sk-provider-1"
        event = AuditEvent.objects.get(action="encryption.reseal")
    assert event.data["resealed"] == {"mcp_server.credentials": 1, "memory_settings.embedding_api_key": 1}
    assert "crm-token" not in json.dumps(event.data) and "sk-provider" not in json.dumps(event.data)


def test_provisioning_gives_a_data_key_and_the_tiers_default_policy(db):
    enterprise = tenant_services.tenant_provision(name="E", slug=unique_slug("ent"), sla_tier="enterprise",
                                                  domains=[], actor=TEST_ACTOR).tenant
    standard = tenant_services.tenant_provision(name="S", slug=unique_slug("std"), sla_tier="standard", domains=[],
                                                actor=TEST_ACTOR).tenant
    assert TenantKeyring.objects.get(tenant=enterprise).encrypts_payloads is True
    assert TenantKeyring.objects.get(tenant=standard).encrypts_payloads is False
    keys = TenantDataKey.objects.filter(tenant__in=[enterprise, standard])
    assert sorted((k.version, k.state, k.master_key_id) for k in keys) == [(1, "active", "dev"), (1, "active", "dev")]
    assert all(len(bytes(k.wrapped_key)) == 12 + 32 + 16 for k in keys)  # nonce + key + tag: never the key alone


def test_a_tenant_without_a_keyring_gets_one_on_first_use(tenant_a):
    # given: a tenant from before keyrings
    TenantKeyring.objects.filter(tenant=tenant_a.tenant).delete()
    TenantDataKey.objects.filter(tenant=tenant_a.tenant).delete()
    # when
    cipher = services.tenant_cipher(tenant_schema=tenant_a.schema)
    # then
    assert cipher.current_version == 1 and cipher.encrypts_payloads is False
    assert cipher.open_text(cipher.seal_text("x", bound_to="b"), bound_to="b") == "x"
    assert TenantDataKey.objects.filter(tenant=tenant_a.tenant).count() == 1


def test_the_payload_policy_changes_by_command_and_api_and_is_audited(tenant_a, client, operator_key):
    from conftest import bearer

    # when
    call_command("keys_payload_policy", "--tenant", tenant_a.tenant.slug, "--on", stdout=open(os.devnull, "w"))
    # then
    assert services.tenant_cipher(tenant_schema=tenant_a.schema).encrypts_payloads is True
    # when: the operator API turns it off
    response = client.put(f"/v1/platform/tenants/{tenant_a.tenant.slug}/encryption",
                          data=json.dumps({"encrypts_payloads": False}), content_type="application/json",
                          **bearer(operator_key))
    assert response.status_code == 200, response.json()
    assert response.json()["encrypts_payloads"] is False and response.json()["current_version"] == 1
    assert [(v["version"], v["state"]) for v in response.json()["versions"]] == [(1, "active")]
    assert services.tenant_cipher(tenant_schema=tenant_a.schema).encrypts_payloads is False
    with schema_context(tenant_a.schema):
        events = list(AuditEvent.objects.filter(action="encryption.payload_policy_update").order_by("occurred_at"))
    assert [(e.data["before"], e.data["after"]) for e in events] == [
        ({"encrypts_payloads": False}, {"encrypts_payloads": True}),
        ({"encrypts_payloads": True}, {"encrypts_payloads": False})]
    assert events[1].actor_kind == "operator_key"


def test_the_encryption_api_needs_an_operator_key_and_says_what_is_wrong(tenant_a, client, operator_key):
    from conftest import bearer

    url = f"/v1/platform/tenants/{tenant_a.tenant.slug}/encryption"
    assert client.get(url, **bearer(tenant_a.key)).status_code in (401, 403)
    bad = client.put(url, data=json.dumps({"encrypts_payloads": "sometimes"}), content_type="application/json",
                     **bearer(operator_key))
    assert bad.status_code == 400 and "encrypts_payloads" in bad.json()["errors"]
    assert client.get("/v1/platform/tenants/no-such-tenant/encryption", **bearer(operator_key)).status_code == 404
    assert TenantKeyring.objects.get(tenant=tenant_a.tenant).encrypts_payloads is False


@pytest.fixture
def encrypted(committed):
    provisioned = tenant_services.tenant_provision(name="Rotating", slug=unique_slug("rotating"),
                                                   sla_tier="enterprise", domains=[], actor=TEST_ACTOR)
    tenant = ProvisionedForTest(tenant=provisioned.tenant, key=provisioned.admin_key.plaintext)
    yield tenant
    destroy_tenant(tenant.tenant)


def sealed_values(tenant) -> list[str]:
    q = f'"{tenant.schema}".'
    with schema_context(tenant.schema), connection.cursor() as cursor:  # as the tenant's own database role
        cursor.execute(f"SELECT sealed_secrets FROM {q}data_plane_mcpserver UNION ALL "
                       f"SELECT sealed_text FROM {q}data_plane_memory UNION ALL "
                       f"SELECT json_array_elements_text(messages::json) FROM {q}data_plane_checkpoint UNION ALL "
                       f"SELECT (json_each_text(sealed_values::json)).value FROM {q}data_plane_checkpoint UNION ALL "
                       f"SELECT control->>'sealed' FROM {q}data_plane_checkpoint")
        return [row[0] for row in cursor.fetchall()]


def test_a_tenant_rotation_reseals_everything_then_retires_the_old_version(encrypted, settings):
    from data_plane.tests.test_encryption import finished_run

    settings.RUN_STEP_QUEUE = f"agentplane-unconsumed-{os.urandom(4).hex()}"
    # given: a credential, a memory and a finished run, all sealed with version 1
    with schema_context(encrypted.schema):
        cipher = services.tenant_cipher(tenant_schema=encrypted.schema)
        server = server_with_secrets(encrypted, lambda bound_to: cipher.seal(CREDENTIALS, bound_to=bound_to))
        memory = memory_remember(tenant=encrypted.tenant, actor=TEST_ACTOR,
                                 drafts=[memory_draft(text="Vandelay imports latex")])[0].memory
    run = finished_run(encrypted)
    with schema_context(encrypted.schema):  # and a fork of it with two values: a checkpoint's sealed values
        fork = run_fork(tenant=encrypted.tenant, run_id=run.id, checkpoint_id=run.head_id, actor=TEST_ACTOR,
                        values={"plan": {"codeword": "bluebird"}, "n": 2})
    before = sealed_values(encrypted)
    with schema_context(encrypted.schema):
        state_before = checkpoint_store(encrypted.schema).load(run.head_id).state
        fork_before = checkpoint_store(encrypted.schema).load(fork.head_id).state
    assert len(before) > 8 and all(v.startswith("v2:1:") for v in before)
    # when
    out = open(os.devnull, "w")
    call_command("keys_rotate_tenant", "--tenant", encrypted.tenant.slug, "--batch", "3", "--grace-seconds", "0",
                 stdout=out)
    # then: every value is sealed with version 2, version 1 is retired without key material, all reads work
    after = sealed_values(encrypted)
    assert len(after) == len(before) and all(v.startswith("v2:2:") for v in after)
    keys = {k.version: k for k in TenantDataKey.objects.filter(tenant=encrypted.tenant)}
    assert (keys[1].state, bytes(keys[1].wrapped_key), keys[1].master_key_id) == ("retired", b"", "")
    assert keys[2].state == "active" and TenantKeyring.objects.get(tenant=encrypted.tenant).current_version == 2
    services.tenant_cipher_forget()
    with schema_context(encrypted.schema):
        assert checkpoint_store(encrypted.schema).load(run.head_id).state == state_before
        assert checkpoint_store(encrypted.schema).load(fork.head_id).state == fork_before
        server.refresh_from_db()
        assert server_config(tenant_schema=encrypted.schema, server=server).headers == CREDENTIALS["headers"]
        assert memory_get(tenant_schema=encrypted.schema, memory_id=memory.id).text == "Vandelay imports latex"
        assert [h.text for h in memory_search(tenant_schema=encrypted.schema, query="Vandelay", mode="lexical")] == [
            "Vandelay imports latex"]
        # a value of the retired version no longer opens anywhere
        with pytest.raises(SecretUnreadable):
            services.tenant_cipher(tenant_schema=encrypted.schema).open_text(before[0], bound_to="anything")
        events = {e.action: e.data for e in AuditEvent.objects.filter(action__startswith="encryption.data_key")}
    assert events["encryption.data_key_rotate_start"] == {"from_version": 1, "to_version": 2, "master_key_id": "dev"}
    finish = events["encryption.data_key_rotate_finish"]
    assert finish["retired_versions"] == [1] and finish["remaining"] == 0 and finish["unreadable"] == {}
    assert sum(finish["resealed"].values()) == len(before)
    assert finish["resealed"]["mcp_server.credentials"] == 1 and finish["resealed"]["memory.text"] == 1
    assert finish["resealed"]["checkpoint.values"] == 2 and finish["resealed"]["checkpoint.messages"] == len(
        state_before.messages)


def test_values_written_with_the_old_version_during_a_rotation_are_resealed_before_it_retires(encrypted):
    # given: a process whose cached cipher still seals with version 1, writing while the rotation runs
    stale = services.tenant_cipher(tenant_schema=encrypted.schema)
    written: list[str] = []
    stop = threading.Event()

    def stale_writer() -> None:
        try:
            with schema_context(encrypted.schema):
                while not stop.is_set():
                    server = server_with_secrets(encrypted, lambda b: stale.seal(CREDENTIALS, bound_to=b))
                    written.append(str(server.id))
                    time.sleep(0.05)
        finally:
            connections.close_all()

    thread = threading.Thread(target=stale_writer)
    thread.start()
    try:
        time.sleep(0.2)
        # when: the rotation's grace period covers the stale writer's remaining writes
        threading.Timer(0.6, stop.set).start()
        report = services.tenant_data_key_rotate(tenant=encrypted.tenant, actor=TEST_ACTOR, grace_seconds=1.0)
    finally:
        stop.set()
        thread.join()
    # then: nothing of version 1 is left, and every server's credentials open
    assert report.retired_versions == [1] and report.remaining == 0
    assert len(written) >= 5
    services.tenant_cipher_forget()
    with schema_context(encrypted.schema):
        servers = list(McpServer.objects.all())
        assert len(servers) == len(written) and all(s.sealed_secrets.startswith("v2:2:") for s in servers)
        assert all(server_config(tenant_schema=encrypted.schema, server=s).headers == CREDENTIALS["headers"]
                   for s in servers)


def test_master_key_rotation_rewraps_every_data_key_while_reads_go_on(encrypted, settings):
    # given: the tenant's credentials, and a second master key made current
    with schema_context(encrypted.schema):
        cipher = services.tenant_cipher(tenant_schema=encrypted.schema)
        server = server_with_secrets(encrypted, lambda bound_to: cipher.seal(CREDENTIALS, bound_to=bound_to))
    services.tenant_data_key_rotate(tenant=encrypted.tenant, actor=TEST_ACTOR, grace_seconds=0)  # version 2 now
    dev = settings.MASTER_KEYS
    settings.MASTER_KEYS, settings.MASTER_KEY_CURRENT = f"{dev},m2:{new_master_key()}", "m2"
    failures: list[str] = []
    reads = [0]
    stop = threading.Event()

    def reader() -> None:  # a process reading the tenant's secrets with a fresh cipher each time
        try:
            with schema_context(encrypted.schema):
                while not stop.is_set():
                    services.tenant_cipher_forget()
                    try:
                        headers = server_config(tenant_schema=encrypted.schema,
                                                server=McpServer.objects.get(id=server.id)).headers
                        reads[0] += 1
                        if headers != CREDENTIALS["headers"]:
                            failures.append("wrong value")
                    except Exception as exc:  # noqa: BLE001 - any failure to read is what this test looks for
                        failures.append(repr(exc))
        finally:
            connections.close_all()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.2)
        # when (this tenant only: the session's other tenants keep the dev master key the other tests use)
        call_command("keys_rotate_master", "--tenant", encrypted.tenant.slug, stdout=open(os.devnull, "w"))
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    # then: reads never failed, and every key of the tenant is wrapped by m2
    assert failures == [] and reads[0] > 3
    keys = TenantDataKey.objects.filter(tenant=encrypted.tenant, state="active")
    assert [(k.version, k.master_key_id) for k in keys] == [(2, "m2")]
    # and the old master key can go: the tenant's secrets open with m2 alone
    settings.MASTER_KEYS = settings.MASTER_KEYS.split(",", 1)[1]
    services.tenant_cipher_forget()
    with schema_context(encrypted.schema):
        server.refresh_from_db()
        assert server_config(tenant_schema=encrypted.schema, server=server).headers == CREDENTIALS["headers"]
        events = list(AuditEvent.objects.filter(action="encryption.master_key_rotate"))
    assert [(e.data["to_master_key_id"], sorted(e.data["versions"]), e.data["from_master_key_ids"])
            for e in events] == [("m2", [2], ["dev"])]


def test_without_its_master_key_a_data_key_does_not_unwrap(encrypted, settings):
    settings.MASTER_KEYS, settings.MASTER_KEY_CURRENT = f"m3:{new_master_key()}", "m3"
    with pytest.raises(MasterKeyMissing):
        services.tenant_cipher(tenant_schema=encrypted.schema)


def test_a_second_rotation_of_a_tenant_at_once_is_refused(encrypted):
    from control_plane.encryption.errors import RotationInProgress

    holder = connections.create_connection("default")
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [services._RotationLock(encrypted.tenant).key])
        with pytest.raises(RotationInProgress):
            services.tenant_data_key_rotate(tenant=encrypted.tenant, actor=TEST_ACTOR, grace_seconds=0)
    finally:
        holder.close()
    assert TenantKeyring.objects.get(tenant=encrypted.tenant).current_version == 1
