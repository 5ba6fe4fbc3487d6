"""Memory recall for a run's LLM calls: the core's MemoryRecall port on the tenant's long-term memory.

For each call, the latest user message is the query: the run's agent recalls the memories most relevant to it
(its own and every agent's, about the run's end user or nobody in particular, never another end user's)
and the lessons it learned from earlier runs of the same kind of task. Only when the agent's memory policy
asks for recall. The query's embedding is cached (a run asks with the same message at every step).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db import close_old_connections
from django_tenants.utils import schema_context

from data_plane.memory_selectors import embedder_for, memory_search
from data_plane.models import Memory, Run
from data_plane.runtime.core.spec import MemoryPolicy

_VECTORS: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
_VECTORS_LOCK = threading.Lock()
VECTOR_CACHE_SIZE = 2048


@dataclass(frozen=True)
class RunScope:
    agent: str
    end_user: str
    task_kind: str
    policy: MemoryPolicy


class TenantMemoryRecall:
    """Recalls memories for one run (its end user and task kind are read once)."""

    def __init__(self, *, tenant_schema: str, run_id: UUID | str) -> None:
        self.tenant_schema, self.run_id = tenant_schema, str(run_id)
        self._scope: RunScope | None = None

    async def recall(self, *, query: str, limit: int, max_tokens: int) -> list[str]:
        if not query.strip():
            return []
        return await asyncio.to_thread(self._recall, query, limit)

    def _recall(self, query: str, limit: int) -> list[str]:
        from data_plane.runtime.core.spec import spec_from_json

        close_old_connections()
        with schema_context(self.tenant_schema):
            if self._scope is None:
                found = Run.objects.filter(id=self.run_id).values_list(
                    "end_user", "task_kind", "agent_version__spec", "agent_version__agent__name").first()
                if found is None:
                    return []
                end_user, task_kind, spec, name = found
                self._scope = RunScope(agent=name, end_user=end_user, task_kind=task_kind,
                                       policy=spec_from_json(spec).memory)
            scope = self._scope
            if not scope.policy.recall:
                return []
            embedder = embedder_for(self.tenant_schema)
            vector = _query_vector(embedder, query)
            common: dict[str, Any] = {"tenant_schema": self.tenant_schema, "query": query, "embedder": embedder,
                                      "vector": vector, "agent": scope.agent}
            threshold = scope.policy.recall_min_similarity
            lessons = []
            if scope.policy.lessons_k:
                # Lessons of the run's task kind apply to it by definition (the closest first); without a
                # kind, only those close enough in meaning.
                lessons = memory_search(**common, k=scope.policy.lessons_k, kinds=[Memory.Kind.LESSON],
                                        tags=[scope.task_kind] if scope.task_kind else (),
                                        min_similarity=None if scope.task_kind else threshold)
            facts = memory_search(**common, k=min(limit, scope.policy.recall_k), end_user=scope.end_user,
                                  kinds=[Memory.Kind.FACT, Memory.Kind.NOTE], min_similarity=threshold)
        return ([f"Lesson from an earlier run: {hit.text}" for hit in lessons]
                + [hit.text for hit in facts])


def _query_vector(embedder: Any, query: str) -> list[float]:
    key = (embedder.model_id, query)
    with _VECTORS_LOCK:
        found = _VECTORS.get(key)
        if found is not None:
            _VECTORS.move_to_end(key)
            return found
    vector = embedder.embed([query])[0]
    with _VECTORS_LOCK:
        _VECTORS[key] = vector
        while len(_VECTORS) > VECTOR_CACHE_SIZE:
            _VECTORS.popitem(last=False)
    return vector
