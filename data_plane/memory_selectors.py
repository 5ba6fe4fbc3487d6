"""Long-term memory reads: hybrid search (meaning + words, fused by reciprocal rank), list, get, settings.

Search runs two ranked scans in one statement and fuses them:
- by meaning: ``ORDER BY embedding <=> q`` on the HNSW index, with the metadata filters in the same
  WHERE clause. pgvector's iterative scan (``hnsw.iterative_scan = relaxed_order``) keeps walking the
  graph until enough rows pass the filters, so a filtered query still returns k rows; the rows come
  back in nearly exact order and are re-ranked by their exact distance.
- by words: Postgres full text on the generated ``search_vector`` (GIN), with the same filters, ranked by
  ``ts_rank_cd``. Every word of the query is optional, except the tenant's common ones: a lexeme that
  ANALYZE found in more than ``COMMON_WORD_FREQUENCY`` of the rows, counted as at least 50 and at most 500
  rows (``COMMON_WORD_ROWS``; ``pg_stats.most_common_elems``, ``pg_class.reltuples``), tells little and
  would make the leg read and rank a large part of the table, so it is left out (the meaning leg still
  sees it). The word leg is for what is rare: names, codes, numbers. At most ``LEXICAL_CANDIDATES`` matches are ranked, so the cost stays bounded.
Reciprocal-rank fusion (k = 60, as in Cormack et al.) then orders the union.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from common.schemas import require_schema
from data_plane.errors import MemoryNotFound
from data_plane.models import Memory, MemorySettings
from data_plane.runtime.adapters.embeddings import LOCAL_MODEL_ID, Embedder, ProviderEmbedder, local_embedder
from data_plane.sealing import cipher_for, memory_settings_bound_to, memory_text_bound_to

_CACHE_LOCK = threading.Lock()
_STATS: dict[str, tuple[float, TableStats]] = {}
_EMBEDDERS: dict[str, tuple[float, Embedder]] = {}
EMBEDDER_SECONDS = 10.0
RRF_K = 60
LEXICAL_CANDIDATES = 60
COMMON_WORD_FREQUENCY = 0.002
COMMON_WORD_ROWS = (50, 500)  # a common word is in more than this many rows, whatever the frequency says
STATS_SECONDS = 300.0  # how long a schema's common words and embedding settings are kept in this process
_WORD = re.compile(r"[\w']+", re.UNICODE)


@dataclass(frozen=True)
class MemoryHit:
    id: UUID
    text: str
    kind: str
    agent: str
    end_user: str
    tags: list[str]
    metadata: dict[str, Any]
    source: str
    source_run_id: UUID | None
    embedding_model: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    score: float  # reciprocal-rank fusion of both rankings
    similarity: float | None  # cosine similarity to the query, when found by meaning
    semantic_rank: int | None
    lexical_rank: int | None


def memory_settings_get(*, tenant_schema: str) -> MemorySettings:
    require_schema(tenant_schema)
    found = MemorySettings.objects.filter(id=1).first()
    return found if found is not None else MemorySettings(id=1)


def embedder_for(tenant_schema: str) -> Embedder:
    """The embedding model the tenant chose: the local one unless a provider model is configured. Kept for a
    few seconds per schema (a search should not read the settings each time); a change here is seen at once."""
    now = time.monotonic()
    with _CACHE_LOCK:
        kept = _EMBEDDERS.get(tenant_schema)
    if kept is not None and now - kept[0] < EMBEDDER_SECONDS:
        return kept[1]
    embedder = _embedder(tenant_schema)
    with _CACHE_LOCK:
        _EMBEDDERS[tenant_schema] = (now, embedder)
    return embedder


def embedder_forget(tenant_schema: str) -> None:
    """The tenant's settings changed: the next search reads them again (other processes within seconds)."""
    with _CACHE_LOCK:
        _EMBEDDERS.pop(tenant_schema, None)


