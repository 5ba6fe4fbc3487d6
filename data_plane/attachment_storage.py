"""Object storage of attachments' bytes: the port, and its local-folder implementation (the default).

Keys are built here from the tenant's schema and the attachment's id (``attachment_key``), never from
anything an uploader sends, so a key cannot climb out of its tenant's prefix. An S3-compatible store slots
in as another ``BlobStorage`` (put, open, delete by key), chosen in ``runtime.wiring``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol
from uuid import UUID

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_KEY = re.compile(r"^[a-z_][a-z0-9_]{0,62}/[0-9a-f]{2}/[0-9a-f]{32}$")


class BlobMissing(LookupError):
    """No object under the key (deleted, or never written)."""


class BlobStorage(Protocol):
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing it whole (readers never see part of it)."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The object's bytes as a file to read (and close). Raises BlobMissing."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; nothing happens when there is none. Idempotent."""
        ...


def attachment_key(*, tenant_schema: str, attachment_id: UUID) -> str:
    """``<schema>/<first two hex digits>/<id as 32 hex digits>``: the tenant first, so a tenant's objects
    share a prefix (listing, lifecycle rules, purging), then a fan-out that keeps folders small."""
    if not _SCHEMA_NAME.match(tenant_schema):
        raise ValueError(f"Not a schema name: {tenant_schema!r}")
    return f"{tenant_schema}/{attachment_id.hex[:2]}/{attachment_id.hex}"


class LocalFolderStorage:
    """Objects as files under ``root`` (shared by every web and worker process of a deployment)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):  # keys come from attachment_key; anything else is a programming error
            raise ValueError(f"Not an attachment key: {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # written beside its final name, then renamed over it: a reader sees the old object or the new one
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise BlobMissing(f"No object {key!r} in {self.root}.") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
