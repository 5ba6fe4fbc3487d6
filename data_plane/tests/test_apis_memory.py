"""Long-term memory over the API: writes with near-duplicates merged, hybrid search with filters, TTL,
deletion and forgetting, settings. Real Postgres (pgvector HNSW, full text) and the real local embedding
model; the provider-embedding case goes through litellm to our model server's /v1/embeddings."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from django.utils import timezone
from django_tenants.utils import schema_context

from conftest import bearer
from control_plane.audit.models import AuditEvent
from data_plane import services
from data_plane.memory_selectors import embedder_for, memory_search
from data_plane.model_server.app import start_in_thread
from data_plane.models import Memory, MemorySettings
from data_plane.runtime.adapters.embeddings import LOCAL_MODEL_ID
from tenants.tests.factories import ApiKeyFactory
from tenants.db_roles import owner_context


def post(client, path, body, key):
    return client.post(path, json.dumps(body), content_type="application/json", **bearer(key))


def remember(client, key, text, **fields) -> dict:
    response = post(client, "/v1/memories", {"text": text, **fields}, key)
    assert response.status_code in (200, 201), response.json()
    return response.json()


def search(client, key, query, **filters) -> list[dict]:
    response = post(client, "/v1/memories/search", {"query": query, **filters}, key)
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def test_a_memory_is_written_embedded_locally_and_audited_without_its_text(client, tenant_a):
    # when
    written = remember(client, tenant_a.key, "Alice prefers green tea in the morning.", end_user="alice",
                       agent="concierge", tags=["Drinks", "drinks", "preferences"], metadata={"source": "chat"})
    # then
    assert written["merged"] is False and written["kind"] == "fact" and written["source"] == "api"
    assert written["tags"] == ["drinks", "preferences"] and written["embedding_model"] == LOCAL_MODEL_ID
    with schema_context(tenant_a.schema):
        stored = Memory.objects.get(id=written["id"])
        assert len(stored.embedding) == 384 and abs(sum(x * x for x in stored.embedding) - 1.0) < 1e-3
        audited = AuditEvent.objects.get(action="memory.create", target_id=written["id"])
        assert "tea" not in json.dumps(audited.data) and "alice" not in json.dumps(audited.data)
    assert client.get(f"/v1/memories/{written['id']}", **bearer(tenant_a.key)).json()["text"] == stored.text


def test_a_near_duplicate_of_the_same_scope_is_merged_and_another_scope_is_not(client, tenant_a):
    # given
    first = remember(client, tenant_a.key, "The customer's favourite colour is green.", end_user="bob",
                     tags=["colour"])
    # when
    again = post(client, "/v1/memories", {"text": "The customer's favorite colour is green", "end_user": "bob",
                                          "tags": ["style"]}, tenant_a.key)
    other_user = remember(client, tenant_a.key, "The customer's favourite colour is green.", end_user="carol")
    unrelated = remember(client, tenant_a.key, "Bob's invoices go to the accounting office in Lyon.",
                         end_user="bob")
    # then
    assert again.status_code == 200 and again.json()["merged"] is True and again.json()["id"] == first["id"]
    assert again.json()["text"] == "The customer's favorite colour is green"  # the newer statement wins
    assert again.json()["tags"] == ["colour", "style"] and again.json()["merged_count"] == 1
    assert other_user["merged"] is False and unrelated["merged"] is False
    with schema_context(tenant_a.schema):
        assert Memory.objects.filter(end_user="bob").count() == 2


def test_bad_memories_are_refused_with_every_problem_named(client, tenant_a):
    response = post(client, "/v1/memories", {"text": "", "kind": "rumour", "tags": "x", "ttl_seconds": 5},
                    tenant_a.key)
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"text", "kind", "tags", "ttl_seconds"}
    too_long = post(client, "/v1/memories", {"text": "x" * 8001}, tenant_a.key)
    assert too_long.status_code == 400 and "8000" in too_long.json()["detail"]
    batch = post(client, "/v1/memories/batch", {"memories": [{"text": "fine"}, {"text": "ok", "kind": "?"}]},
                 tenant_a.key)
    assert batch.status_code == 400 and list(batch.json()["errors"]) == ["memories.1.kind"]
    with schema_context(tenant_a.schema):
        assert not Memory.objects.exists()  # one bad item writes nothing


@pytest.fixture
def library(client, tenant_a) -> dict[str, str]:
    texts = {
        "tea": ("Alice likes to drink green tea with jasmine.", {"end_user": "alice"}),
        "flight": ("Alice is afraid of flying and takes the train to Paris.", {"end_user": "alice"}),
        "bob_tea": ("Bob drinks black coffee, never tea.", {"end_user": "bob"}),
        "order": ("Order ZX-4471 was shipped by sea freight.", {}),
        "refund": ("Refunds are processed within five business days.", {"agent": "support", "kind": "fact"}),
        "lesson": ("When a refund is disputed, check the payment provider first.",
                   {"agent": "support", "kind": "lesson", "tags": ["refunds"]}),
        "other_agent": ("The sales agent offers a 10% discount on annual plans.", {"agent": "sales"}),
    }
    response = post(client, "/v1/memories/batch", {"memories": [{"text": t, **f} for t, f in texts.values()]},
                     tenant_a.key)
    assert response.status_code == 200, response.json()
    return {name: item["id"] for name, item in zip(texts, response.json()["memories"])}


def test_search_finds_by_meaning_and_by_rare_words_and_fuses_both(client, tenant_a, library):
    # by meaning: no word in common with the memory
    by_meaning = search(client, tenant_a.key, "Which beverage does Alice enjoy?", k=3)
    assert by_meaning[0]["id"] == library["tea"] and by_meaning[0]["similarity"] > 0.3
    # by a rare token, which the embedding barely sees
    by_word = search(client, tenant_a.key, "ZX-4471", k=3)
    assert by_word[0]["id"] == library["order"] and by_word[0]["lexical_rank"] == 1
    lexical = search(client, tenant_a.key, "ZX-4471", k=3, mode="lexical")
    assert [hit["id"] for hit in lexical] == [library["order"]] and lexical[0]["similarity"] is None
    semantic = search(client, tenant_a.key, "Which beverage does Alice enjoy?", k=2, mode="semantic")
    assert semantic[0]["id"] == library["tea"] and semantic[0]["lexical_rank"] is None


def test_search_filters_never_cross_end_users_and_keep_shared_memories(client, tenant_a, library):
    alice = search(client, tenant_a.key, "what does she drink, tea or coffee", end_user="alice", k=10)
    ids = {hit["id"] for hit in alice}
    assert library["bob_tea"] not in ids and library["tea"] in ids
    assert library["order"] in ids  # nobody's in particular: shared
    support = {hit["id"] for hit in search(client, tenant_a.key, "refund", agent="support", k=10)}
    assert {library["refund"], library["lesson"]} <= support and library["other_agent"] not in support
    lessons = search(client, tenant_a.key, "refund disputed", agent="support", kinds=["lesson"], tags=["refunds"])
    assert [hit["id"] for hit in lessons] == [library["lesson"]]
    close = search(client, tenant_a.key, "Alice green tea jasmine", min_similarity=0.5, mode="semantic")
    assert [hit["id"] for hit in close] == [library["tea"]]


def test_a_selective_filter_still_returns_k_results(client, tenant_a):
    # given: 400 memories of other end users, 12 of carol's, none alike
    texts = [{"text": f"Ticket {i}: printer number {i} on floor {i % 7} reports paper jam code {i * 13}",
              "end_user": f"user-{i % 40}"} for i in range(400)]
    texts += [{"text": f"Carol asked about invoice {i} for the {('spring', 'summer', 'autumn')[i % 3]} order",
               "end_user": "carol"} for i in range(12)]
    for start in range(0, len(texts), 100):
        assert post(client, "/v1/memories/batch", {"memories": texts[start:start + 100]}, tenant_a.key).status_code == 200
    # and the search goes through the HNSW index, as on a large table (on 412 rows Postgres would rather sort
    # carol's few rows exactly); the test's transaction restores what it drops
    from django.db import connection

    with schema_context(tenant_a.schema), owner_context(), connection.cursor() as cursor:  # DDL: the owner's
        cursor.execute("DROP INDEX memory_end_user, memory_scope")
        cursor.execute("SET enable_seqscan = off")
    try:
        # when: carol's query is closest to everyone's printer tickets (the index walk meets hers last)
        hits = search(client, tenant_a.key, "printer paper jam on the third floor", end_user="carol", k=10,
                      mode="semantic")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET enable_seqscan")
    # then: the walk went on past the first ef_search candidates until ten of carol's passed the filter
    assert len(hits) == 10 and {hit["end_user"] for hit in hits} == {"carol"}


def test_expired_memories_are_not_found_and_are_deleted_by_expiry(client, tenant_a):
    kept = remember(client, tenant_a.key, "The office opens at 9 in the morning.")
    fleeting = remember(client, tenant_a.key, "Today's lunch special is mushroom risotto.", ttl_seconds=3600)
    assert fleeting["expires_at"] is not None
    with schema_context(tenant_a.schema):
        Memory.objects.filter(id=fleeting["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert fleeting["id"] not in {h["id"] for h in search(client, tenant_a.key, "lunch special risotto")}
    listed = client.get("/v1/memories", **bearer(tenant_a.key)).json()["results"]
    assert [m["id"] for m in listed] == [kept["id"]]
    with schema_context(tenant_a.schema):
        assert services.memories_expire(tenant=tenant_a.tenant) == 1
        assert [str(i) for i in Memory.objects.values_list("id", flat=True)] == [kept["id"]]


def test_an_end_user_is_forgotten_completely_and_deletion_is_audited(client, tenant_a, library):
    # when
    response = post(client, "/v1/memories/forget", {"end_user": "alice"}, tenant_a.key)
    # then
    assert response.status_code == 200 and response.json() == {"deleted": 2}
    assert not search(client, tenant_a.key, "Alice", end_user="alice", kinds=["fact"], mode="lexical")
    with schema_context(tenant_a.schema):
        assert not Memory.objects.filter(end_user="alice").exists()
        assert Memory.objects.count() == len(library) - 2
        forgot = AuditEvent.objects.get(action="memory.forget")
        assert forgot.data["deleted"] == 2 and "alice" not in json.dumps(forgot.data)
        assert forgot.data["end_user"] and forgot.data["end_user"] != hashlib.sha256(b"alice").hexdigest()[:16]
    # and one memory is deleted by id
    assert client.delete(f"/v1/memories/{library['order']}", **bearer(tenant_a.key)).status_code == 204
    assert client.get(f"/v1/memories/{library['order']}", **bearer(tenant_a.key)).status_code == 404
    assert client.delete(f"/v1/memories/{library['order']}", **bearer(tenant_a.key)).json()["code"] == \
        "memory_not_found"
    assert post(client, "/v1/memories/forget", {}, tenant_a.key).status_code == 400


def test_memory_endpoints_need_their_scopes(client, tenant_a):
    reader = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["memories:read"]).plaintext
    assert post(client, "/v1/memories", {"text": "x"}, reader).status_code == 403
    assert post(client, "/v1/memories/search", {"query": "x"}, reader).status_code == 200
    writer = ApiKeyFactory(tenant=tenant_a.tenant, scopes=["runs:read"]).plaintext
    assert post(client, "/v1/memories/search", {"query": "x"}, writer).status_code == 403


def test_provider_embeddings_go_through_litellm_and_the_key_is_sealed(client, tenant_a):
    server = start_in_thread()
    try:
        # given
        response = client.put("/v1/memories/settings", json.dumps({
            "embedding_model": "openai/text-embedding-3-small", "embedding_api_base": server.base_url,
            "embedding_api_key": "sk-provider-secret"}), content_type="application/json", **bearer(tenant_a.key))
        assert response.status_code == 200, response.json()
        assert response.json()["has_embedding_api_key"] is True and "sk-provider" not in response.content.decode()
        with schema_context(tenant_a.schema):
            sealed = MemorySettings.objects.get(id=1).embedding_api_key_encrypted
            assert sealed.startswith("v2:1:") and "sk-provider" not in sealed
        # when
        written = remember(client, tenant_a.key, "The warehouse in Porto ships on Tuesdays.")
        hits = search(client, tenant_a.key, "when does the Porto warehouse ship", mode="semantic")
        # then
        assert written["embedding_model"] == "openai/text-embedding-3-small"
        assert hits[0]["id"] == written["id"]
        # and memories of the local model are found again once re-embedded
        with schema_context(tenant_a.schema):
            services.memory_settings_update(tenant=tenant_a.tenant, actor=_actor(), embedding_model=LOCAL_MODEL_ID)
            assert not memory_search(tenant_schema=tenant_a.schema, query="Porto warehouse", mode="semantic")
            assert services.memories_reembed(tenant=tenant_a.tenant) == 1
            assert embedder_for(tenant_a.schema).model_id == LOCAL_MODEL_ID
            assert memory_search(tenant_schema=tenant_a.schema, query="Porto warehouse", mode="semantic")
    finally:
        server.stop()


def test_an_unknown_embedding_model_is_refused(client, tenant_a):
    response = client.put("/v1/memories/settings", json.dumps({"embedding_model": "bert"}),
                          content_type="application/json", **bearer(tenant_a.key))
    assert response.status_code == 400 and "embedding_model" in response.json()["errors"]


def _actor():
    from common.actors import Actor

    return Actor(kind="system", id="test")


def test_words_most_memories_share_are_left_out_of_the_word_search(client, tenant_a):
    # given: 300 memories that all say "customer", one that also names a rare code; statistics gathered
    from django.db import connection

    from data_plane import memory_selectors

    texts = [{"text": f"The customer number {i} called about delivery slot {i % 9}."} for i in range(299)]
    texts.append({"text": "The customer with code QX-551 asked for a refund."})
    for start in range(0, len(texts), 100):
        assert post(client, "/v1/memories/batch", {"memories": texts[start:start + 100]}, tenant_a.key).status_code == 200
    with schema_context(tenant_a.schema), owner_context(), connection.cursor() as cursor:  # maintenance: the owner's
        cursor.execute("ANALYZE data_plane_memory")
    memory_selectors.table_stats_forget(tenant_a.schema)
    # when
    with schema_context(tenant_a.schema):
        common = memory_selectors.common_words(tenant_a.schema)
    hits = search(client, tenant_a.key, "customer QX-551", mode="lexical", k=50)
    only_common = search(client, tenant_a.key, "the customer called", mode="lexical", k=50)
    # then: "custom" (the stem) matches every row and ranks nothing; the rare code decides
    assert "custom" in common and "qx" not in common
    assert [hit["text"] for hit in hits] == ["The customer with code QX-551 asked for a refund."]
    assert only_common == []


def test_the_search_breadth_grows_with_the_tenants_memories(settings):
    from data_plane.memory_selectors import ef_search_for

    settings.MEMORY_HNSW_EF_SEARCH = 160
    assert [ef_search_for(rows) for rows in (0, 50_000, 100_000, 1_000_000, 10_000_000)] == [160, 160, 160, 320, 480]
