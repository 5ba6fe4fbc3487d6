"""The MediaSource port on the tenant's attachment rows and object storage: what the model's edge reads.

Its SQL names the tenant's schema, like the checkpoint store's, so it is right behind a transaction-pooling
PgBouncer; it runs in the tenant's context all the same (the thread's connection takes on the tenant's
database role there, without which the schema is refused). Database and file work run in threads, off the
step's event loop.
"""

from __future__ import annotations

import asyncio
import re

from django.db import close_old_connections, connection

from common.schemas import in_schema
from data_plane.attachment_storage import BlobMissing, BlobStorage

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class StoredMedia:
    """Attachments of one tenant: rows in its schema, bytes in ``storage``."""

    def __init__(self, *, tenant_schema: str, storage: BlobStorage) -> None:
        if not _SCHEMA_NAME.match(tenant_schema):
            raise ValueError(f"Not a schema name: {tenant_schema!r}")
        self.schema = tenant_schema
        self.table = f'"{tenant_schema}".data_plane_attachment'
        self.storage = storage

    async def read(self, attachment_id: str) -> bytes | None:
        """The attachment's bytes; None when it (or its object) was deleted."""
        return await asyncio.to_thread(self._read, attachment_id)

    def _read(self, attachment_id: str) -> bytes | None:
        key = self._fetch("storage_key", attachment_id)
        if key is None:
            return None
        try:
            with self.storage.open(key) as file:
                return file.read()
        except BlobMissing:
            return None

    async def transcript(self, attachment_id: str, *, model: str) -> str | None:
        return await asyncio.to_thread(self._transcript, attachment_id, model)

    def _transcript(self, attachment_id: str, model: str) -> str | None:
        close_old_connections()
        with in_schema(self.schema), connection.cursor() as cursor:
            cursor.execute(f"SELECT transcript FROM {self.table} WHERE id = %s AND transcript_model = %s",
                           [attachment_id, model])
            row = cursor.fetchone()
        return row[0] if row is not None else None

    async def remember_transcript(self, attachment_id: str, *, model: str, text: str) -> None:
        await asyncio.to_thread(self._remember, attachment_id, model, text)

    def _remember(self, attachment_id: str, model: str, text: str) -> None:
        close_old_connections()
        with in_schema(self.schema), connection.cursor() as cursor:
            cursor.execute(f"UPDATE {self.table} SET transcript = %s, transcript_model = %s WHERE id = %s",
                           [text, model, attachment_id])

    def _fetch(self, column: str, attachment_id: str) -> str | None:
        close_old_connections()
        with in_schema(self.schema), connection.cursor() as cursor:
            cursor.execute(f"SELECT {column} FROM {self.table} WHERE id = %s", [attachment_id])
            row = cursor.fetchone()
        return row[0] if row is not None else None
