"""pgvector works inside a tenant schema: a vector column, an HNSW index, a nearest-neighbour query."""

from __future__ import annotations

from django.db import connection
from django_tenants.utils import schema_context

from tenants.db_roles import owner_context


def test_hnsw_nearest_neighbours_in_a_tenant_schema(tenant_a, tenant_b):
    # given: a table with an HNSW cosine index in tenant A's schema
    with schema_context(tenant_a.schema), owner_context(), connection.cursor() as cursor:  # DDL: the owner's
        cursor.execute("CREATE TABLE probe_items (id int PRIMARY KEY, embedding vector(3) NOT NULL)")
        cursor.execute("CREATE INDEX probe_items_hnsw ON probe_items USING hnsw (embedding vector_cosine_ops)")
    # the tenant's role reads and writes the table its schema's owner created (default privileges)
    with schema_context(tenant_a.schema), connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO probe_items (id, embedding) VALUES (%s, %s)",
            [(1, "[1,0,0]"), (2, "[0.9,0.1,0]"), (3, "[0,1,0]"), (4, "[0,0,1]"), (5, "[-1,0,0]")],
        )
        cursor.execute("SET LOCAL enable_seqscan = off")
        # when
        cursor.execute("EXPLAIN SELECT id FROM probe_items ORDER BY embedding <=> '[1,0.05,0]' LIMIT 2")
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("SELECT id, round((embedding <=> '[1,0.05,0]')::numeric, 4) "
                       "FROM probe_items ORDER BY embedding <=> '[1,0.05,0]' LIMIT 2")
        nearest = cursor.fetchall()
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        version = cursor.fetchone()[0]
    # then
    assert "probe_items_hnsw" in plan
    assert [row[0] for row in nearest] == [1, 2]
    assert version >= "0.8"
    # and the table exists only in tenant A's schema
    with connection.cursor() as cursor:
        # (the catalog: information_schema shows only the tables the current role may use)
        cursor.execute("SELECT schemaname FROM pg_tables WHERE tablename = 'probe_items'")
        assert [row[0] for row in cursor.fetchall()] == [tenant_a.schema]
