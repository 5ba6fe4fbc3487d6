"""Normalisation before injection detection: undo the tricks that hide an attack from a classifier.

``normalise(text)`` applies, in order: NFKC (full-width and mathematical letters become ASCII), removal of
invisible characters (zero-width, bidi controls, soft hyphens, Unicode tag characters, whose ASCII meaning is
recovered as a decoded payload), Cyrillic/Greek look-alikes mapped to Latin inside words that mix scripts,
leetspeak inside words that mix letters and digits (``d1sregard``), letter-by-letter spacing (``i g n o r e``),
lower case and collapsed whitespace. Payloads hidden in base64, hex, URL encoding, rot13 or reversed text are
decoded and returned apart, normalised in turn (two levels deep), so that the check can classify them too.

Safe on any input: only the first ``MAX_CHARS`` (20,000) characters are examined, at most ``MAX_PAYLOADS``
payloads are decoded, each at most ``MAX_PAYLOAD_CHARS`` long, and every regex is linear in its input.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache

MAX_CHARS = 20_000
MAX_PAYLOADS = 8
MAX_PAYLOAD_CHARS = 4_000
MAX_DEPTH = 2

INVISIBLE_CHARACTERS = "injection.invisible_characters"
CONFUSABLES = "injection.confusables"
MIXED_SCRIPTS = "injection.mixed_scripts"
ENCODED_PAYLOAD = "injection.encoded_payload"


@dataclass(frozen=True)
class Normalised:
    """``text`` is what to classify; ``decoded`` the (normalised) payloads found encoded inside it;
    ``signals`` the obfuscation reason codes seen on the way, in a stable order."""

    text: str
    decoded: tuple[str, ...] = ()
    signals: tuple[str, ...] = ()


# Zero-width and joiner characters, bidi embeddings/overrides/isolates, soft hyphen, Mongolian vowel
# separator, word joiner and invisible operators, BOM, and the variation selectors.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufe00-\ufe0f\ufeff]")
# Unicode tags (U+E0000 block): U+E0020..U+E007E mirror printable ASCII ("ASCII smuggling").
_TAGS = re.compile("[\U000e0000-\U000e007f]+")
_TAG_TO_ASCII = {code: code - 0xE0000 for code in range(0xE0020, 0xE007F)}
_EMOJI_JOINER = re.compile("(?<=[\U0001f000-\U0001faff\u2600-\u27bf])\u200d(?=[\U0001f000-\U0001faff\u2600-\u27bf])")

# Cyrillic and Greek letters that look like Latin ones (a subset of Unicode's confusables.txt: the
# letters an attacker can type on a phone keyboard). Applied only inside words that also hold Latin.
_CONFUSABLE_TABLE = str.maketrans({
    # Cyrillic lower case
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "ӏ": "l",
    "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "г": "r", "ѕ": "s", "т": "t", "у": "y", "х": "x",
    "ԝ": "w", "ү": "y", "ё": "e", "ї": "i", "ɡ": "g", "ь": "b", "п": "n", "и": "u",
    # Cyrillic upper case
    "А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H", "І": "I", "Ј": "J", "К": "K", "М": "M", "О": "O",
    "Р": "P", "Ѕ": "S", "Т": "T", "Х": "X", "У": "Y", "Ү": "Y", "Ԝ": "W", "Ӏ": "I", "Ԛ": "Q",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "γ": "y", "ω": "w", "η": "n", "μ": "u", "ѵ": "v",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
})
_LEET_TABLE = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})

# Every pattern below is anchored at a token start or bounded, so that it stays linear in its input.
_WORD = re.compile(r"[^\W_]+")
# A word of letters with leet digits or symbols in it, such as "d1sregard", "1gn0r3", "@ll", "pr0mpt".
_LEET_WORD = re.compile(r"(?<![\w@$])(?=[a-z]{0,40}[0-9@$])[a-z0-9@$]{3,40}(?![\w@$])")
# Letters spelled out one by one: "i g n o r e", "i.g.n.o.r.e", "i-g-n-o-r-e". A wider gap between two of them
# ends a word: "S H O W. S Y S T E M" is "show system", two words, not "showsystem"; so is a space between
# letters joined by something else ("i-g-n-o-r-e a-l-l").
_SPACED_LETTERS = re.compile(r"\b[a-z](?:[ .\-_*] ?[a-z]\b){3,}")
_SPACED_WORD_GAP = re.compile(r"[ .\-_*] ")
_JOINED_WORD_GAP = re.compile(r"[ .\-_*]? ")
_SPACED_SEPARATORS = re.compile(r"[ .\-_*]")
_WHITESPACE = re.compile(r"\s+")

_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
# Hex bytes, run together ("69676e6f7265") or one by one ("0x69 0x67", "\\x69\\x67", "69:67:6e").
_HEX_RUN = re.compile(r"(?:(?:\\x|0x)?[0-9A-Fa-f]{2}[ ,:]?){8,}")
_HEX_BYTE = re.compile(r"(?:\\x|0x)?([0-9A-Fa-f]{2})")
_URL_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_HTML_ENTITY = re.compile(r"&#(?:[0-9]{1,7}|x[0-9A-Fa-f]{1,6});")
_ROT13 = str.maketrans("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                       "nopqrstuvwxyzabcdefghijklmNOPQRSTUVWXYZabcdefghijklm")
# Frequent English words: a text in which rot13 or reversal reveals many more of them was hidden that way.
_COMMON_WORDS = frozenset(
    "the and you your all to of is are be in it that this for with me my not now what any previous prior "
    "instructions ignore system prompt rules reveal tell show from are".split())


def normalise(text: str) -> Normalised:
    """The normalised text, its decoded payloads and the obfuscation signals. Pure; bounded work."""
    return _normalise(text[:MAX_CHARS], depth=0)


def _normalise(text: str, *, depth: int) -> Normalised:
    signals: set[str] = set()
    decoded: list[str] = []

    smuggled = _tag_payloads(text)
    if smuggled:
        signals.add(INVISIBLE_CHARACTERS)
        decoded.extend(smuggled)
        text = _TAGS.sub("", text)
    value = unicodedata.normalize("NFKC", text)
    value = _EMOJI_JOINER.sub("", value)
    stripped = _INVISIBLE.sub("", value)
    if len(stripped) != len(value):
        signals.add(INVISIBLE_CHARACTERS)
    value = stripped

    if not value.isascii():
        value = _WORD.sub(lambda match: _unconfuse(match.group(0), signals), value)

    raw_for_decoding = value
    value = value.lower()
    value = _LEET_WORD.sub(_unleet, value)
    value = _SPACED_LETTERS.sub(_unspace, value)
    value = _WHITESPACE.sub(" ", value).strip()

    if depth < MAX_DEPTH:
        for payload in _decoded_payloads(raw_for_decoding):
            if len(decoded) >= MAX_PAYLOADS:
                break
            inner = _normalise(payload[:MAX_PAYLOAD_CHARS], depth=depth + 1)
            signals.update(inner.signals)
            if inner.text:
                decoded.append(inner.text)
            decoded.extend(inner.decoded)
    if decoded:
        signals.add(ENCODED_PAYLOAD)
    return Normalised(text=value, decoded=tuple(dict.fromkeys(decoded))[:MAX_PAYLOADS],
                      signals=tuple(sorted(signals)))


def _tag_payloads(text: str) -> list[str]:
    payloads = []
    for match in _TAGS.finditer(text):
        hidden = match.group(0).translate(_TAG_TO_ASCII)
        hidden = "".join(ch for ch in hidden if ch.isascii() and ch.isprintable())
        if len(hidden) >= 3:
            payloads.append(_WHITESPACE.sub(" ", hidden.lower()).strip())
    return payloads


@lru_cache(maxsize=4096)
def _script(char: str) -> str:
    if char.isascii():
        return "LATIN" if char.isalpha() else ""
    name = unicodedata.name(char, "")
    head = name.split(" ", 1)[0]
    return head if head in {"LATIN", "CYRILLIC", "GREEK"} else ("OTHER" if char.isalpha() else "")


def _unconfuse(word: str, signals: set[str]) -> str:
    if word.isascii():
        return word
    scripts = {_script(ch) for ch in word} - {""}
    if "LATIN" in scripts and scripts & {"CYRILLIC", "GREEK"}:
        signals.add(MIXED_SCRIPTS)
        mapped = word.translate(_CONFUSABLE_TABLE)
        if mapped != word:
            signals.add(CONFUSABLES)
        return mapped
    return word


def _unleet(match: re.Match[str]) -> str:
    word = match.group(0)
    # Mostly digits or hex ("2024x", "0x6e", "b2b") or a short name ("mp4") is not leetspeak.
    if len(word) <= 3 and not word[-1].isalpha():
        return word
    letters = sum(ch.isalpha() for ch in word)
    beyond_hex = sum(ch.isalpha() and ch > "f" for ch in word)
    return word.translate(_LEET_TABLE) if letters * 2 >= len(word) and beyond_hex >= 2 else word


def _unspace(match: re.Match[str]) -> str:
    spelled = match.group(0)
    gap = _SPACED_WORD_GAP if spelled[1] == " " else _JOINED_WORD_GAP
    return " ".join(_SPACED_SEPARATORS.sub("", word) for word in gap.split(spelled))


def _decoded_payloads(text: str) -> list[str]:
    payloads: list[str] = []
    for match in _BASE64_RUN.finditer(text):
        run = match.group(0)
        if _looks_like_word(run):
            continue
        decoded = _b64decode(run)
        if decoded:
            payloads.append(decoded)
        if len(payloads) >= MAX_PAYLOADS:
            return payloads
    for match in _HEX_RUN.finditer(text):
        digits = "".join(_HEX_BYTE.findall(match.group(0)[: 5 * MAX_PAYLOAD_CHARS]))
        decoded = _printable(binascii.unhexlify(digits))
        if decoded:
            payloads.append(decoded)
    if "%" in text:
        escaped = " ".join(token for token in text.split() if len(_URL_ESCAPE.findall(token)) >= 2)
        decoded = urllib.parse.unquote(escaped)
        if decoded != escaped and _printable(decoded.encode("utf-8")):
            payloads.append(decoded)
    if "&" in text and len(_HTML_ENTITY.findall(text)) >= 3:
        decoded = html.unescape(text)
        if _printable(decoded.encode("utf-8")):
            payloads.append(decoded)
    payloads.extend(_hidden_by_rot13_or_reversal(text))
    return list(dict.fromkeys(payloads))[:MAX_PAYLOADS]


def _looks_like_word(run: str) -> bool:
    # Long words and identifiers ("internationalisation", "SCREAMING_CASE") are not worth decoding.
    letters = run.replace("_", "").replace("-", "")
    return letters.isalpha() and (letters.islower() or letters.isupper())


def _b64decode(run: str) -> str | None:
    body = run.rstrip("=")
    altchars = b"-_" if ("-" in body or "_" in body) else None
    body = body[: (MAX_PAYLOAD_CHARS * 4) // 3]
    padded = body + "=" * (-len(body) % 4)
    try:
        raw = base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable(raw)


def _printable(raw: bytes) -> str | None:
    """The decoded text if it reads as text: valid UTF-8, mostly printable, with letters and spaces."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < 6:
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    letters = sum(ch.isalpha() for ch in text)
    if printable < 0.95 * len(text) or letters < 0.5 * len(text) or " " not in text.strip():
        return None
    return text


def _hidden_by_rot13_or_reversal(text: str) -> list[str]:
    words = [word.lower() for word in _WORD.findall(text[:MAX_PAYLOAD_CHARS]) if word.isascii()]
    if len(words) < 3:
        return []
    plain = sum(word in _COMMON_WORDS for word in words)
    found = []
    rotated = text[:MAX_PAYLOAD_CHARS].translate(_ROT13)
    if sum(word.translate(_ROT13) in _COMMON_WORDS for word in words) >= max(3, 2 * plain + 2):
        found.append(rotated)
    if sum(word[::-1] in _COMMON_WORDS for word in words) >= max(3, 2 * plain + 2):
        found.append(text[:MAX_PAYLOAD_CHARS][::-1])
    return found
