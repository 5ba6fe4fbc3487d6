"""Key material for API credentials: generation, parsing, hashing and constant-time verification.

A key reads ``<prefix>_<lookup id>_<secret>``. The prefix makes leaked keys recognisable to secret
scanners, the lookup id finds the row with an index, and only an HMAC-SHA256 of the secret (keyed
with a server-side pepper) is stored. The plaintext is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

_SECRET_ALPHABET = string.ascii_letters + string.digits
_SECRET_LENGTH = 40  # ~238 bits of entropy
_LOOKUP_BYTES = 6  # 12 hex characters
_KEY_PATTERN = re.compile(r"^(?P<prefix>[a-z]+)_(?P<lookup>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9]{40})$")


@dataclass(frozen=True)
class GeneratedKey:
    plaintext: str
    lookup_id: str
    secret_hash: str


@dataclass(frozen=True)
class ParsedKey:
    prefix: str
    lookup_id: str
    secret: str


class KeyHasher:
    """Hashes and verifies key secrets with a pepper the database never sees."""

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < 16:
            raise ValueError("The API key pepper must be at least 16 bytes long.")
        self._pepper = pepper

    def hash_secret(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    def verify(self, secret: str, secret_hash: str) -> bool:
        """Constant-time comparison of a presented secret against a stored hash."""
        return hmac.compare_digest(self.hash_secret(secret), secret_hash)

    def generate(self, prefix: str) -> GeneratedKey:
        lookup_id = secrets.token_hex(_LOOKUP_BYTES)
        secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(_SECRET_LENGTH))
        return GeneratedKey(
            plaintext=f"{prefix}_{lookup_id}_{secret}", lookup_id=lookup_id, secret_hash=self.hash_secret(secret)
        )


def parse_key(raw: str) -> ParsedKey | None:
    """Split a presented key into its parts; None when it is not shaped like one of ours."""
    match = _KEY_PATTERN.match(raw.strip())
    if match is None:
        return None
    return ParsedKey(prefix=match["prefix"], lookup_id=match["lookup"], secret=match["secret"])
