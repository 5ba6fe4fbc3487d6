"""Long-term memory: local embedding throughput, ingest, and search latency and recall at 100k (1M with
BENCH_FULL=1) memories in the bench tenant, through the real code (``memory_remember``,
``memory_search``, ``memory_search_exact``); never a re-implementation of the search.

How the data is made (deterministic, seeded):
- Real sentences: ``sentence()`` fills ~55 templates over 18 topics (billing, shipping, travel, health,
  software incidents, ...) with people, companies, cities, products, numbers and dates drawn from fixed
  pools, so the sentences cluster naturally by topic and template. ``BASES`` (5000) of them are embedded
  with the real local model (``local_embedder()``, the ONNX MiniLM): that is ``embed_per_second``.
- Derived rows: each stored row picks a base sentence at random; its vector is the base's real vector plus
  isotropic Gaussian noise whose norm is drawn uniformly from 0.2 to 0.6 (cosine to the base 0.86 to
  0.98), re-normalised to unit length; its text is the base's template re-filled with the same words but
  fresh numbers (amounts, ids, dates), so the words the full-text leg sees match the vector. Embedding
  every row for real would take minutes at 100k and hours at 1M on 2 cores. Isotropic noise spreads a
  cluster's members evenly around its centre, which makes the nearest neighbours harder to tell apart than
  real paraphrases are: recall measured here is, if anything, pessimistic.
- Metadata: ``agent`` one of 50 (``agent-0`` .. ``agent-49``, about 2% of rows each) or shared ('' for 1%);
  ``end_user`` one of rows/20 (5000 at 100k, about 20 rows each, assigned at random, independent of the
  topic: the hard case for a filtered vector scan) or '' for the 0.5% that are lessons; ``kind`` fact 79.5%,
  note 20%, lesson 0.5%; one or two tags (the topic and one of 20 more); 5% expire in 30 days (none have
  expired: the TTL job deletes those); ``embedding_model`` the local model.
- Queries (not stored): ``QUERIES`` (300), two thirds fresh perturbations of random bases with their
  re-filled texts, one third held-out real sentences (new fillings of the templates, embedded for real).

Ingest: the HNSW index is dropped, the rows go in by binary COPY (the tsvector, which a trigger fills,
and the other indexes maintained as they go), then the index is created again from its own definition
(m=24, ef_construction=128, the migration's), the table vacuumed and analysed and a checkpoint taken (the
import's aftermath, which would otherwise run during the searches). ``memory_remember`` is measured separately on
``REMEMBER`` (500) new real sentences in batches of 100 with the index in place: it embeds, looks for a
near-duplicate in the scope and writes an audit row per memory.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import psycopg
from django.conf import settings
from django.db import connection, transaction
from django_tenants.utils import schema_context
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from bench.measure import percentile
from data_plane.memory_selectors import vector_literal, memory_search, memory_search_exact, table_stats_forget
from data_plane.runtime.adapters.embeddings import LOCAL_MODEL_ID, local_embedder
from data_plane.services.memory import MemoryDraft, memory_remember

ROWS = int(os.environ.get("BENCH_MEMORY_ROWS", "100000"))
FULL_ROWS = 1_000_000
BASES = int(os.environ.get("BENCH_MEMORY_BASES", "5000"))
QUERIES = int(os.environ.get("BENCH_MEMORY_QUERIES", "300"))
FILTERED_QUERIES = int(os.environ.get("BENCH_MEMORY_FILTERED_QUERIES", "100"))
EMBED_QUERIES = 100
REMEMBER = int(os.environ.get("BENCH_MEMORY_REMEMBER", "500"))
EXPLAIN = os.environ.get("BENCH_MEMORY_EXPLAIN") == "1"
AGENTS = 50
K = 10
WARMUP = 20
SEED = 20240611
COPY_CHUNK = 20000

COLUMNS = ("id", "text", "kind", "agent", "end_user", "tags", "metadata", "source", "source_run_id", "embedding",
           "embedding_model", "merged_count", "created_by", "created_at", "updated_at", "expires_at", "sealed_text")
COPY_TYPES = ["uuid", "text", "varchar", "varchar", "varchar", "varchar[]", "jsonb", "varchar", "uuid", "vector",
              "varchar", "int4", "varchar", "timestamptz", "timestamptz", "timestamptz", "text"]

# Figures beside BENCH.md's targets (run.py prints them as diagnostics).
DIAGNOSTICS: dict[str, str] = {
    "memory_ingest_copy_rows_per_second": "bulk COPY into data_plane_memory without the HNSW index",
    "memory_ingest_index_build_s_100k": "CREATE INDEX of the HNSW index after the COPY",
    "memory_ingest_rows_per_second_100k": "COPY and index build together",
    "memory_index_mb_100k": "",
    "memory_remember_per_second": "memory_remember, 100 real sentences a call: embeds, near-duplicate check, audit",
    "memory_remember_merged": "of those, folded into a near-duplicate",
    "memory_search_embed_p50_ms_100k": "memory_search with the query embedded in the call",
    "memory_search_embed_p99_ms_100k": "",
    "memory_search_semantic_p50_ms_100k": "mode=semantic (the leg recall is measured on)",
    "memory_search_semantic_p99_ms_100k": "",
    "memory_search_floor_p50_ms_100k": "",
    "memory_floor_recall_at_10_100k": "the floor's recall against the same exact search",
    "memory_recall_at_10_perturbed_queries_100k": "queries: held-out perturbations",
    "memory_recall_at_10_real_queries_100k": "queries: held-out real sentences",
    **{f"memory_search_{name}_{what}_100k": note for name, label in (("end_user", "one end user"),
                                                                      ("agent", "one agent"))
       for what, note in (("p50_ms", f"hybrid, filtered to {label}"), ("p99_ms", ""),
                          ("full_k", "share of filtered queries that got k results (hybrid and semantic)"))},
    "memory_recall_at_10_end_user_100k": "semantic, end-user filter, against exact with the same filter",
    "memory_recall_at_10_agent_100k": "semantic, agent filter, against exact with the same filter",
    "memory_end_user_filter_rows_100k": "rows passing the end-user filter (theirs and the shared lessons)",
    "memory_agent_filter_rows_100k": "rows passing the agent filter (its own and the shared ones)",
    "memory_ingest_index_build_s_1m": "",
    "memory_index_mb_1m": "",
    "memory_search_p50_ms_1m": "",
    "memory_search_floor_p99_ms_1m": "",
    "memory_search_ratio_1m": "memory_search_p99_ms_1m / memory_search_floor_p99_ms_1m",
    "memory_floor_recall_at_10_1m": "",
    "memory_search_end_user_p99_ms_1m": "",
    "memory_search_agent_p99_ms_1m": "",
    "memory_recall_at_10_end_user_1m": "",
    "memory_recall_at_10_agent_1m": "",
}

# --- realistic sentences ------------------------------------------------------------------------------

POOLS: dict[str, list[str]] = {
    "person": "Maria Chen|Tom Okafor|Ana Silva|Lukas Weber|Priya Nair|James Miller|Sofia Rossi|Kenji Tanaka|"
              "Fatima Haddad|Oliver Smith|Elena Petrova|Diego Alvarez|Hannah Schulz|Mohammed Aziz|Chloe Martin|"
              "Ravi Patel|Emma Johansson|Lucas Dubois|Aisha Bello|Noah Williams".split("|"),
    "company": "Acme Logistics|Northwind|Globex|Initech|Umbrella Foods|Stark Retail|Wayne Health|Hooli|"
               "Vandelay Imports|Soylent Labs|Tyrell Systems|Cyberdyne Energy|Monarch Travel|Pied Piper|"
               "Blue Harbor Bank|Gringotts Insurance".split("|"),
    "city": "Lisbon|Porto|Berlin|Munich|Paris|Lyon|Madrid|Rome|Milan|Amsterdam|Warsaw|Prague|Vienna|Dublin|"
            "London|Manchester|Oslo|Stockholm|Helsinki|Athens".split("|"),
    "month": "January|February|March|April|May|June|July|August|September|October|November|December".split("|"),
    "weekday": "Monday|Tuesday|Wednesday|Thursday|Friday".split("|"),
    "plan": "Starter|Team|Business|Enterprise|Premium".split("|"),
    "payment": "bank transfer|credit card|direct debit|PayPal|purchase order".split("|"),
    "carrier": "DHL|UPS|FedEx|DPD|GLS|the national post".split("|"),
    "diet": "vegetarian|vegan|pescatarian|gluten free|lactose intolerant|on a low sodium diet".split("|"),
    "food": "mushrooms|spicy food|seafood|olives|coriander|peanuts|red meat|sushi|pasta|salads".split("|"),
    "place": "old town|central station|airport|river|conference centre|university".split("|"),
    "service": "billing|checkout|search|notifications|auth|reporting|inventory|payments gateway".split("|"),
    "env": "staging|production|the EU region|the US region".split("|"),
    "action": "exporting a report|uploading a photo|resetting the password|paying with a saved card|"
              "syncing the calendar|opening an attachment|switching accounts|applying a discount code".split("|"),
    "team": "platform|data|sales|support|finance|design|mobile|security".split("|"),
    "allergen": "penicillin|pollen|nuts|shellfish|latex|cats|bee stings".split("|"),
    "product": "mobile|desktop|web dashboard|analytics|scheduling|invoicing".split("|"),
    "thing": "the API key|the webhook secret|the DNS record|the retry queue|the cache|the feature flag|"
             "the rate limit|the database migration".split("|"),
    "quarter": "Q1|Q2|Q3|Q4".split("|"),
    "device": "ThinkPad|MacBook Air|Pixel phone|iPhone|Surface tablet|Chromebook".split("|"),
    "os": "Windows|macOS|Android|iOS|Ubuntu|ChromeOS".split("|"),
    "language": "Portuguese|German|French|Spanish|Italian|Polish|Japanese|English".split("|"),
    "subject": "statistics|organic chemistry|contract law|machine learning|accounting|Spanish literature".split("|"),
    "pets": "two cats|a dog|a parrot|three children and a dog|a roommate|their parents".split("|"),
    "hobby": "trail running|chess|cycling|pottery|jazz piano|birdwatching|sailing|rock climbing".split("|"),
    "symptom": "migraines|back pain|insomnia|high blood pressure|seasonal asthma".split("|"),
}
NUMERIC = {"num": lambda r: str(r.randint(1000, 99999)), "day": lambda r: str(r.randint(1, 28)),
           "amount": lambda r: str(r.choice([19, 29, 49, 99, 120, 250, 480, 900, 1500, 4200])),
           "days": lambda r: str(r.randint(2, 60)), "code": lambda r: str(r.choice([400, 401, 403, 404, 409, 429,
                                                                                    500, 502, 503, 504])),
           "year": lambda r: str(r.randint(2015, 2026)), "ver": lambda r: f"{r.randint(8, 17)}.{r.randint(0, 9)}",
           "hour": lambda r: str(r.randint(8, 17))}
TOPICS: dict[str, list[str]] = {
    "billing": ["{person} asked to move invoice {num} to the {month} billing period.",
                "The {plan} plan for {company} renews on {month} {day} at {amount} dollars a month.",
                "{company} pays its invoices by {payment} within {days} days."],
    "shipping": ["Order {num} for {person} ships from the {city} warehouse with {carrier}.",
                 "{person}'s parcel {num} was held at customs in {city} for {days} days.",
                 "{company} wants every delivery to {city} sent with {carrier}, never express."],
    "food": ["{person} is {diet} and dislikes {food}.",
             "{person} likes {food} for lunch on {weekday}s.",
             "For team dinners {person} books places with {food}; {person2} is {diet}."],
    "travel": ["{person} flies to {city} on {month} {day} and prefers an aisle seat.",
               "{person} stays at hotels near the {place} when visiting {city}.",
               "{person} needs a visa letter for the trip to {city} in {month}."],
    "incidents": ["The {service} service returns error {code} when {action}.",
                  "Deploys of {service} to {env} need approval from {person}.",
                  "The outage of {service} on {month} {day} was caused by {thing}."],
    "hr": ["{person} is on parental leave until {month} {day}.",
           "{person} joined the {team} team in {month} {year}.",
           "{person} reports to {person2} and works from {city} on {weekday}s."],
    "health": ["{person} is allergic to {allergen} and carries medication.",
               "{person} has {symptom} and prefers appointments in the morning.",
               "{person}'s next check-up for {symptom} is on {month} {day}."],
    "support": ["{person} reported that the {product} app crashes when {action}.",
                "Ticket {num}: {company} cannot log in to the {product} app since {month} {day}.",
                "{person} asked for a refund of {amount} dollars after the {product} app failed."],
    "meetings": ["{person} prefers meetings after {hour} o'clock on {weekday}s.",
                 "The weekly sync with {company} is on {weekday} at {hour} o'clock, hosted by {person}.",
                 "{person} never takes calls on {weekday} mornings."],
    "sales": ["{company} is evaluating the {product} product for {num} seats; decision due in {month}.",
              "{person} at {company} asked for a {plan} plan quote of {amount} dollars per seat.",
              "{company} signed a {days} month pilot of the {product} product."],
    "contacts": ["{person}'s manager is {person2}, reachable at extension {num}.",
                 "{person} is the billing contact at {company}.",
                 "Send {company}'s contracts to {person}, not to {person2}."],
    "lessons": ["When {action} fails, check {thing} first; it caused {days} failures last week.",
                "Before changing {thing} in {env}, tell {person} on the {team} team.",
                "Retrying after error {code} from {service} works only after {days} seconds."],
    "finance": ["The {team} budget for {quarter} is {amount} thousand euros.",
                "{company} owes {amount} euros on invoice {num}, due {month} {day}.",
                "Expenses over {amount} euros need sign-off from {person}."],
    "devices": ["{person} uses a {device} running {os} version {ver}.",
                "{person}'s {device} cannot install the {product} app on {os} {ver}.",
                "{person} replaced the {device} in {month} {year}."],
    "language": ["{person} writes in {language} and wants replies in {language2}.",
                 "{company}'s documents must be translated to {language}.",
                 "{person} is learning {language} and practises on {weekday}s."],
    "legal": ["The contract with {company} expires on {month} {day}, {year} and renews automatically.",
              "{company} requires a data processing agreement before sharing data from {city}.",
              "{person} at {company} must approve any change to clause {days} of the contract."],
    "education": ["{person} is studying {subject} and has an exam on {month} {day}.",
                  "{person} wants study reminders for {subject} every {weekday}.",
                  "{person} finished the {subject} course with a grade of {days}."],
    "personal": ["{person} lives in {city} with {pets}.",
                 "{person} spends weekends on {hobby} near {city}.",
                 "{person}'s birthday is on {month} {day}; they enjoy {hobby}."],
}
TOPIC_NAMES = list(TOPICS)
TEMPLATES = [(topic, template) for topic in TOPIC_NAMES for template in TOPICS[topic]]
EXTRA_TAGS = ("urgent vip follow-up verified draft billing-q inbound outbound escalated renewal churn-risk "
              "onboarding beta internal external weekly monthly archived pinned review").split()


def sentence(rng: random.Random) -> tuple[int, dict[str, str]]:
    """A template (index) and its fillings: words from the pools, numbers drawn fresh."""
    index = rng.randrange(len(TEMPLATES))
    slots = {name: rng.choice(pool) for name, pool in POOLS.items()}
    slots["person2"] = rng.choice(POOLS["person"])
    slots["language2"] = rng.choice(POOLS["language"])
    slots.update({name: draw(rng) for name, draw in NUMERIC.items()})
    return index, slots


def render(index: int, slots: dict[str, str]) -> str:
    return TEMPLATES[index][1].format(**slots)


def refill(rng: random.Random, slots: dict[str, str]) -> dict[str, str]:
    """The same words with fresh numbers (another invoice, another date)."""
    return {**slots, **{name: draw(rng) for name, draw in NUMERIC.items()}}


# --- the data set -------------------------------------------------------------------------------------

class DataSet:
    """The embedded base sentences and how to derive rows and queries from them."""

    def __init__(self, *, bases: int, held_out: int, seed: int = SEED) -> None:
        rng = random.Random(seed)
        self.bases = [sentence(rng) for _ in range(bases)]
        texts = [render(*base) for base in self.bases]
        held_rng = random.Random(seed + 1)
        self.held_out_texts = [render(*sentence(held_rng)) for _ in range(held_out)]
        embedder = local_embedder()
        embedder.embed(texts[:64])  # the session loads on first use
        started = time.perf_counter()
        self.vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
        self.embed_seconds = time.perf_counter() - started
        self.held_out_vectors = np.asarray(embedder.embed(self.held_out_texts), dtype=np.float32)

    def perturb(self, rng: np.random.Generator, base_ids: np.ndarray) -> np.ndarray:
        """Unit vectors near the bases': noise of norm uniform in [0.2, 0.6], re-normalised."""
        noise = rng.standard_normal((len(base_ids), self.vectors.shape[1]), dtype=np.float32)
        noise *= (rng.uniform(0.2, 0.6, len(base_ids)).astype(np.float32)
                  / np.linalg.norm(noise, axis=1))[:, None]
        out = self.vectors[base_ids] + noise
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def rows(self, *, count: int, seed: int, end_users: int) -> Iterator[tuple[Any, ...]]:
        """``count`` rows for COPY, in COLUMNS order."""
        rng = np.random.default_rng(seed)
        text_rng = random.Random(seed)
        now = datetime.now(timezone.utc)
        expiry = now + timedelta(days=30)
        for start in range(0, count, COPY_CHUNK):
            n = min(COPY_CHUNK, count - start)
            base_ids = rng.integers(0, len(self.bases), n)
            vectors = self.perturb(rng, base_ids)
            kind_draw, agent_draw, expire_draw = rng.random(n), rng.random(n), rng.random(n)
            agents, users = rng.integers(0, AGENTS, n), rng.integers(0, end_users, n)
            ages = rng.uniform(0, 365 * 86400, n)
            extra = rng.integers(-len(EXTRA_TAGS), len(EXTRA_TAGS), n)  # negative: no second tag
            for i in range(n):
                template, slots = self.bases[base_ids[i]]
                kind = "lesson" if kind_draw[i] < 0.005 else "note" if kind_draw[i] < 0.205 else "fact"
                topic = TEMPLATES[template][0]
                tags = [topic] if extra[i] < 0 else [topic, EXTRA_TAGS[extra[i]]]
                created = now - timedelta(seconds=float(ages[i]))
                yield (uuid.uuid4(), render(template, refill(text_rng, slots)), kind,
                       "" if agent_draw[i] < 0.01 else f"agent-{agents[i]}",
                       "" if kind == "lesson" else f"user-{users[i]}", tags, Jsonb({"topic": topic}),
                       "extraction" if kind_draw[i] < 0.7 else "api", None, vectors[i], LOCAL_MODEL_ID,
                       0, "bench", created, created, expiry if expire_draw[i] < 0.05 else None, "")

    def queries(self, *, count: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
        """(kind, text, vector): two thirds perturbations of random bases, one third held-out sentences."""
        rng = np.random.default_rng(seed)
        text_rng = random.Random(seed)
        real = min(count // 3, len(self.held_out_texts))
        base_ids = rng.integers(0, len(self.bases), count - real)
        vectors = self.perturb(rng, base_ids)
        out = [("perturbed", render(self.bases[b][0], refill(text_rng, self.bases[b][1])), vectors[i])
               for i, b in enumerate(base_ids)]
        out += [("real", self.held_out_texts[i], self.held_out_vectors[i]) for i in range(real)]
        random.Random(seed).shuffle(out)
        return out


# --- ingest -------------------------------------------------------------------------------------------

def _raw_connection(schema: str) -> psycopg.Connection:
    conn = psycopg.connect(settings.DATABASE_URL, autocommit=True, options=f"-c search_path={schema},public")
    register_vector(conn)
    return conn


def bulk_load(*, schema: str, data: DataSet, count: int, seed: int, end_users: int) -> dict[str, float]:
    """Drop the HNSW index, COPY ``count`` rows in, create the index again from its own definition."""
    with _raw_connection(schema) as conn:
        definition = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                                  [schema, "memory_embedding_hnsw"]).fetchone()[0]
        conn.execute("DROP INDEX memory_embedding_hnsw")
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(
                f"COPY data_plane_memory ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(COPY_TYPES)
            for row in data.rows(count=count, seed=seed, end_users=end_users):
                copy.write_row(row)
        copy_seconds = time.perf_counter() - started
        started = time.perf_counter()
        # The graph must fit in maintenance_work_mem or the build slows down a lot (pgvector's advice).
        conn.execute(f"SET maintenance_work_mem = '{'3GB' if count > 200_000 else '1GB'}'")
        conn.execute(definition)
        index_seconds = time.perf_counter() - started
        # What a bulk import is followed by: VACUUM ANALYZE sets the new rows' hint bits and visibility map and
        # gathers statistics, and CHECKPOINT writes out the pages the import dirtied (gigabytes at 1M). The
        # searches measured next then see the steady state, not autovacuum and a checkpoint of the import
        # working beside them on the same 2 cores.
        conn.execute("VACUUM (ANALYZE) data_plane_memory")
        conn.execute("CHECKPOINT")
        table_stats_forget(schema)  # the search reads the new row count and common words at once
        size = conn.execute("SELECT pg_relation_size('memory_embedding_hnsw'), pg_total_relation_size("
                            "'data_plane_memory'), count(*) FROM data_plane_memory").fetchone()
    return {"copy_rows_per_second": count / copy_seconds, "index_build_s": index_seconds,
            "rows_per_second": count / (copy_seconds + index_seconds), "index_mb": size[0] / 2 ** 20,
            "table_mb": size[1] / 2 ** 20, "rows": size[2]}


def remember_rate(*, tenant: Any, actor: Any, count: int, end_users: int) -> dict[str, float]:
    """New real sentences through ``memory_remember`` (embedding, near-duplicate check, audit), 100 a call."""
    rng = random.Random(SEED + 7)
    drafts = []
    for _ in range(count):
        index, slots = sentence(rng)
        drafts.append(MemoryDraft(text=render(index, slots), kind="fact", agent=f"agent-{rng.randrange(AGENTS)}",
                                  end_user=f"user-{rng.randrange(end_users)}", tags=(TEMPLATES[index][0],)))
    merged = 0
    started = time.perf_counter()
    with schema_context(tenant.schema_name):
        for start in range(0, count, 100):
            merged += sum(r.merged for r in memory_remember(tenant=tenant, drafts=drafts[start:start + 100],
                                                            actor=actor, source="extraction"))
    return {"memory_remember_per_second": count / (time.perf_counter() - started), "memory_remember_merged": merged}


# --- search -------------------------------------------------------------------------------------------

def _floor(vector: np.ndarray) -> list[Any]:
    """The baseline: a plain pgvector kNN on the same rows and index, at the same ef_search."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(settings.MEMORY_HNSW_EF_SEARCH)])
        cursor.execute("SELECT id FROM data_plane_memory ORDER BY embedding <=> %s::vector LIMIT 10",
                       [vector_literal(vector)])
        return [row[0] for row in cursor.fetchall()]


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def _recall(found: Sequence[Any], truth: Sequence[Any]) -> float:
    return len(set(found) & set(truth)) / len(truth) if truth else 1.0


@contextmanager
def _explained(label: str) -> Iterator[None]:
    """Print EXPLAIN (ANALYZE, BUFFERS) of the real statements the code runs inside (BENCH_MEMORY_EXPLAIN=1)."""
    if not EXPLAIN:
        yield
        return

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip().upper().startswith(("WITH", "SELECT ID FROM")):
            cursor = context["cursor"]
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            print(f"--- EXPLAIN {label}\n" + "\n".join(row[0] for row in cursor.fetchall()), flush=True)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield


def search_figures(*, schema: str, data: DataSet, suffix: str, queries: int, filtered: int,
                   end_users: int, with_embedding: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    qs = data.queries(count=queries, seed=SEED + 11)
    with schema_context(schema):
        for _, text, vector in qs[:WARMUP]:  # caches, the plan, the embedder
            memory_search(tenant_schema=schema, query=text, k=K, vector=vector)
            _floor(vector)
        ours, floor, semantic = [], [], []
        recall: dict[str, list[float]] = {"perturbed": [], "real": []}
        floor_recall = []
        for kind, text, vector in qs:
            # Ours and the floor one after the other for every query: noise hits both alike.
            ms, _ = _timed(lambda: memory_search(tenant_schema=schema, query=text, k=K, vector=vector))
            ours.append(ms)
            ms, floor_ids = _timed(lambda: _floor(vector))
            floor.append(ms)
            ms, hits = _timed(lambda: memory_search(tenant_schema=schema, query=text, k=K, vector=vector,
                                                    mode="semantic"))
            semantic.append(ms)
            truth = memory_search_exact(tenant_schema=schema, vector=vector, model_id=LOCAL_MODEL_ID, k=K)
            recall[kind].append(_recall([h.id for h in hits], truth))
            floor_recall.append(_recall(floor_ids, truth))
        everything = recall["perturbed"] + recall["real"]
        figures.update({
            f"memory_search_p50_ms_{suffix}": percentile(ours, 50),
            f"memory_search_p99_ms_{suffix}": percentile(ours, 99),
            f"memory_recall_at_10_{suffix}": sum(everything) / len(everything),
            f"memory_search_floor_p50_ms_{suffix}": percentile(floor, 50),
            f"memory_search_floor_p99_ms_{suffix}": percentile(floor, 99),
            f"memory_floor_recall_at_10_{suffix}": sum(floor_recall) / len(floor_recall),
            f"memory_search_semantic_p50_ms_{suffix}": percentile(semantic, 50),
            f"memory_search_semantic_p99_ms_{suffix}": percentile(semantic, 99),
        })
        for kind, values in recall.items():
            if values:
                figures[f"memory_recall_at_10_{kind}_queries_{suffix}"] = sum(values) / len(values)
        if EXPLAIN:
            kind, text, vector = qs[0]
            with _explained("hybrid"):
                memory_search(tenant_schema=schema, query=text, k=K, vector=vector)
            with _explained("floor"):
                _floor(vector)

        if with_embedding:  # the same search with the query embedded in the call (the local model)
            embedded = [_timed(lambda: memory_search(tenant_schema=schema, query=text, k=K))[0]
                        for _, text, _ in qs[:EMBED_QUERIES]]
            figures[f"memory_search_embed_p50_ms_{suffix}"] = percentile(embedded, 50)
            figures[f"memory_search_embed_p99_ms_{suffix}"] = percentile(embedded, 99)

        # Selective filters: one end user (about 20 rows of their own, plus the 0.5% shared lessons) and
        # one agent (about 2% of rows, plus the 1% shared by every agent).
        rng = random.Random(SEED + 13)
        for name, make in (("end_user", lambda: {"end_user": f"user-{rng.randrange(end_users)}"}),
                           ("agent", lambda: {"agent": f"agent-{rng.randrange(AGENTS)}"})):
            latencies, full, recalls, matched = [], 0, [], []
            for _, text, vector in qs[:filtered]:
                where = make()
                ms, hits = _timed(lambda: memory_search(tenant_schema=schema, query=text, k=K, vector=vector, **where))
                latencies.append(ms)
                semantic_hits = memory_search(tenant_schema=schema, query=text, k=K, vector=vector, mode="semantic",
                                              **where)
                full += len(hits) == K and len(semantic_hits) == K
                truth = memory_search_exact(tenant_schema=schema, vector=vector, model_id=LOCAL_MODEL_ID, k=K, **where)
                recalls.append(_recall([h.id for h in semantic_hits], truth))
                if len(matched) < 10:
                    column, value = next(iter(where.items()))
                    with connection.cursor() as cursor:
                        cursor.execute(f"SELECT count(*) FROM data_plane_memory WHERE {column} IN (%s, '')", [value])
                        matched.append(cursor.fetchone()[0])
            if EXPLAIN:
                _, text, vector = qs[0]
                with _explained(f"hybrid, {name} filter"):
                    memory_search(tenant_schema=schema, query=text, k=K, vector=vector, **make())
            figures.update({
                f"memory_search_{name}_p50_ms_{suffix}": percentile(latencies, 50),
                f"memory_search_{name}_p99_ms_{suffix}": percentile(latencies, 99),
                f"memory_search_{name}_full_k_{suffix}": full / filtered,
                f"memory_recall_at_10_{name}_{suffix}": sum(recalls) / len(recalls),
                f"memory_{name}_filter_rows_{suffix}": sum(matched) / len(matched),
            })
    return figures


def size_name(rows: int) -> str:
    """100k, 1m: the suffix of the figures (BENCH.md's names at the default sizes)."""
    return f"{rows // 1_000_000}m" if rows % 1_000_000 == 0 else f"{rows / 1000:g}k"


# --- the section --------------------------------------------------------------------------------------

def bench_memory(*, tenant: Any, actor: Any, full: bool) -> dict[str, float]:
    schema = tenant.schema_name
    end_users = max(1, ROWS // 20)
    print(f"    embedding {BASES} base sentences with the local model", flush=True)
    data = DataSet(bases=BASES, held_out=QUERIES // 3)
    figures: dict[str, float] = {"embed_per_second": BASES / data.embed_seconds}

    print(f"    loading {ROWS} rows and building the HNSW index", flush=True)
    loaded = bulk_load(schema=schema, data=data, count=ROWS, seed=SEED + 3, end_users=end_users)
    print(f"    {loaded}", flush=True)
    figures.update({"memory_ingest_copy_rows_per_second": loaded["copy_rows_per_second"],
                    f"memory_ingest_index_build_s_{size_name(ROWS)}": loaded["index_build_s"],
                    f"memory_ingest_rows_per_second_{size_name(ROWS)}": loaded["rows_per_second"],
                    f"memory_index_mb_{size_name(ROWS)}": loaded["index_mb"]})
    figures.update(remember_rate(tenant=tenant, actor=actor, count=REMEMBER, end_users=end_users))
    print(f"    searching: {QUERIES} queries, {FILTERED_QUERIES} per filter", flush=True)
    figures.update(search_figures(schema=schema, data=data, suffix=size_name(ROWS), queries=QUERIES,
                                  filtered=FILTERED_QUERIES, end_users=end_users, with_embedding=True))

    if full:
        more = FULL_ROWS - ROWS
        print(f"    BENCH_FULL: loading {more} more rows (1M in all) and building the index again", flush=True)
        loaded = bulk_load(schema=schema, data=data, count=more, seed=SEED + 5, end_users=end_users)
        print(f"    {loaded}", flush=True)
        figures.update({"memory_ingest_index_build_s_1m": loaded["index_build_s"],
                        "memory_index_mb_1m": loaded["index_mb"]})
        # Fewer queries: each exact search (the truth) reads the whole 1M-row table.
        figures.update(search_figures(schema=schema, data=data, suffix="1m", queries=QUERIES // 2,
                                      filtered=FILTERED_QUERIES * 2 // 5, end_users=end_users, with_embedding=False))
    return figures