def _embedder(tenant_schema: str) -> Embedder:
    chosen = memory_settings_get(tenant_schema=tenant_schema)
    if chosen.embedding_model == LOCAL_MODEL_ID:
        return local_embedder()
    api_key = (cipher_for(tenant_schema).open(chosen.embedding_api_key_encrypted,
                                              bound_to=memory_settings_bound_to(tenant_schema))
               if chosen.embedding_api_key_encrypted else None)
    return ProviderEmbedder(model=chosen.embedding_model, api_base=chosen.embedding_api_base or None, api_key=api_key)


def memory_get(*, tenant_schema: str, memory_id: UUID) -> Memory:
    """One memory of the tenant. Raises MemoryNotFound (also for another tenant's id)."""
    require_schema(tenant_schema)
    try:
        return Memory.objects.defer("embedding").get(id=memory_id)
    except Memory.DoesNotExist:
        raise MemoryNotFound(f"Memory {memory_id} does not exist.") from None


def memory_list(*, tenant_schema: str, agent: str | None = None, end_user: str | None = None,
                kind: str | None = None, tags: Sequence[str] = (), source_run_id: UUID | None = None) -> QuerySet[Memory]:
    require_schema(tenant_schema)
    memories = Memory.objects.defer("embedding").filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
    if agent is not None:
        memories = memories.filter(agent=agent)
    if end_user is not None:
        memories = memories.filter(end_user=end_user)
    if kind:
        memories = memories.filter(kind=kind)
    if tags:
        memories = memories.filter(tags__contains=list(tags))
    if source_run_id:
        memories = memories.filter(source_run_id=source_run_id)
    return memories


