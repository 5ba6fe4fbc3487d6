"""Commits that need not wait for the disk.

``ASYNC_COMMIT`` is a SQL expression (it evaluates to ``'off'``) that turns ``synchronous_commit`` off for the
current transaction only: put it in a statement's WHERE (``... AND {ASYNC_COMMIT} = 'off'``) or select list,
and that statement's transaction, even an autocommit one, commits without waiting for its WAL to reach the
disk, one round trip and no fsync (4 ms of this machine's disk per commit). The write is visible to everyone
at once and is never torn; only its durability changes: a crash of the database itself (not of the client)
may lose the last fraction of a second of such commits. The next synchronous commit of any session flushes
the WAL up to it, so once a step's checkpoint is acknowledged, the async commits before it are durable too.

Used where a lost write costs money or a retry, never a promise: a run's claim (lost, the step is claimed
again), a tool call's "started" mark (lost, the retry calls the tool with the same idempotency key, as it would
anyway) and budget holds and settlements (the journal keeps the costs). Never for a checkpoint, an approval, a
call's recorded result (the step's commit journals it) or an audit event.
"""

ASYNC_COMMIT = "set_config('synchronous_commit', 'off', true)"
