"""Long-term memory writes: remember (with near-duplicates merged), forget, expire, and the tenant's settings.

Texts are embedded before any transaction opens (a provider's embedding call may take a while). A write
takes an advisory lock on its scope (agent, end user, kind) so two writes of the same fact at once merge
instead of both landing. Every change is in the tenant's audit log, with the memory's id, never its text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.postgres.search import SearchVector
from django.db import connection, transaction
from django.db.models import Value
from django.utils import timezone

from common.actors import Actor
from common.errors import InvalidInput
from common.locks import advisory_key
from common.schemas import require_schema
from control_plane.audit.services import audit_event_record
from data_plane.errors import MemoryNotFound
from data_plane.models import Memory, MemorySettings
from data_plane.runtime.adapters.embeddings import LOCAL_MODEL_ID, Embedder
from data_plane.memory_selectors import embedder_for, embedder_forget, memory_settings_get, vector_literal
from data_plane.sealing import cipher_for, memory_settings_bound_to, memory_text_bound_to

MAX_TEXT_CHARS = 8000
MAX_TAGS = 20
MAX_METADATA_BYTES = 8192
MAX_BATCH = 100


@dataclass(frozen=True)
class MemoryDraft:
    """A memory to write, checked. ``expires_at`` None: kept until deleted (or the tenant's default TTL)."""

    text: str
    kind: str = Memory.Kind.FACT
    agent: str = ""
    end_user: str = ""
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Remembered:
    memory: Memory
    merged: bool  # True: folded into an existing near-duplicate (``memory`` is that one, updated)


def memory_draft(*, text: Any, kind: Any = Memory.Kind.FACT, agent: Any = "", end_user: Any = "",
                 tags: Any = (), metadata: Any = None, ttl_seconds: Any = None,
                 path: str = "") -> MemoryDraft:
    """Check one memory's fields. Raises InvalidInput naming every bad field (under ``path``)."""
    errors: dict[str, list[str]] = {}

    def bad(field: str, message: str) -> None:
        errors.setdefault(f"{path}{field}", []).append(message)

    if not isinstance(text, str) or not text.strip():
        bad("text", "text is the memory itself: a non-empty string.")
    elif len(text) > MAX_TEXT_CHARS:
        bad("text", f"text is at most {MAX_TEXT_CHARS} characters; split a longer one into several memories.")
    if kind not in Memory.Kind.values:
        bad("kind", f"kind is one of {', '.join(Memory.Kind.values)}.")
    for field, value, limit in (("agent", agent, 100), ("end_user", end_user, 200)):
        if not isinstance(value, str) or len(value) > limit:
            bad(field, f"{field} is a string of at most {limit} characters ('' for none).")
    if not isinstance(tags, (list, tuple)) or len(tags) > MAX_TAGS or not all(
            isinstance(t, str) and 0 < len(t) <= 100 for t in tags):
        bad("tags", f"tags is a list of at most {MAX_TAGS} non-empty strings of at most 100 characters.")
        tags = ()
    if metadata is not None and (not isinstance(metadata, dict) or len(_json_bytes(metadata)) > MAX_METADATA_BYTES):
        bad("metadata", f"metadata is a JSON object of at most {MAX_METADATA_BYTES} bytes.")
    expires_at = None
    if ttl_seconds is not None:
        if not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool) or not 60 <= ttl_seconds <= 10 * 365 * 86400:
            bad("ttl_seconds", "ttl_seconds is a whole number of seconds from 60 to ten years, or null.")
        else:
            expires_at = timezone.now() + timedelta(seconds=ttl_seconds)
    if errors:
        first = next(iter(errors.values()))[0]
        raise InvalidInput(first, extra={"errors": errors})
    return MemoryDraft(text=text.strip(), kind=kind, agent=agent, end_user=end_user,
                       tags=tuple(dict.fromkeys(t.strip().lower() for t in tags)), metadata=metadata or {},
                       expires_at=expires_at)