def memory_search(*, tenant_schema: str, query: str, k: int = 10, agent: str | None = None,
                  end_user: str | None = None, kinds: Sequence[str] = (), tags: Sequence[str] = (),
                  mode: str = "hybrid", min_similarity: float | None = None,
                  embedder: Embedder | None = None, vector: Sequence[float] | None = None) -> list[MemoryHit]:
    """The k memories that best match ``query``.

    ``agent``: that agent's memories and those shared by every agent; ``end_user``: that user's and
    those of nobody in particular (never another end user's). ``kinds`` and ``tags`` (all must be
    present) narrow further. ``mode``: hybrid, semantic or lexical. ``min_similarity`` drops what was found
    by meaning alone and is less similar than that (a word match stays). ``vector``: the query's embedding
    when the caller has it already.
    """
    require_schema(tenant_schema)
    if mode not in ("hybrid", "semantic", "lexical"):
        raise ValueError(f"unknown search mode {mode!r}")
    embedder = embedder or embedder_for(tenant_schema)
    where, params = _filters(agent=agent, end_user=end_user, kinds=kinds, tags=tags)
    candidates = max(k * 4, 40)
    legs: list[str] = []
    if mode in ("hybrid", "semantic"):
        if vector is None:
            vector = embedder.embed([query])[0]
        params.update(q=vector_literal(vector), model=embedder.model_id, n=candidates)
        legs.append(f"""
semantic AS MATERIALIZED (
  SELECT id, embedding <=> %(q)s::vector AS distance FROM data_plane_memory
  WHERE embedding_model = %(model)s AND {where}
  ORDER BY embedding <=> %(q)s::vector LIMIT %(n)s),
semantic_ranked AS (SELECT id, distance, row_number() OVER (ORDER BY distance, id) AS rank FROM semantic)""")
    words = " ".join(dict.fromkeys(w.lower() for w in _WORD.findall(query)))[:2000]
    if mode in ("hybrid", "lexical") and words:
        params.update(words=words, n=candidates, cap=LEXICAL_CANDIDATES, common=common_words(tenant_schema))
        # The query's lexemes but the common ones, each optional; none left: the leg finds nothing.
        legs.append(f"""
tsq AS MATERIALIZED (
  SELECT to_tsquery('simple', coalesce(string_agg(quote_literal(lexeme), ' | '), '')) AS q
  FROM unnest(to_tsvector('english', %(words)s)) WHERE lexeme <> ALL(%(common)s::text[])),
matching AS MATERIALIZED (
  SELECT id, ts_rank_cd(search_vector, tsq.q) AS score
  FROM (SELECT id, search_vector FROM data_plane_memory, tsq
        WHERE search_vector @@ tsq.q AND {where} LIMIT %(cap)s) m, tsq),
lexical_ranked AS (SELECT id, row_number() OVER (ORDER BY score DESC, id) AS rank
                   FROM (SELECT id, score FROM matching ORDER BY score DESC, id LIMIT %(n)s) top)""")
    if not legs:
        return []
    has_semantic = mode in ("hybrid", "semantic")
    has_lexical = mode in ("hybrid", "lexical") and bool(words)
    if has_semantic and has_lexical:
        fused = """fused AS (SELECT coalesce(s.id, l.id) AS id, s.distance, s.rank AS srank, l.rank AS lrank,
  coalesce(1.0 / (%(rrf)s + s.rank), 0) + coalesce(1.0 / (%(rrf)s + l.rank), 0) AS score
  FROM semantic_ranked s FULL JOIN lexical_ranked l ON l.id = s.id)"""
    elif has_semantic:
        fused = "fused AS (SELECT id, distance, rank AS srank, NULL::bigint AS lrank, 1.0 / (%(rrf)s + rank) AS score FROM semantic_ranked)"
    else:
        fused = "fused AS (SELECT id, NULL::float8 AS distance, NULL::bigint AS srank, rank AS lrank, 1.0 / (%(rrf)s + rank) AS score FROM lexical_ranked)"
    params.update(rrf=RRF_K, k=k)
    extra = ""
    if min_similarity is not None and has_semantic:
        extra = "WHERE f.distance <= %(max_distance)s OR f.lrank IS NOT NULL"  # a word match stays
        params["max_distance"] = 1.0 - min_similarity
    # Only the k best are read from the table (each a random page of a large table): not every candidate.
    sql = f"""WITH {",".join(legs)}, {fused},
top AS MATERIALIZED (SELECT * FROM fused f {extra} ORDER BY f.score DESC, f.distance NULLS LAST, f.id LIMIT %(k)s)
SELECT m.id, m.text, m.kind, m.agent, m.end_user, m.tags, m.metadata, m.source, m.source_run_id, m.embedding_model,
       m.created_at, m.updated_at, m.expires_at, t.score, t.distance, t.srank, t.lrank, m.sealed_text
FROM top t JOIN data_plane_memory m ON m.id = t.id
ORDER BY t.score DESC, t.distance NULLS LAST, m.id"""
    with transaction.atomic(), connection.cursor() as cursor:
        _tune(cursor, tenant_schema)
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    cipher = cipher_for(tenant_schema) if any(r[17] for r in rows) else None
    return [MemoryHit(id=r[0], text=_text(cipher, tenant_schema, r[0], r[1], r[17]), kind=r[2], agent=r[3], end_user=r[4], tags=list(r[5]),
                      metadata=r[6] if isinstance(r[6], dict) else _loads(r[6]), source=r[7], source_run_id=r[8],
                      embedding_model=r[9], created_at=r[10], updated_at=r[11], expires_at=r[12], score=float(r[13]),
                      similarity=None if r[14] is None else 1.0 - float(r[14]),
                      semantic_rank=r[15], lexical_rank=r[16]) for r in rows]


def memory_search_exact(*, tenant_schema: str, vector: Sequence[float], model_id: str, k: int = 10,
                        agent: str | None = None, end_user: str | None = None, kinds: Sequence[str] = (),
                        tags: Sequence[str] = ()) -> list[UUID]:
    """The exact k nearest by meaning (a sequential scan, no index): the truth recall is measured against."""
    require_schema(tenant_schema)
    where, params = _filters(agent=agent, end_user=end_user, kinds=kinds, tags=tags)
    params.update(q=vector_literal(vector), model=model_id, k=k)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute(f"SELECT id FROM data_plane_memory WHERE embedding_model = %(model)s AND {where} "
                       f"ORDER BY embedding <=> %(q)s::vector, id LIMIT %(k)s", params)
        return [row[0] for row in cursor.fetchall()]


