"""Payload encryption in the data plane, against the real database: an Enterprise tenant's checkpoints and
memories are sealed in the tables (raw SQL sees no plaintext), yet its runs, time travel and memory search
work; a Standard tenant's rows are as before."""

import json
import uuid

import pytest
import redis
from django.db import connection
from django_tenants.utils import schema_context

from common.crypto import SecretUnreadable
from conftest import TEST_ACTOR, ProvisionedForTest, destroy_tenant, provision_for_test, unique_slug
from data_plane import selectors, services
from data_plane.memory_selectors import memory_get, memory_search
from data_plane.models import Checkpoint, Run
from data_plane.sealing import checkpoint_store
from data_plane.services.memory import memory_draft, memory_remember
from data_plane.tests.test_executor import REPLIES, start, stepper_for
from data_plane.tests.fakes import FakeChatModel
from data_plane.runtime.core.messages import Message
from control_plane.encryption.services import tenant_cipher_forget
from tenants import services as tenant_services


@pytest.fixture
def queue(committed, settings):
    # this test drives the steps itself: dispatched steps go to a queue no worker consumes
    settings.RUN_STEP_QUEUE = f"agentplane-unconsumed-{uuid.uuid4().hex[:8]}"
    yield
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(settings.RUN_STEP_QUEUE)
    tenant_cipher_forget()


@pytest.fixture
def enterprise(queue):
    provisioned = tenant_services.tenant_provision(name="Secretive", slug=unique_slug("secretive"),
                                                   sla_tier="enterprise", domains=[], actor=TEST_ACTOR)
    tenant = ProvisionedForTest(tenant=provisioned.tenant, key=provisioned.admin_key.plaintext)
    yield tenant
    destroy_tenant(tenant.tenant)


@pytest.fixture
def standard(queue):
    tenant = provision_for_test("plain")
    yield tenant
    destroy_tenant(tenant.tenant)


def finished_run(tenant) -> Run:
    run, dispatched = start(tenant), []
    stepper = stepper_for(tenant, FakeChatModel(REPLIES), dispatched, steps_per_task=10)
    outcome = stepper.run_step(run.id, 0)
    assert outcome.run_status == "completed"
    with schema_context(tenant.schema):
        return Run.objects.get(id=run.id)


def raw_rows(tenant, run_id):
    """The run's messages (JSON texts, in order), its values as (key, plain JSON text, sealed text), and its
    checkpoints' controls, as the tables hold them."""
    q = f'"{tenant.schema}".'
    with schema_context(tenant.schema), connection.cursor() as cursor:  # what the tenant's own role reads
        cursor.execute(f"SELECT m.value::text FROM {q}data_plane_checkpoint c, json_array_elements(c.messages::json) "
                       "WITH ORDINALITY AS m(value, ord) WHERE c.run_id = %s ORDER BY c.step, m.ord", [run_id])
        messages = [row[0] for row in cursor.fetchall()]
        cursor.execute(f"SELECT v.key, v.value::text, NULL FROM {q}data_plane_checkpoint c, "
                       "json_each(c.changed_values::json) v WHERE c.run_id = %s UNION ALL "
                       f"SELECT v.key, NULL, v.value FROM {q}data_plane_checkpoint c, "
                       "json_each_text(c.sealed_values::json) v WHERE c.run_id = %s", [run_id, run_id])
        values = cursor.fetchall()
        cursor.execute(f"SELECT control::text FROM {q}data_plane_checkpoint WHERE run_id = %s ORDER BY step", [run_id])
        controls = [json.loads(row[0]) for row in cursor.fetchall()]
    return messages, values, controls