def memory_remember(*, tenant: Any, drafts: Sequence[MemoryDraft], actor: Actor, source: str = Memory.Source.API,
                    source_run_id: UUID | None = None, embedder: Embedder | None = None) -> list[Remembered]:
    """Write memories; each folds into an existing one of the same scope whose meaning is nearly the same
    (cosine distance at most MEMORY_NEAR_DUPLICATE_DISTANCE): the newer text wins, tags are joined."""
    require_schema(tenant.schema_name)
    if not drafts:
        return []
    if len(drafts) > MAX_BATCH:
        raise InvalidInput(f"At most {MAX_BATCH} memories in one request.")
    embedder = embedder or embedder_for(tenant.schema_name)
    vectors = embedder.embed([draft.text for draft in drafts])
    default_ttl = memory_settings_get(tenant_schema=tenant.schema_name).default_ttl_days
    cipher = cipher_for(tenant.schema_name)
    sealing = cipher.encrypts_payloads
    out: list[Remembered] = []
    for draft, vector in zip(drafts, vectors):
        expires_at = draft.expires_at
        if expires_at is None and default_ttl:
            expires_at = timezone.now() + timedelta(days=default_ttl)
        with transaction.atomic():
            _lock_scope(draft)
            existing = _near_duplicate(tenant.schema_name, draft, vector, embedder.model_id)
            if existing is not None:
                existing.embedding = vector
                existing.text, existing.sealed_text, search_vector = _stored_text(cipher, sealing, tenant.schema_name,
                                                                                  existing.id, draft.text)
                if search_vector is not None:
                    existing.search_vector = search_vector
                existing.tags = list(dict.fromkeys([*existing.tags, *draft.tags]))
                existing.metadata = {**existing.metadata, **(draft.metadata or {})}
                existing.merged_count += 1
                if existing.expires_at is not None:
                    existing.expires_at = None if expires_at is None else max(existing.expires_at, expires_at)
                existing.source_run_id = source_run_id or existing.source_run_id
                existing.save()
                existing.text = draft.text
                memory, merged = existing, True
            else:
                memory_id = uuid.uuid4()
                text, sealed_text, search_vector = _stored_text(cipher, sealing, tenant.schema_name, memory_id,
                                                                draft.text)
                memory = Memory.objects.create(
                    id=memory_id, text=text, sealed_text=sealed_text, search_vector=search_vector, kind=draft.kind, agent=draft.agent, end_user=draft.end_user,
                    tags=list(draft.tags), metadata=dict(draft.metadata or {}), source=source,
                    source_run_id=source_run_id, embedding=vector, embedding_model=embedder.model_id,
                    created_by=str(actor), expires_at=expires_at)
                memory.text = draft.text
                merged = False
            audit_event_record(tenant=tenant, actor=actor, action="memory.merge" if merged else "memory.create",
                               target_type="memory", target_id=str(memory.id),
                               data={"kind": memory.kind, "agent": memory.agent, "source": source,
                                     "end_user": _pseudonym(memory.end_user),
                                     "source_run_id": str(source_run_id) if source_run_id else None})
        out.append(Remembered(memory=memory, merged=merged))
    return out


def _stored_text(cipher: Any, sealing: bool, tenant_schema: str, memory_id: UUID, text: str
                 ) -> tuple[str, str, SearchVector | None]:
    """(text, sealed_text, search_vector) as stored: plain (the trigger derives the vector), or sealed with the
    vector computed here from the plain text, which the database never sees."""
    if not sealing:
        return text, "", None
    sealed = cipher.seal_text(text, bound_to=memory_text_bound_to(tenant_schema, memory_id))
    return "", sealed, SearchVector(Value(text), config="english")


def _lock_scope(draft: MemoryDraft) -> None:
    key = advisory_key("memory", connection.schema_name, draft.agent, draft.end_user, draft.kind)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def _near_duplicate(tenant_schema: str, draft: MemoryDraft, vector: list[float], model_id: str) -> Memory | None:
    """The memory of the same scope that says nearly the same: close in meaning and with the same numbers
    and codes (embeddings barely tell "invoice 3" from "invoice 4"; those are different facts)."""
    limit = settings.MEMORY_NEAR_DUPLICATE_DISTANCE
    with connection.cursor() as cursor:
        # Exact within the scope (the scope index narrows it).
        cursor.execute(
            "SELECT id, text, sealed_text FROM data_plane_memory "
            "WHERE agent = %s AND end_user = %s AND kind = %s AND embedding_model = %s "
            "AND (expires_at IS NULL OR expires_at > now()) AND embedding <=> %s::vector <= %s "
            "ORDER BY embedding <=> %s::vector LIMIT 5",
            [draft.agent, draft.end_user, draft.kind, model_id, vector_literal(vector), limit,
             vector_literal(vector)])
        rows = cursor.fetchall()
    mine = _codes(draft.text)
    for memory_id, text, sealed_text in rows:
        if sealed_text:
            text = cipher_for(tenant_schema).open_text(sealed_text,
                                                       bound_to=memory_text_bound_to(tenant_schema, memory_id))
        if _codes(text) == mine:
            return Memory.objects.select_for_update().get(id=memory_id)
    return None


_CODE = re.compile(r"\w*\d[\w-]*")


def _codes(text: str) -> set[str]:
    """The tokens with a digit in them: numbers, amounts, dates, ids."""
    return {token.lower() for token in _CODE.findall(text)}


def memory_delete(*, tenant: Any, memory_id: UUID, actor: Actor) -> None:
    """Delete one memory. Raises MemoryNotFound."""
    require_schema(tenant.schema_name)
    with transaction.atomic():
        deleted, _ = Memory.objects.filter(id=memory_id).delete()
        if not deleted:
            raise MemoryNotFound(f"Memory {memory_id} does not exist.")
        audit_event_record(tenant=tenant, actor=actor, action="memory.delete", target_type="memory",
                           target_id=str(memory_id))


