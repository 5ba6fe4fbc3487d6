"""Small measuring helpers shared by the benchmarks."""

from __future__ import annotations

import random
from collections.abc import Sequence
from uuid import UUID

_WORDS = ("the of and to in is that for it as with was on be by at this are from or an which but not have all "
          "were we when there can more if will one about up out them some would into has time other than then "
          "now its only also after use two how our work first well way even new want because any these give "
          "day most us invoice total amount customer account payment tax rate period balance report order "
          "agent tool result answer question step value check number plan note reply request model").split()


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def prose(size: int, *, seed: int) -> str:
    """Deterministic English-like text of ``size`` characters: compresses about as well as real chat text,
    unlike a repeated character (so TOAST compression does not flatter anyone)."""
    rng = random.Random(seed)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def rows_bytes(cursor: object, schema: str, run_id: UUID, step: int) -> int:
    """Bytes of the rows one commit of ``step`` inserted: the checkpoint (with the messages and values it changed,
    its events and its fresh model calls' journal entries) and the journal's rows of the other calls it recorded
    (made at the step before it)
    (pg_column_size of each whole row: what is stored, after any TOAST compression)."""
    q = f'"{schema}".'
    cursor.execute(  # type: ignore[attr-defined]
        f"""SELECT
  (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM {q}data_plane_checkpoint c
   WHERE c.run_id = %(run)s AND c.step = %(step)s)
+ (SELECT coalesce(sum(pg_column_size(j.*)), 0) FROM {q}data_plane_effectrecord j
   WHERE j.run_id = %(run)s AND j.step = %(step)s - 1)""",
        {"run": run_id, "step": step})
    return int(cursor.fetchone()[0])  # type: ignore[attr-defined]
