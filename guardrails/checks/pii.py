"""Personal data in a text: emails, phone numbers, payment cards, national ids, IBANs and IP addresses.

Every finding is a ``Span`` (``kind`` is one of ``PII_KINDS``) so that a policy can redact it; the message
counts findings by kind and never quotes one. False positives block real users' prompts, so a regex only
proposes a candidate and a validator decides: payment cards pass Luhn and a known IIN range, IBANs their
country's length and mod-97, national ids their checksum where one exists (Spanish DNI/NIE, Italian codice
fiscale, French NIR) or their allocation rules (US SSN, UK NINO), IPv6 addresses ``ipaddress``. Phone
numbers have no checksum: they must have 9 to 15 digits in a shape a phone number is written in (E.164 with
``+``, US, or a national number with a trunk ``0`` and separators), so that dates, times, versions, order ids,
years and bare digit runs are left alone.

Linear in its input: every pattern starts only where a token starts (a lookbehind), its repeats are bounded
or possessive, and the work after a match is bounded. A lookahead on the first character comes before each
lookbehind: it lets ``re`` skip ahead to candidate characters, where a leading lookbehind makes it try every
position (three to five times slower).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from guardrails.checks.base import Point, Span, Verdict, without_overlaps

PII_KINDS = ("email", "phone", "payment_card", "national_id", "iban", "ip_address")

# When two findings overlap, the better-validated one is kept (a card number is not also a phone number).
_PRIORITY = {"payment_card": 0, "iban": 1, "national_id": 2, "email": 3, "ip_address": 4, "phone": 5}

# --- email ------------------------------------------------------------------------------------------------

# A pragmatic address: a dot-atom local part (no quoted strings or comments) and a host name with a TLD.
_EMAIL = re.compile(
    r"(?=[A-Za-z0-9])(?<![\w.%+\-])[A-Za-z0-9][A-Za-z0-9._%+'\-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?![\w\-]|\.[A-Za-z0-9])", re.ASCII)

# --- phone ------------------------------------------------------------------------------------------------

# Digit groups joined by at most one separator, digits possessive so that a run of digits splits one way only.
# A national number does not start right after another digit group: that is the middle of a longer number.
_PHONE_INTERNATIONAL = re.compile(r"\+(?<![\w+]\+)\d++(?:[ .\-]?\(?\d++\)?)*+", re.ASCII)
_PHONE_US = re.compile(r"(?=[1-9(])(?<![\w+.\-/])(?<!\d[ .\-/])(?:1[ .\-])?(?:\([2-9]\d\d\) ?|[2-9]\d\d[ .\-])"
                       r"[2-9]\d\d[ .\-]\d{4}(?!\w|[.\-/]\d)", re.ASCII)
_PHONE_TRUNK = re.compile(
    r"(?=[0(])(?<![\w+.\-/])(?<!\d[ .\-/])(?:\(0\d++\)|0\d++)(?:(?: ?[ .\-/] ?|(?<=\)))\d++)*+", re.ASCII)
_DATE = re.compile(r"\(?\d{1,4}([./\-])\d{1,2}\1\d{1,4}\b", re.ASCII)
_GROUP = re.compile(r"\d+", re.ASCII)

# --- payment card -----------------------------------------------------------------------------------------

# 13 to 19 digits run together, or groups after a first group of four, one separator throughout.
_CARD = re.compile(r"(?=\d)(?<![\w\-.+])(?:\d{13,19}+|\d{4}+([ \-])\d{1,6}+(?:\1\d{1,6}+){1,4}+)", re.ASCII)
# (lowest prefix, highest prefix, the lengths issued): Visa, Mastercard, Amex, Discover, Diners, JCB,
# UnionPay, Maestro and Mir.
_IIN_RANGES: tuple[tuple[str, str, frozenset[int]], ...] = (
    ("4", "4", frozenset({13, 16, 19})),
    ("51", "55", frozenset({16})),
    ("2221", "2720", frozenset({16})),
    ("34", "34", frozenset({15})),
    ("37", "37", frozenset({15})),
    ("6011", "6011", frozenset(range(16, 20))),
    ("644", "649", frozenset(range(16, 20))),
    ("65", "65", frozenset(range(16, 20))),
    ("300", "305", frozenset(range(14, 20))),
    ("36", "36", frozenset(range(14, 20))),
    ("38", "39", frozenset(range(16, 20))),
    ("3528", "3589", frozenset(range(16, 20))),
    ("62", "62", frozenset(range(16, 20))),
    ("50", "50", frozenset(range(13, 20))),
    ("56", "58", frozenset(range(13, 20))),
    ("6304", "6304", frozenset(range(13, 20))),
    ("6759", "6759", frozenset(range(13, 20))),
    ("2200", "2204", frozenset(range(16, 20))),
)

# --- national ids -----------------------------------------------------------------------------------------

# US SSN written 123-45-6789 or 123 45 6789; never area 000, 666 or 9xx, group 00 or serial 0000.
_SSN = re.compile(r"(?=\d)(?<![\w\-.])(?!000|666|9)\d{3}([\- ])(?!00)\d\d\1(?!0000)\d{4}(?!\w|[\-.]\d)", re.ASCII)
# UK National Insurance number: the prefix letters HMRC allocates, six digits, a suffix A-D.
_NINO = re.compile(r"(?=[A-Z])(?<![\w\-])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
                   r" ?\d\d ?\d\d ?\d\d ?[A-D](?![\w\-])", re.ASCII)
# Spanish DNI (8 digits) or NIE (X, Y or Z and 7 digits), then the check letter.
_DNI = re.compile(r"(?=[\dXYZ])(?<![\w\-])(?:\d{8}|[XYZ]\d{7})-?[A-Z](?![\w\-])", re.ASCII)
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
_NIE_DIGITS = str.maketrans("XYZ", "012")
# Italian codice fiscale; the digits may be replaced by letters (omocodia) when two people would collide.
_CODICE_FISCALE = re.compile(r"(?=[A-Z])(?<![\w\-])[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}"
                             r"[A-Z][0-9LMNPQRSTUV]{3}[A-Z](?![\w\-])", re.ASCII)
_CF_ODD = dict(zip("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                   (1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8,
                    12, 14, 16, 10, 22, 25, 24, 23)))
_CF_EVEN = {**{str(d): d for d in range(10)}, **{chr(65 + i): i for i in range(26)}}
_CF_OMOCODIA = str.maketrans("LMNPQRSTUV", "0123456789")
# French NIR (numéro de sécurité sociale): sex, year, month, department (2A/2B for Corsica), commune,
# order number and a two-digit key, 97 minus the number modulo 97.
_NIR = re.compile(r"(?=[12])(?<![\w\-.])[12] ?\d\d ?\d\d ?(?:\d\d|2[AB]) ?\d{3} ?\d{3} ?\d\d(?![\w\-]|\.\d)", re.ASCII)

# --- IBAN -------------------------------------------------------------------------------------------------

_IBAN = re.compile(r"(?=[A-Z])(?<![\w\-])[A-Z]{2}\d\d(?: ?[A-Z0-9]{4}){1,7}(?: ?[A-Z0-9]{1,4})?(?![\w\-])", re.ASCII)
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}

# --- IP addresses -----------------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?=\d)(?<![\w.\-]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w\-]|\.\d)", re.ASCII)
# A dotted quad right after one of these words is a version or a section number, not an address.
_NOT_AN_ADDRESS_BEFORE = re.compile(
    r"(?:\b(?:v|ver|version|versions|release|build|rev|revision|section|sec|chapter|step|rule|clause|article)"
    r"\.?|§)\s*[:=#]?\s*$", re.IGNORECASE | re.ASCII)
# A colon within the first five characters, so that words of hex letters ("face", "decade") are not candidates.
_IPV6 = re.compile(r"(?=[0-9A-Fa-f:])(?<![\w:.])[0-9A-Fa-f]{0,4}+:[0-9A-Fa-f:.]{2,44}+(?![\w:])", re.ASCII)


def _emails(text: str) -> Iterator[tuple[int, int]]:
    if "@" not in text:
        return
    for match in _EMAIL.finditer(text):
        yield match.span()


def _phones(text: str) -> Iterator[tuple[int, int]]:
    if "+" in text:
        for match in _PHONE_INTERNATIONAL.finditer(text):
            span = _international_phone(text, match)
            if span is not None:
                yield span
    for match in _PHONE_US.finditer(text):
        yield match.span()
    for match in _PHONE_TRUNK.finditer(text):
        span = _trunk_phone(text, match)
        if span is not None:
            yield span


def _international_phone(text: str, match: re.Match[str]) -> tuple[int, int] | None:
    if len(match.group(0)) < 10:  # a "+" and 9 digits at least
        return None
    groups, stop = _leading_groups(match.group(0), most=15, enough=11)
    digits = sum(map(len, groups))
    if not 9 <= digits <= 15 or (stop == len(match.group(0)) and _followed_by_word(text, match.start() + stop)):
        return None
    taken = match.group(0)[:stop]
    if taken.count("(") != taken.count(")"):
        return None
    return match.start(), match.start() + stop


def _trunk_phone(text: str, match: re.Match[str]) -> tuple[int, int] | None:
    """A national number with a trunk prefix: UK 020 7946 0958, FR 06 12 34 56 78, DE 030 123456, or an
    international one dialled with 00."""
    value = match.group(0)
    is_international = value.startswith("00")
    groups, stop = _leading_groups(value, most=17 if is_international else 12, enough=11 if is_international else 10)
    if len(groups) < 2 or (stop == len(value) and _followed_by_word(text, match.start() + stop)):
        return None
    digits = sum(map(len, groups))
    if is_international:
        is_phone = 11 <= digits <= 17 and len(groups[0]) <= 5 and groups[0][2:3] not in ("", "0")
    elif len(groups) == 5 and all(len(group) == 2 for group in groups):
        is_phone = True  # the French way, two digits at a time
    else:
        is_phone = (9 <= digits <= 12 and 2 <= len(groups[0]) <= 5 and all(len(g) >= 2 for g in groups[1:])
                    and not _DATE.match(value))
    return (match.start(), match.start() + stop) if is_phone else None


def _leading_groups(value: str, *, most: int, enough: int) -> tuple[list[str], int]:
    """The digit groups a phone number starts with, and where they end: groups are taken while they fit in
    ``most`` digits and until there are ``enough``, so that a number written next to it is not taken in.
    A ``(0)`` (a trunk prefix inside an international number) counts for nothing."""
    groups: list[str] = []
    digits, stop = 0, 0
    for group in _GROUP.finditer(value):
        parenthesised = value[group.start() - 1:group.start()] == "(" and value[group.end():group.end() + 1] == ")"
        if parenthesised and group.group(0) == "0":
            stop = group.end() + 1
            continue
        if digits + len(group.group(0)) > most:
            break
        groups.append(group.group(0))
        digits += len(group.group(0))
        stop = group.end() + (1 if parenthesised else 0)
        if digits >= enough:
            break
    return groups, stop


def _followed_by_word(text: str, end: int) -> bool:
    return end < len(text) and (text[end].isalnum() or text[end] == "_")


def _payment_cards(text: str) -> Iterator[tuple[int, int]]:
    for match in _CARD.finditer(text):
        span = _card(text, match)
        if span is not None:
            yield span


def _card(text: str, match: re.Match[str]) -> tuple[int, int] | None:
    start, end = match.span()
    value = match.group(0)
    separator = match.group(1)
    if separator is None:
        if not 13 <= len(value) <= 19 or _after_number(text, end):
            return None
        return (start, end) if _issued(value) and _luhn(value) else None
    groups = value.split(separator)
    # The longest run of groups that is a card, so that a code written after the number is not taken in.
    for count in range(len(groups), 2, -1):
        taken = groups[:count]
        digits = "".join(taken)
        if not 13 <= len(digits) <= 19 or any(len(group) < 3 for group in taken[1:]):
            continue
        stop = start + sum(map(len, taken)) + count - 1
        if count == len(groups) and _after_number(text, stop):
            return None
        if _issued(digits) and _luhn(digits):
            return start, stop
    return None


def _after_number(text: str, end: int) -> bool:
    """The match is part of a longer token: a word, a decimal or a longer id."""
    if end >= len(text):
        return False
    if text[end].isalnum() or text[end] == "_":
        return True
    return text[end] in ".,-" and end + 1 < len(text) and text[end + 1].isdigit()


def _issued(digits: str) -> bool:
    length = len(digits)
    for low, high, lengths in _IIN_RANGES:
        if length in lengths and low <= digits[:len(low)] <= high:
            return True
    return False


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _national_ids(text: str) -> Iterator[tuple[int, int]]:
    for match in _SSN.finditer(text):
        yield match.span()
    for match in _NINO.finditer(text):
        yield match.span()
    for match in _DNI.finditer(text):
        if _dni_valid(match.group(0)):
            yield match.span()
    for match in _CODICE_FISCALE.finditer(text):
        if _codice_fiscale_valid(match.group(0)):
            yield match.span()
    for match in _NIR.finditer(text):
        if _nir_valid(match.group(0)):
            yield match.span()


def _dni_valid(value: str) -> bool:
    number = value[:-1].rstrip("-")
    if not number[0].isdigit():
        number = number.translate(_NIE_DIGITS)
    return _DNI_LETTERS[int(number) % 23] == value[-1]


def _codice_fiscale_valid(value: str) -> bool:
    body = value[:15]
    total = sum((_CF_ODD if index % 2 == 0 else _CF_EVEN)[char] for index, char in enumerate(body))
    if chr(65 + total % 26) != value[15]:
        return False
    month_day = body[9:11].translate(_CF_OMOCODIA)  # 1-31, or 41-71 for women
    day = int(month_day)
    return 1 <= day <= 31 or 41 <= day <= 71


def _nir_valid(value: str) -> bool:
    value = value.replace(" ", "")
    month = int(value[3:5])
    if not (1 <= month <= 12 or 20 <= month <= 42 or 50 <= month <= 99):
        return False
    body = value[:13].replace("2A", "19").replace("2B", "18")
    if not body.isdigit():
        return False
    return 97 - int(body) % 97 == int(value[13:])


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for match in _IBAN.finditer(text):
        value = match.group(0).replace(" ", "")
        if _IBAN_LENGTHS.get(value[:2]) == len(value) and _mod97(value[4:] + value[:4]) == 1:
            yield match.span()


def _mod97(value: str) -> int:
    remainder = 0
    for char in value:
        number = int(char, 36)
        remainder = (remainder * (100 if number > 9 else 10) + number) % 97
    return remainder


def _ip_addresses(text: str) -> Iterator[tuple[int, int]]:
    if "." in text:
        for match in _IPV4.finditer(text):
            start, end = match.span()
            if _NOT_AN_ADDRESS_BEFORE.search(text, max(0, start - 24), start):
                continue
            address = ipaddress.IPv4Address(match.group(0))
            if not (address.is_loopback or address.is_unspecified):
                yield start, end
    if "::" in text or text.count(":") >= 7:
        for match in _IPV6.finditer(text):
            span = _ipv6(match)
            if span is not None:
                yield span


def _ipv6(match: re.Match[str]) -> tuple[int, int] | None:
    start, _ = match.span()
    value = match.group(0).rstrip(":.")
    if value.count(":") < 2 or not any(ch.isdigit() for ch in value):
        return None
    groups = [group for group in value.split(":") if group]
    # Python slices (a[1::2]) and Rust or C++ paths are shaped like short compressed addresses.
    if len(groups) < 3 and not any(len(group) >= 3 for group in groups):
        return None
    try:
        address = ipaddress.IPv6Address(value)
    except ValueError:
        return None
    if address.is_loopback or address.is_unspecified:
        return None
    return start, start + len(value)


_FINDERS: dict[str, Callable[[str], Iterator[tuple[int, int]]]] = {
    "email": _emails, "phone": _phones, "payment_card": _payment_cards, "national_id": _national_ids,
    "iban": _ibans, "ip_address": _ip_addresses,
}
# The fewest digits a finding of each kind has (a UK NINO has 6; an IPv6 address such as fe80::1, 1). Counting
# digits costs a few microseconds, a pass of the patterns of a kind tens: a text with fewer is not scanned.
_MIN_DIGITS = {"email": 0, "phone": 9, "payment_card": 13, "national_id": 6, "iban": 2, "ip_address": 1}


def _without_overlaps(spans: list[Span]) -> list[Span]:
    """One finding per stretch of text: of overlapping ones, the better-validated kind, then the longer."""
    return without_overlaps(spans, _PRIORITY)


class PiiCheck:
    """Finds personal data of the kinds asked for; every finding is a span to redact."""

    name = "pii"

    def __init__(self, *, kinds: Iterable[str] | None = None) -> None:
        chosen = tuple(PII_KINDS if kinds is None else kinds)
        unknown = sorted(set(chosen) - set(PII_KINDS))
        if unknown or not chosen:
            raise ValueError(f"Unknown PII kinds {unknown}; choose a non-empty subset of {', '.join(PII_KINDS)}.")
        self.kinds = tuple(kind for kind in PII_KINDS if kind in chosen)

    def evaluate(self, text: str, *, point: Point) -> Verdict:
        """Every finding of ``text`` as a span; ``point`` does not change what counts as personal data."""
        digits = sum(map(text.count, "0123456789"))
        found = [Span(start, end, kind) for kind in self.kinds if digits >= _MIN_DIGITS[kind]
                 for start, end in _FINDERS[kind](text)]
        if not found:
            return Verdict(check=self.name, triggered=False)
        spans = _without_overlaps(found)
        counts = Counter(span.kind for span in spans)
        kinds = [kind for kind in PII_KINDS if kind in counts]
        summary = ", ".join(f"{counts[kind]} {kind}" for kind in kinds)
        return Verdict(check=self.name, triggered=True, score=1.0, reasons=tuple(f"pii.{kind}" for kind in kinds),
                       message=f"Personal data found ({summary}); redact it or remove it before sending.",
                       spans=tuple(spans))
