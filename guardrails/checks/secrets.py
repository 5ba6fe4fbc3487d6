"""Credentials in a text: cloud and SaaS API keys, tokens, private keys, passwords in assignments and URLs.

Vendor keys are found by their documented prefixes and shapes (AWS, GitHub, GitLab, Slack, Stripe, OpenAI,
Anthropic, Google), a JWT by its header decoding to JSON with ``alg``, a PEM private key as its whole block,
our own API keys by the ``<prefix>_<lookup id>_<secret>`` shape of common/keys.py. Without a prefix, a value
counts only when a name says it is a secret (``password=``, ``api_key:``) and it looks random (enough
Shannon entropy, more than one kind of character, not a placeholder or a reference to a variable); a URL's
``user:password@`` gives the password. Every finding is a ``Span`` whose ``kind`` is one of
``SECRET_KINDS``; the message counts them and never quotes one.

Linear in its input: every pattern starts only where a token starts, its repeats are bounded or possessive,
and a private key's END line is searched once per label, so a 1 MB adversarial text takes milliseconds.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator

from guardrails.checks.base import Point, Span, Verdict, without_overlaps

SECRET_KINDS = (
    "private_key", "aws_access_key", "aws_secret_key", "github_token", "gitlab_token", "slack_token",
    "slack_webhook", "stripe_key", "anthropic_key", "openai_key", "google_api_key", "agentplane_key", "jwt",
    "url_credentials", "generic_secret",
)
_PRIORITY = {kind: index for index, kind in enumerate(SECRET_KINDS)}


def _token(prefix: str, width: int) -> str:
    """``prefix`` (``width`` characters long) where a token starts. The literal comes first so that ``re`` jumps
    from one occurrence of it to the next; the lookbehind then skips the occurrences inside a longer token."""
    return f"{prefix}(?<![A-Za-z0-9_\\-].{{{width}}})"


# Our own keys (common/keys.py): the tenant prefix (tenants.models.ApiKey.PREFIX, "agp") or the operator's
# ("agpop"), 12 hex characters of lookup id and 40 alphanumerics of secret. Spelled out here because
# guardrails may not import tenants.models.
_AGENTPLANE_KEY = re.compile(_token("agp", 3) + r"(?:op)?_[0-9a-f]{12}_[A-Za-z0-9]{40}+(?![A-Za-z0-9])", re.ASCII)

# (kind, pattern): a token is its exact prefix at a token start, then its documented length and alphabet.
_TOKENS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("aws_access_key", re.compile(
        _token("(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)", 4) + r"[A-Z0-9]{16}(?![A-Za-z0-9])",
        re.ASCII)),
    ("github_token", re.compile(
        r"(?:" + _token("gh[pousr]_", 4) + r"[A-Za-z0-9]{36,251}+|" + _token("github_pat_", 11)
        + r"[A-Za-z0-9_]{22,255}+)(?![A-Za-z0-9_])", re.ASCII)),
    ("gitlab_token", re.compile(_token("glpat-", 6) + r"[A-Za-z0-9_\-]{20,300}+(?![A-Za-z0-9_\-])", re.ASCII)),
    ("slack_token", re.compile(_token("xox[abprs]-", 5) + r"\d++-[A-Za-z0-9\-]{8,250}+(?![A-Za-z0-9_\-])", re.ASCII)),
    ("slack_webhook", re.compile(
        r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,20}+/B[A-Z0-9]{6,20}+/[A-Za-z0-9]{16,64}+", re.ASCII)),
    ("stripe_key", re.compile(
        r"(?:" + _token("(?:sk|rk)_(?:live|test)_", 8) + r"[A-Za-z0-9]{10,247}+|" + _token("whsec_", 6)
        + r"[A-Za-z0-9]{24,128}+)(?![A-Za-z0-9_])", re.ASCII)),
    ("google_api_key", re.compile(_token("AIza", 4) + r"[0-9A-Za-z_\-]{35}(?![A-Za-z0-9_\-])", re.ASCII)),
    ("agentplane_key", _AGENTPLANE_KEY),
)
# sk-ant-... (Anthropic) and sk-... (OpenAI, and the providers that copied its shape). Prose has words such as
# "sk-ills" or "sk-learn-is-great", so the body must look random: upper case, lower case and digits.
_SK_KEY = re.compile(_token("sk-", 3) + r"(ant-)?[A-Za-z0-9_\-]{20,300}+(?![A-Za-z0-9_\-])", re.ASCII)

_AWS_SECRET = re.compile(
    r"(?i:aws_?secret(?:_?access)?(?:_?key)?|secret_?access_?key)[\"']?\s*(?::=|=>|[:=])\s*[\"']?"
    r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])", re.ASCII)

_JWT = re.compile(
    _token("eyJ", 3) + r"[A-Za-z0-9_\-]{8,2000}+\.[A-Za-z0-9_\-]{2,20000}+\.[A-Za-z0-9_\-]{0,2000}+", re.ASCII)

_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]{1,16} ){0,3})PRIVATE KEY( BLOCK)?-----", re.ASCII)
# What follows BEGIN in a block cut short: base64 lines, and the header lines of an encrypted key.
_PEM_BODY = re.compile(
    r"(?:\s*+(?:[A-Za-z0-9+/]{16,100}+={0,2}|[A-Za-z0-9+/]{1,15}+={1,2}|[A-Za-z][A-Za-z\-]{0,30}: [^\r\n]{0,200}+))*+",
    re.ASCII)

# name = value, name: value, "name": "value", name => value; the name may end a longer one (DB_PASSWORD).
_ASSIGNMENT = re.compile(
    r"(?=[AaBbCcPpRrSsTt])(?<![A-Za-z0-9])(?i:password|passwd|pwd|passphrase|secret|client_secret|secret_key|"
    r"api[_\-]?key|access[_\-]?key|access[_\-]?token|auth[_\-]?token|refresh[_\-]?token|bearer[_\-]?token|"
    r"private[_\-]?key|token)[\"']?\s{0,8}(?::=|=>|[:=])\s{0,8}[\"']?([^\s\"'`,;(){}\[\]<>]{8,200})", re.ASCII)
# Not a secret but where one is kept: settings.SECRET_KEY, process.env.TOKEN, DB_PASSWORD, a file path.
_REFERENCE = re.compile(r"[A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*)+|[A-Z]+(?:_[A-Z0-9]+)*|[~.]{0,2}/[\w.\-/]*", re.ASCII)
_PLACEHOLDERS = ("your", "example", "xxxx", "****", "...", "changeme", "placeholder", "dummy", "redacted",
                 "sample", "secret_here", "insert", "replace", "${", "{{", "%(", "env(", "getenv", "environ")
_ENTROPY_BITS_PER_CHARACTER = 3.0

# scheme://user:password@host; the password is the finding.
_URL_CREDENTIALS = re.compile(
    r"(?=[A-Za-z])(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{1,20}://"
    r"[^\s:/@?#\[\]]{0,256}:([^\s/@?#]{1,256})@[^\s/@?#]", re.ASCII)
_URL_PLACEHOLDERS = frozenset({"password", "pass", "passwd", "pwd", "secret", "***", "****", "xxx", "xxxx", "...",
                               "x", "p", "token", "yourpassword", "your_password", "your-password", "changeme"})


def _tokens(text: str) -> Iterator[tuple[int, int, str]]:
    for kind, pattern in _TOKENS:
        for match in pattern.finditer(text):
            yield match.start(), match.end(), kind
    if "sk-" in text:
        for match in _SK_KEY.finditer(text):
            body = match.group(0)[len("sk-ant-") if match.group(1) else len("sk-"):]
            if _looks_random(body):
                yield match.start(), match.end(), "anthropic_key" if match.group(1) else "openai_key"


def _looks_random(value: str) -> bool:
    has_classes = any(ch.isupper() for ch in value) and any(ch.islower() for ch in value) and any(
        ch.isdigit() for ch in value)
    return has_classes and _entropy(value) >= _ENTROPY_BITS_PER_CHARACTER


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    length = len(value)
    return -sum(count / length * math.log2(count / length) for count in Counter(value).values())


def _aws_secrets(text: str) -> Iterator[tuple[int, int, str]]:
    for match in _AWS_SECRET.finditer(text):
        if _entropy(match.group(1)) >= _ENTROPY_BITS_PER_CHARACTER:
            yield match.start(1), match.end(1), "aws_secret_key"


def _jwts(text: str) -> Iterator[tuple[int, int, str]]:
    if "eyJ" not in text:
        return
    for match in _JWT.finditer(text):
        header = match.group(0).split(".", 1)[0]
        if _is_jwt_header(header):
            yield match.start(), match.end(), "jwt"


def _is_jwt_header(segment: str) -> bool:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def _private_keys(text: str) -> Iterator[tuple[int, int, str]]:
    if "-----BEGIN " not in text:
        return
    # Where each label's next END line is, searched once: a text of many BEGINs stays linear.
    ends: dict[str, int] = {}
    covered = 0
    for match in _PEM_BEGIN.finditer(text):
        if match.start() < covered:
            continue
        end_line = f"-----END {match.group(1)}PRIVATE KEY{match.group(2) or ''}-----"
        end = ends.get(end_line)
        if end is None or (end != -1 and end < match.end()):
            end = text.find(end_line, match.end())
            ends[end_line] = end
        if end == -1:
            # Cut short (a stream, a truncated paste): the block is what follows that reads as its body.
            stop = _PEM_BODY.match(text, match.end()).end()  # type: ignore[union-attr]  # matches empty
        else:
            stop = end + len(end_line)
        covered = stop
        yield match.start(), stop, "private_key"


def _assignments(text: str) -> Iterator[tuple[int, int, str]]:
    for match in _ASSIGNMENT.finditer(text):
        value = match.group(1).rstrip(".")
        if len(value) >= 8 and _is_secret_value(value):
            yield match.start(1), match.start(1) + len(value), "generic_secret"


def _is_secret_value(value: str) -> bool:
    lowered = value.lower()
    if any(marker in lowered for marker in _PLACEHOLDERS) or _REFERENCE.fullmatch(value):
        return False
    kinds = (any(ch.islower() for ch in value) + any(ch.isupper() for ch in value)
             + any(ch.isdigit() for ch in value) + any(not ch.isalnum() for ch in value))
    return kinds >= 2 and _entropy(value) >= min(_ENTROPY_BITS_PER_CHARACTER, 0.8 * math.log2(len(value)))


def _url_credentials(text: str) -> Iterator[tuple[int, int, str]]:
    if "://" not in text:
        return
    for match in _URL_CREDENTIALS.finditer(text):
        password = match.group(1)
        if password.lower() in _URL_PLACEHOLDERS or password.startswith(("<", "${", "{{", "$(")):
            continue
        yield match.start(1), match.end(1), "url_credentials"


_FINDERS: tuple[Callable[[str], Iterator[tuple[int, int, str]]], ...] = (
    _private_keys, _tokens, _aws_secrets, _jwts, _url_credentials, _assignments,
)


def _without_overlaps(spans: list[Span]) -> list[Span]:
    """One finding per stretch of text: of overlapping ones, the more specific kind, then the longer."""
    return without_overlaps(spans, _PRIORITY)


class SecretsCheck:
    """Finds credentials; every finding is a span to redact."""

    name = "secrets"

    def evaluate(self, text: str, *, point: Point) -> Verdict:
        """Every credential of ``text`` as a span; a secret is one at every point."""
        found = [Span(start, end, kind) for finder in _FINDERS for start, end, kind in finder(text)]
        if not found:
            return Verdict(check=self.name, triggered=False)
        spans = _without_overlaps(found)
        counts = Counter(span.kind for span in spans)
        kinds = [kind for kind in SECRET_KINDS if kind in counts]
        summary = ", ".join(f"{counts[kind]} {kind}" for kind in kinds)
        return Verdict(check=self.name, triggered=True, score=1.0,
                       reasons=tuple(f"secrets.{kind}" for kind in kinds),
                       message=f"Credentials found ({summary}); redact them, and rotate any that were real.",
                       spans=tuple(spans))