def memory_forget(*, tenant: Any, actor: Actor, end_user: str | None = None, agent: str | None = None,
                  everything: bool = False) -> int:
    """Delete every memory of an end user, of an agent, or (``everything``) of the tenant. Returns how many.
    Raises InvalidInput when nothing says what to forget."""
    require_schema(tenant.schema_name)
    if not everything and not end_user and not agent:
        raise InvalidInput("Say what to forget: an end_user, an agent, or everything=true.",
                           extra={"errors": {"end_user": ["Give an end user, an agent or everything=true."]}})
    memories = Memory.objects.all()
    if end_user:
        memories = memories.filter(end_user=end_user)
    if agent:
        memories = memories.filter(agent=agent)
    with transaction.atomic():
        count, _ = memories.delete()
        audit_event_record(tenant=tenant, actor=actor, action="memory.forget", target_type="memory",
                           target_id="*", data={"end_user": _pseudonym(end_user or ""), "agent": agent or "",
                                                "everything": everything, "deleted": count})
    return count


def memories_expire(*, tenant: Any) -> int:
    """Delete the tenant's memories past their expiry (searches already skip them). Returns how many."""
    require_schema(tenant.schema_name)
    count, _ = Memory.objects.filter(expires_at__lte=timezone.now()).delete()
    if count:
        audit_event_record(tenant=tenant, actor=Actor(kind="system", id="memory-ttl"), action="memory.expire",
                           target_type="memory", target_id="*", data={"deleted": count})
    return count


def memory_settings_update(*, tenant: Any, actor: Actor, embedding_model: str | None = None,
                           embedding_api_base: str | None = None, embedding_api_key: str | None = None,
                           default_ttl_days: int | None | type[Ellipsis] = ...) -> MemorySettings:
    """Change the tenant's embedding model (local, or a litellm model name) and default TTL. Memories
    embedded by the previous model stay searchable only once re-embedded (``memories_reembed``)."""
    require_schema(tenant.schema_name)
    if embedding_model is not None and (not embedding_model or len(embedding_model) > 200
                                        or (embedding_model != LOCAL_MODEL_ID and "/" not in embedding_model)):
        raise InvalidInput(f"embedding_model is {LOCAL_MODEL_ID!r} or a provider model such as "
                           "'openai/text-embedding-3-small'.",
                           extra={"errors": {"embedding_model": ["Unknown embedding model."]}})
    with transaction.atomic():
        current, _ = MemorySettings.objects.select_for_update().get_or_create(id=1)
        before = {"embedding_model": current.embedding_model, "default_ttl_days": current.default_ttl_days}
        if embedding_model is not None:
            current.embedding_model = embedding_model
        if embedding_api_base is not None:
            current.embedding_api_base = embedding_api_base
        if embedding_api_key is not None:
            current.embedding_api_key_encrypted = (
                cipher_for(tenant.schema_name).seal(embedding_api_key,
                                                    bound_to=memory_settings_bound_to(tenant.schema_name))
                if embedding_api_key else "")
        if default_ttl_days is not ...:
            current.default_ttl_days = default_ttl_days  # type: ignore[assignment]
        current.updated_by = str(actor)
        current.save()
        embedder_forget(tenant.schema_name)  # now, and once committed (a search meanwhile may read the old row)
        transaction.on_commit(lambda: embedder_forget(tenant.schema_name))
        audit_event_record(tenant=tenant, actor=actor, action="memory_settings.update",
                           target_type="memory_settings", target_id="1",
                           data={"before": before, "after": {"embedding_model": current.embedding_model,
                                                             "default_ttl_days": current.default_ttl_days},
                                 "api_key_changed": embedding_api_key is not None})
    return current


def memories_reembed(*, tenant: Any, batch: int = 256) -> int:
    """Embed again, with the tenant's current model, every memory another model embedded. Returns how many."""
    require_schema(tenant.schema_name)
    embedder = embedder_for(tenant.schema_name)
    done = 0
    while True:
        stale = list(Memory.objects.exclude(embedding_model=embedder.model_id).only("id", "text", "sealed_text")[:batch])
        if not stale:
            return done
        vectors = embedder.embed([memory.text for memory in stale])
        with transaction.atomic():
            for memory, vector in zip(stale, vectors):
                Memory.objects.filter(id=memory.id).update(embedding=vector, embedding_model=embedder.model_id)
        done += len(stale)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def _pseudonym(end_user: str) -> str:
    """The audit log names end users by a keyed digest: forgetting one must not leave their id behind in it, and
    a plain hash of an email address is found again by hashing guesses."""
    if not end_user:
        return ""
    return hmac.new(settings.SECRETS_KEY, f"end-user|{end_user}".encode(), hashlib.sha256).hexdigest()[:16]
