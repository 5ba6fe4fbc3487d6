import pytest

from common.keys import KeyHasher, parse_key


@pytest.fixture
def hasher() -> KeyHasher:
    return KeyHasher(b"test-pepper-0123456789")


def test_generated_key_parses_back_to_its_parts(hasher):
    # given
    generated = hasher.generate("agp")
    # when
    parsed = parse_key(generated.plaintext)
    # then
    assert parsed is not None
    assert parsed.prefix == "agp"
    assert parsed.lookup_id == generated.lookup_id
    assert hasher.verify(parsed.secret, generated.secret_hash) is True


def test_only_the_hash_of_the_secret_is_kept(hasher):
    generated = hasher.generate("agp")
    secret = parse_key(generated.plaintext).secret
    assert secret not in generated.secret_hash
    assert len(generated.secret_hash) == 64
    assert generated.secret_hash == hasher.hash_secret(secret)


def test_verification_fails_for_another_secret_or_pepper(hasher):
    generated = hasher.generate("agp")
    secret = parse_key(generated.plaintext).secret
    tampered = ("b" if secret[0] == "a" else "a") + secret[1:]
    assert hasher.verify(tampered, generated.secret_hash) is False
    assert KeyHasher(b"another-pepper-0123456789").verify(secret, generated.secret_hash) is False


def test_two_keys_never_share_lookup_id_or_secret(hasher):
    keys = [hasher.generate("agp") for _ in range(200)]
    assert len({k.lookup_id for k in keys}) == 200
    assert len({k.plaintext for k in keys}) == 200


@pytest.mark.parametrize("raw", ["", "agp", "agp_123_abc", "agp_00000000000g_" + "a" * 40,
                                 "agp_000000000000_" + "a" * 39, "AGP_000000000000_" + "a" * 40,
                                 "agp_000000000000_" + "a" * 39 + "!"])
def test_malformed_keys_do_not_parse(raw):
    assert parse_key(raw) is None


def test_short_pepper_is_refused():
    with pytest.raises(ValueError):
        KeyHasher(b"short")
