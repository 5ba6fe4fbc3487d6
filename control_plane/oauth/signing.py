"""The keys that sign access tokens: ES256 (ECDSA P-256), a kid per key, private keys sealed at rest.

One key is current and signs every new token. Rotation (``signing_key_rotate``) makes a new key current and
gives the previous one a ``retire_at`` of now + the access-token lifetime + leeway: it stays published in the
JWKS and keeps verifying until every token it signed has expired, then it is neither published nor accepted.
An emergency rotation retires the previous keys at once, which ends their tokens at once.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from jwt.algorithms import ECAlgorithm

from common.crypto import SecretBox
from control_plane.oauth.models import SigningKey

ALGORITHM = "ES256"


def _box() -> SecretBox:
    """The one place that seals and opens private keys (the envelope-key work replaces only this)."""
    return SecretBox(settings.SECRETS_KEY)


def _bound_to(kid: str) -> str:
    return f"oauth-signing-key:{kid}"


@dataclass(frozen=True)
class RotatedKeys:
    current: SigningKey
    superseded: list[str]  # kids that stopped signing now (they verify until their retire_at)
    retired: list[str]  # kids no longer published nor accepted


# Parsed keys by kid: a kid's key material never changes, so parsing (and, for the private key, opening)
# happens once per process. Whether a kid is still accepted is read from the database every time.
_private_keys: dict[str, ec.EllipticCurvePrivateKey] = {}
_public_keys: dict[str, ec.EllipticCurvePublicKey] = {}
_cache_lock = threading.Lock()


def _new_key_row(*, is_current: bool) -> SigningKey:
    private_key = ec.generate_private_key(ec.SECP256R1())
    kid = secrets.token_hex(8)
    private_pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()).decode()
    public_pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return SigningKey.objects.create(kid=kid, algorithm=ALGORITHM, public_key_pem=public_pem,
                                     private_key_sealed=_box().seal(private_pem, bound_to=_bound_to(kid)),
                                     is_current=is_current)


def signing_key_current() -> SigningKey:
    """The key that signs new tokens; the first is created on first use (safe under concurrency: a unique
    constraint allows one current key, and the loser of a race reads the winner's)."""
    key = SigningKey.objects.filter(is_current=True).first()
    if key is not None:
        return key
    try:
        with transaction.atomic():
            return _new_key_row(is_current=True)
    except IntegrityError:
        return SigningKey.objects.get(is_current=True)


def signing_key_rotate(*, retire_previous_now: bool = False, now: datetime | None = None) -> RotatedKeys:
    """Make a new key current. The previous current key stops signing (its private key is erased) and keeps
    verifying for the access-token lifetime plus leeway, then is retired. With ``retire_previous_now`` every
    earlier key is retired at once: for a key that leaked, whose tokens must stop working immediately."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.OAUTH_ACCESS_TOKEN_TTL_SECONDS + settings.OAUTH_LEEWAY_SECONDS)
    with transaction.atomic():
        previous = list(SigningKey.objects.select_for_update().filter(is_current=True))
        for key in previous:
            key.is_current = False
            key.superseded_at = now
            key.retire_at = now + grace
            key.private_key_sealed = ""  # it never signs again
            key.save(update_fields=["is_current", "superseded_at", "retire_at", "private_key_sealed"])
        if retire_previous_now:
            SigningKey.objects.filter(Q(retire_at__isnull=True) | Q(retire_at__gt=now), is_current=False) \
                .update(retire_at=now)
        current = _new_key_row(is_current=True)
    retired = sorted(SigningKey.objects.filter(retire_at__lte=now).values_list("kid", flat=True))
    return RotatedKeys(current=current, superseded=[key.kid for key in previous], retired=retired)


def signing_key_list_published(*, now: datetime | None = None) -> QuerySet[SigningKey]:
    """The keys a verifier must know: the current one and the superseded ones not yet retired."""
    now = now or timezone.now()
    return SigningKey.objects.filter(Q(retire_at__isnull=True) | Q(retire_at__gt=now))


def private_key_of(key: SigningKey) -> ec.EllipticCurvePrivateKey:
    cached = _private_keys.get(key.kid)
    if cached is None:
        pem = _box().open(key.private_key_sealed, bound_to=_bound_to(key.kid))
        loaded = serialization.load_pem_private_key(pem.encode(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        with _cache_lock:
            _private_keys[key.kid] = cached = loaded
    return cached


def public_key_published(kid: str) -> ec.EllipticCurvePublicKey | None:
    """The public key of ``kid`` while it is published (current or not yet retired); None otherwise."""
    row = signing_key_list_published().filter(kid=kid).values_list("public_key_pem", flat=True).first()
    if row is None:
        return None
    cached = _public_keys.get(kid)
    if cached is None:
        loaded = serialization.load_pem_public_key(row.encode())
        assert isinstance(loaded, ec.EllipticCurvePublicKey)
        with _cache_lock:
            _public_keys[kid] = cached = loaded
    return cached


def jwks() -> dict[str, Any]:
    """The published public keys as a JSON Web Key Set (RFC 7517)."""
    keys = []
    for key in signing_key_list_published().order_by("created_at"):
        public = serialization.load_pem_public_key(key.public_key_pem.encode())
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        keys.append({**jwk, "kid": key.kid, "use": "sig", "alg": key.algorithm})
    return {"keys": keys}