@dataclass(frozen=True)
class TableStats:
    rows: float  # as ANALYZE last estimated (0 before the first)
    common: list[str]  # lexemes too common to search by


def table_stats(tenant_schema: str) -> TableStats:
    """The tenant's memory count and common words, as ANALYZE last counted them; kept for a few minutes."""
    now = time.monotonic()
    with _CACHE_LOCK:
        kept = _STATS.get(tenant_schema)
    if kept is not None and now - kept[0] < STATS_SECONDS:
        return kept[1]
    with connection.cursor() as cursor:
        cursor.execute("SELECT c.reltuples, s.most_common_elems::text::text[], s.most_common_elem_freqs "
                       "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname "
                       "AND s.attname = 'search_vector' WHERE n.nspname = %s AND c.relname = 'data_plane_memory'",
                       [tenant_schema])
        row = cursor.fetchone()
    rows = max(float(row[0] or 0), 0.0) if row is not None else 0.0
    common: list[str] = []
    if row is not None and row[1] is not None:
        low, high = COMMON_WORD_ROWS
        threshold = min(max(COMMON_WORD_FREQUENCY * rows, low), high) / max(rows, 1.0)
        common = [lexeme for lexeme, frequency in zip(row[1], row[2]) if frequency > threshold]
    stats = TableStats(rows=rows, common=common)
    with _CACHE_LOCK:
        _STATS[tenant_schema] = (now, stats)
    return stats


def table_stats_forget(tenant_schema: str) -> None:
    """Read the tenant's statistics again at the next search (after a bulk import and ANALYZE, say)."""
    with _CACHE_LOCK:
        _STATS.pop(tenant_schema, None)


def common_words(tenant_schema: str) -> list[str]:
    """The lexemes in more than COMMON_WORD_FREQUENCY of the tenant's memories and more than COMMON_WORD_ROWS
    of them, as ANALYZE last counted (none before the table was first analysed: it is small then)."""
    return table_stats(tenant_schema).common


def ef_search_for(rows: float) -> int:
    """The HNSW search breadth for a tenant of this many memories: MEMORY_HNSW_EF_SEARCH up to 100k, then
    more as the graph grows (twice at 1M), so recall holds (bench: 0.988 at 100k; at 1M 0.94 with 160)."""
    base = settings.MEMORY_HNSW_EF_SEARCH
    if rows <= 100_000:
        return base
    return min(1000, round(base * (1 + math.log10(rows / 100_000))))


def _tune(cursor: Any, tenant_schema: str) -> None:
    ef = ef_search_for(table_stats(tenant_schema).rows)
    cursor.execute("SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true), "
                   "set_config('hnsw.max_scan_tuples', %s, true)",
                   [str(ef), str(settings.MEMORY_HNSW_MAX_SCAN_TUPLES)])


def _filters(*, agent: str | None, end_user: str | None, kinds: Sequence[str], tags: Sequence[str]
             ) -> tuple[str, dict[str, Any]]:
    clauses = ["(expires_at IS NULL OR expires_at > now())"]
    params: dict[str, Any] = {}
    if agent is not None:
        clauses.append("agent IN (%(agent)s, '')")
        params["agent"] = agent
    if end_user is not None:
        clauses.append("end_user IN (%(end_user)s, '')")
        params["end_user"] = end_user
    if kinds:
        clauses.append("kind = ANY(%(kinds)s)")
        params["kinds"] = list(kinds)
    if tags:
        clauses.append("tags @> %(tags)s::varchar[]")
        params["tags"] = [t.lower() for t in tags]
    return " AND ".join(clauses), params


def vector_literal(vector: Sequence[float]) -> str:
    """A vector as pgvector's text input, at float32 precision."""
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


def _text(cipher: Any, tenant_schema: str, memory_id: UUID, text: str, sealed_text: str) -> str:
    if not sealed_text:
        return text
    return cipher.open_text(sealed_text, bound_to=memory_text_bound_to(tenant_schema, memory_id))


def _loads(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, (str, bytes)) else dict(value or {})