def test_an_encrypted_tenants_run_is_sealed_in_the_tables_and_reads_back_whole(enterprise):
    # when
    run = finished_run(enterprise)
    # then: the run worked, and the tables hold no plaintext of its conversation
    assert (run.status, run.output) == ("completed", "The answer is 42")
    messages, values, controls = raw_rows(enterprise, run.id)
    assert len(messages) == 6 and all(m.startswith('"v2:1:') for m in messages)
    # (phrases a sealed value's base64 cannot hold by chance: "42" alone is two base64 characters, met in about one
    # ciphertext of twenty)
    assert not any("6*7" in m or "is 42" in m or "compute" in m for m in messages)
    assert values == []  # the default loop keeps no values (the fork below patches some)
    assert len(controls) == 6 and all(set(c) == {"message_count", "sealed"} for c in controls)
    assert not any("Be exact" in json.dumps(c) for c in controls)
    # and time travel reads every checkpoint back whole
    with schema_context(enterprise.schema):
        head = selectors.checkpoint_state(tenant_schema=enterprise.schema, run_id=run.id, checkpoint_id=run.head_id)
        events = selectors.run_event_page(tenant_schema=enterprise.schema, run_id=run.id, after_seq=0, limit=100)
    assert [m.content for m in head.messages if m.role == "user"] == ["6*7?"]
    assert head.messages[-1].content == "The answer is 42. DONE" and head.status == "completed"
    replies = [e["data"]["message"] for e in events if e["type"] == "model.reply"]
    assert replies and replies[-1]["content"] == "The answer is 42. DONE"


def test_a_fork_of_an_encrypted_run_reads_its_sources_sealed_history(enterprise):
    # given
    run = finished_run(enterprise)
    with schema_context(enterprise.schema):
        middle = Checkpoint.objects.get(run_id=run.id, step=2)
        # when
        fork = services.run_fork(tenant=enterprise.tenant, run_id=run.id, checkpoint_id=middle.id,
                                 actor=TEST_ACTOR, append_messages=[Message(role="user", content="and 7*8?")],
                                 values={"plan": {"codeword": "bluebird"}})
        state = selectors.checkpoint_state(tenant_schema=enterprise.schema, run_id=fork.id, checkpoint_id=fork.head_id)
    # then: the fork's messages are the source's (opened with the source run's bindings) plus its own
    assert [m.content for m in state.messages if m.role == "user"] == ["6*7?", "and 7*8?"]
    assert state.values["plan"] == {"codeword": "bluebird"}
    messages, values, _ = raw_rows(enterprise, fork.id)
    assert messages and all(m.startswith('"v2:1:') for m in messages)
    assert [(key, value) for key, value, _ in values] == [("plan", None)]
    assert values[0][2].startswith("v2:1:") and "bluebird" not in values[0][2]


def test_a_sealed_message_moved_to_another_place_does_not_open(enterprise):
    # given
    run = finished_run(enterprise)
    q = f'"{enterprise.schema}".'
    with schema_context(enterprise.schema), connection.cursor() as cursor:  # copy message 0's sealed text over 1's
        cursor.execute(f"SELECT step, first_seq, messages FROM {q}data_plane_checkpoint WHERE run_id = %s "
                       "AND messages IS NOT NULL ORDER BY step", [run.id])
        rows = [(step, first, json.loads(messages)) for step, first, messages in cursor.fetchall()]
        message_0 = rows[0][2][0]
        step, first, messages = next(row for row in rows if row[1] <= 1 < row[1] + len(row[2]))
        messages[1 - first] = message_0
        cursor.execute(f"UPDATE {q}data_plane_checkpoint SET messages = %s WHERE run_id = %s AND step = %s",
                       [json.dumps(messages), run.id, step])
    # when / then
    with schema_context(enterprise.schema), pytest.raises(SecretUnreadable):
        checkpoint_store(enterprise.schema).load(run.head_id)


def test_a_standard_tenants_rows_stay_plain(standard):
    # when
    run = finished_run(standard)
    # then
    messages, values, controls = raw_rows(standard, run.id)
    assert all(m.startswith("{") for m in messages) and any("6*7" in m for m in messages)
    assert all(sealed is None for _, _, sealed in values)
    assert all("sealed" not in c and c["status"] for c in controls)


def test_an_encrypted_tenants_memories_are_sealed_yet_searchable_by_meaning_and_by_words(enterprise):
    # given
    texts = ["Globex pays invoice INV-4471 by wire transfer", "The customer prefers emails in French"]
    with schema_context(enterprise.schema):
        written = memory_remember(tenant=enterprise.tenant, actor=TEST_ACTOR,
                                  drafts=[memory_draft(text=t) for t in texts])
        with connection.cursor() as cursor:
            cursor.execute("SELECT text, sealed_text, search_vector::text FROM data_plane_memory ORDER BY created_at")
            rows = cursor.fetchall()
        # when
        by_words = memory_search(tenant_schema=enterprise.schema, query="INV-4471", mode="lexical")
        by_meaning = memory_search(tenant_schema=enterprise.schema, query="which language for mails?", k=1,
                                   mode="semantic")
        got = memory_get(tenant_schema=enterprise.schema, memory_id=written[0].memory.id)
        # a near-duplicate merges (its sealed neighbour opened to compare) and stays sealed
        merged = memory_remember(tenant=enterprise.tenant, actor=TEST_ACTOR,
                                 drafts=[memory_draft(text="Globex pays invoice INV-4471 by wire transfer.")])
        sealed_after_merge = memory_get(tenant_schema=enterprise.schema, memory_id=merged[0].memory.id)
        with connection.cursor() as cursor:
            cursor.execute("SELECT text, sealed_text FROM data_plane_memory WHERE id = %s", [merged[0].memory.id])
            merged_row = cursor.fetchone()
    # then
    assert [r[0] for r in rows] == ["", ""] and all(r[1].startswith("v2:1:") for r in rows)
    assert not any("Globex" in r[1] or "French" in r[1] for r in rows)
    assert "'globex'" in rows[0][2]  # the word index: lexemes stay readable (docs/security-encryption.md)
    assert [hit.text for hit in by_words] == [texts[0]]
    assert [hit.text for hit in by_meaning] == [texts[1]]
    assert got.text == texts[0]
    assert merged[0].merged is True and merged[0].memory.text == "Globex pays invoice INV-4471 by wire transfer."
    assert sealed_after_merge.text == "Globex pays invoice INV-4471 by wire transfer."
    assert merged_row[0] == "" and merged_row[1].startswith("v2:1:")


def test_a_standard_tenants_memories_stay_plain_and_searchable(standard):
    with schema_context(standard.schema):
        memory_remember(tenant=standard.tenant, actor=TEST_ACTOR,
                        drafts=[memory_draft(text="Initech renews on March 3rd")])
        with connection.cursor() as cursor:
            cursor.execute("SELECT text, sealed_text, search_vector::text FROM data_plane_memory")
            row = cursor.fetchone()
        hits = memory_search(tenant_schema=standard.schema, query="Initech", mode="lexical")
    assert row[0] == "Initech renews on March 3rd" and row[1] == "" and "'initech'" in row[2]
    assert [hit.text for hit in hits] == ["Initech renews on March 3rd"]


def test_the_memory_api_shows_an_encrypted_tenants_text(enterprise, client):
    from conftest import bearer

    created = client.post("/v1/memories", data=json.dumps({"text": "Hooli's CFO is Gavin"}),
                          content_type="application/json", **bearer(enterprise.key))
    assert created.status_code == 201, created.json()
    memory_id = created.json()["id"]
    listed = client.get("/v1/memories", **bearer(enterprise.key))
    one = client.get(f"/v1/memories/{memory_id}", **bearer(enterprise.key))
    found = client.post("/v1/memories/search", data=json.dumps({"query": "Gavin", "mode": "lexical"}),
                        content_type="application/json", **bearer(enterprise.key))
    assert created.json()["text"] == "Hooli's CFO is Gavin"
    assert [m["text"] for m in listed.json()["results"]] == ["Hooli's CFO is Gavin"]
    assert one.json()["text"] == "Hooli's CFO is Gavin"
    assert [h["text"] for h in found.json()["results"]] == ["Hooli's CFO is Gavin"]
