"""PiiCheck: what it finds, and as much what it leaves alone (a false positive blocks a real user's prompt).

Pure: no database, no network. Card numbers are the networks' published test numbers; ids and IBANs are the
documented examples or were built to pass their checksum.
"""

from __future__ import annotations

import time

import pytest

from guardrails.checks.base import Span, redact
from guardrails.checks.pii import PII_KINDS, PiiCheck
from guardrails.policy import PII_KINDS as POLICY_PII_KINDS


def findings(text: str, **kwargs: object) -> list[tuple[str, str]]:
    verdict = PiiCheck(**kwargs).evaluate(text, point="input")  # type: ignore[arg-type]
    return [(span.kind, text[span.start:span.end]) for span in verdict.spans]


@pytest.mark.parametrize(("text", "found"), [
    ("write to jane.doe@example.com today", "jane.doe@example.com"),
    ("cc: j.o'neil+billing@mail.example.co.uk.", "j.o'neil+billing@mail.example.co.uk"),
    ("quoted 'jane@example.com'", "jane@example.com"),
    ("<ADMIN_42@Sub-Domain.Example.ORG>", "ADMIN_42@Sub-Domain.Example.ORG"),
])
def test_finds_an_email(text, found):
    assert findings(text) == [("email", found)]


@pytest.mark.parametrize("text", [
    "ping @channel about it", "decorators like @dataclass and @pytest.fixture", "user@localhost", "a@b.c",
    "the price is 5@3.50", "an npm scope @types/node@18.0.0",
])
def test_leaves_what_is_not_an_email(text):
    assert findings(text, kinds=["email"]) == []


@pytest.mark.parametrize(("text", "found"), [
    ("call (415) 555-0100 now", "(415) 555-0100"),
    ("call 415-555-0100 now", "415-555-0100"),
    ("call 415.555.0100 now", "415.555.0100"),
    ("toll free 1-800-555-0199", "1-800-555-0199"),
    ("E.164: +14155550100.", "+14155550100"),
    ("US +1 415 555 0100", "+1 415 555 0100"),
    ("London 020 7946 0958", "020 7946 0958"),
    ("London +44 20 7946 0958", "+44 20 7946 0958"),
    ("London +44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
    ("mobile 07700 900123", "07700 900123"),
    ("Paris 06 12 34 56 78", "06 12 34 56 78"),
    ("Paris 06.12.34.56.78", "06.12.34.56.78"),
    ("Paris +33 6 12 34 56 78", "+33 6 12 34 56 78"),
    ("Berlin +49 30 123456", "+49 30 123456"),
    ("Berlin 030 123456", "030 123456"),
    ("Berlin 030/12345678", "030/12345678"),
    ("from abroad 0044 20 7946 0958", "0044 20 7946 0958"),
])
def test_finds_a_phone_number(text, found):
    assert findings(text) == [("phone", found)]


@pytest.mark.parametrize("text", [
    "released on 2024-01-15 at 10:30:00",
    "released on 15/01/2024 10:30",
    "meeting 01.02.2024 1430 in room 12",
    "version 1.2.3.4 and v10.20.30",
    "order ORD-1234567890 shipped",
    "invoice #1234567890 and ticket 0123456789",
    "in 2024 we grew 14% to 3,200,000 users",
    "the answer is 42, 1337 or 65536",
    "PIN 1234, code 123456",
    "timestamp 1705312200 (unix)",
    "isbn 978-3-16-148410-0",
    "coordinates 48.8566, 2.3522",
    "zero-padded 0001 0002 0003 0004",
    "ids 101 102 103 104 105 106",
    "+1 and +2",
])
def test_leaves_dates_versions_ids_and_numbers_alone(text):
    assert findings(text, kinds=["phone"]) == []


@pytest.mark.parametrize(("text", "found"), [
    ("visa 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
    ("visa 4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("visa 4111111111111111", "4111111111111111"),
    ("mastercard 5555 5555 5555 4444", "5555 5555 5555 4444"),
    ("mastercard 2-series 2223003122003222", "2223003122003222"),
    ("amex 3782 822463 10005", "3782 822463 10005"),
    ("discover 6011111111111117", "6011111111111117"),
    ("jcb 3530111333300000", "3530111333300000"),
    ("diners 30569309025904", "30569309025904"),
    ("unionpay 6200000000000005", "6200000000000005"),
    ("card 4111 1111 1111 1111 123 (the last three are the CVV)", "4111 1111 1111 1111"),
])
def test_finds_a_payment_card(text, found):
    assert findings(text) == [("payment_card", found)]


@pytest.mark.parametrize("text", [
    "not luhn-valid 4111 1111 1111 1112",
    "not luhn-valid 4111111111111112",
    "luhn-valid but no network issues 1234567812345670",  # 1... is no card network's prefix
    "luhn-valid but an amex number is 15 digits: 3411111111111111",
    "too long 41111111111111111111111",
    "a decimal 4111111111111111.25",
    "an id card-4111111111111111x",
])
def test_leaves_what_is_not_a_card(text):
    assert findings(text, kinds=["payment_card"]) == []


@pytest.mark.parametrize(("text", "found"), [
    ("SSN 123-45-6789", "123-45-6789"),
    ("SSN 123 45 6789", "123 45 6789"),
    ("NINO AB 12 34 56 C", "AB 12 34 56 C"),
    ("NINO AB123456C", "AB123456C"),
    ("DNI 12345678Z", "12345678Z"),
    ("NIE X1234567L", "X1234567L"),
    ("codice fiscale RSSMRA85T10A562S", "RSSMRA85T10A562S"),
    ("NIR 1 85 05 78 006 084 91", "1 85 05 78 006 084 91"),
    ("NIR 185057800608491", "185057800608491"),
    ("NIR (Corse) 2 69 02 2A 934 173 49", "2 69 02 2A 934 173 49"),
])
def test_finds_a_national_id(text, found):
    assert findings(text) == [("national_id", found)]


@pytest.mark.parametrize("text", [
    "area 000: 000-12-3456", "area 666: 666-12-3456", "area 9xx: 900-12-3456", "group 00: 123-00-4567",
    "serial 0000: 123-45-0000", "mixed separators 123-45 6789",
    "NINO prefix never issued: GB 12 34 56 A", "NINO bad first letter: DA 12 34 56 A", "NINO bad suffix: AB 12 34 56 E",
    "DNI with the wrong letter 12345678A", "codice fiscale with the wrong check letter RSSMRA85T10A562T",
    "NIR with the wrong key 1 85 05 78 006 084 92",
])
def test_leaves_ids_that_fail_their_rules(text):
    assert findings(text, kinds=["national_id"]) == []


@pytest.mark.parametrize(("text", "found"), [
    ("pay DE89 3704 0044 0532 0130 00 please", "DE89 3704 0044 0532 0130 00"),
    ("pay DE89370400440532013000", "DE89370400440532013000"),
    ("pay GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 32"),
    ("pay FR14 2004 1010 0505 0001 3M02 606", "FR14 2004 1010 0505 0001 3M02 606"),
    ("pay NL91ABNA0417164300", "NL91ABNA0417164300"),
    ("pay NO9386011117947", "NO9386011117947"),
])
def test_finds_an_iban(text, found):
    assert findings(text) == [("iban", found)]


@pytest.mark.parametrize("text", [
    "wrong check digits DE88 3704 0044 0532 0130 00",
    "one digit changed DE89 3704 0044 0532 0130 01",
    "wrong length for DE: DE89 3704 0044 0532 0130",
    "unknown country QQ89 3704 0044 0532 0130 00",
])
def test_leaves_what_is_not_an_iban(text):
    assert findings(text, kinds=["iban"]) == []


@pytest.mark.parametrize(("text", "found"), [
    ("from 203.0.113.42 at noon", "203.0.113.42"),
    ("host=10.0.0.12:8080", "10.0.0.12"),
    ("subnet 192.168.1.0/24", "192.168.1.0"),
    ("from 2001:db8::8a2e:370:7334 today", "2001:db8::8a2e:370:7334"),
    ("link-local fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
    ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334.", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("bracketed [2001:db8::1]:443", "2001:db8::1"),
    ("mapped ::ffff:203.0.113.42", "::ffff:203.0.113.42"),
])
def test_finds_an_ip_address(text, found):
    assert findings(text) == [("ip_address", found)]


@pytest.mark.parametrize("text", [
    "version 1.2.3.4", "Version: 10.0.19041.1", "ver. 2.10.1.0", "v1.2.3.4", "release 4.4.0.1",
    "see section 1.2.3.4", "octets too big 256.1.1.1", "five parts 1.2.3.4.5", "leading zeros 01.02.03.04",
    "loopback 127.0.0.1 and ::1", "any 0.0.0.0", "slicing a[1::2] and b[::3]", "C++ std::vector<int>",
    "time 12:30:45", "MAC 00:1A:2B:3C:4D:5E", "Rust Foo::Bar::baz()",
])
def test_leaves_what_is_not_an_ip_address(text):
    assert findings(text, kinds=["ip_address"]) == []


def test_finds_every_kind_in_one_text_in_order():
    # given
    text = ("Jane (jane@example.com, +44 20 7946 0958) paid with 4111 1111 1111 1111 from DE89370400440532013000; "
            "SSN 123-45-6789, IP 203.0.113.42.")
    # when
    verdict = PiiCheck().evaluate(text, point="output")
    # then
    assert verdict.triggered is True
    assert verdict.score == 1.0
    assert verdict.reasons == ("pii.email", "pii.phone", "pii.payment_card", "pii.national_id", "pii.iban",
                               "pii.ip_address")
    assert [span.kind for span in verdict.spans] == ["email", "phone", "payment_card", "iban", "national_id",
                                                    "ip_address"]


def test_redaction_replaces_each_finding_by_its_kind():
    # given
    text = "Mail jane@example.com or call (415) 555-0100; card 4111-1111-1111-1111."
    # when
    verdict = PiiCheck().evaluate(text, point="input")
    # then
    assert redact(text, verdict.spans) == ("Mail [REDACTED:EMAIL] or call [REDACTED:PHONE]; "
                                           "card [REDACTED:PAYMENT_CARD].")


def test_a_phone_number_next_to_another_number_keeps_its_own_span():
    text = "+14155550100 123-45-6789, and 020 7946 0958 2024"
    assert findings(text) == [("phone", "+14155550100"), ("national_id", "123-45-6789"), ("phone", "020 7946 0958")]


def test_the_message_never_contains_a_finding():
    # given
    text = "jane@example.com 4111111111111111 +14155550100 123-45-6789 DE89370400440532013000 203.0.113.42"
    # when
    verdict = PiiCheck().evaluate(text, point="input")
    # then
    assert len(verdict.spans) == 6
    for span in verdict.spans:
        assert text[span.start:span.end] not in verdict.message
        assert text[span.start:span.end] not in str(verdict.reasons)
    assert verdict.message == ("Personal data found (1 email, 1 phone, 1 payment_card, 1 national_id, 1 iban, "
                               "1 ip_address); redact it or remove it before sending.")


def test_a_clean_text_does_not_trigger():
    verdict = PiiCheck().evaluate("Summarise the Q3 report in 5 bullet points, by 2024-10-01.", point="input")
    assert verdict.triggered is False
    assert verdict.score == 0.0
    assert verdict.spans == ()
    assert verdict.reasons == ()


def test_only_the_kinds_asked_for_are_looked_for():
    # given
    text = "jane@example.com, 4111 1111 1111 1111, 203.0.113.42"
    # when
    verdict = PiiCheck(kinds=["payment_card", "email"]).evaluate(text, point="input")
    # then
    assert verdict.reasons == ("pii.email", "pii.payment_card")
    assert verdict.spans == (Span(0, 16, "email"), Span(18, 37, "payment_card"))


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="Unknown PII kinds \\['passport'\\]"):
        PiiCheck(kinds=["email", "passport"])


def test_its_kinds_are_the_policy_kinds():
    assert PII_KINDS == POLICY_PII_KINDS


@pytest.mark.parametrize("unit", [
    "1", "1 ", "1-", "1.", "+1 ", "+1", "(1) ", "0 ", "00 ", "(0", "02 ", "1111 ", "1.1.", "a@", "a.a@", "@a.",
    "a", "A1", "AB12", "DE89 ", "12345678Z ", "12345678A ", "X1", "::", "ff:", "a:", "1 85 ", "2A",
])
def test_stays_linear_on_adversarial_text(unit):
    # given: a repeated fragment that would make a backtracking pattern quadratic or worse
    text = (unit * (500_000 // len(unit) + 1))[:500_000]

    def cpu_seconds(part: str) -> float:  # CPU time, so that other processes on the machine count less
        check = PiiCheck()
        timings = []
        for _ in range(3):  # the best of three, so that one busy spell of a shared machine does not count
            started = time.process_time()
            check.evaluate(part, point="input")
            timings.append(time.process_time() - started)
        return min(timings)

    # when: a tenth of it, then all of it
    tenth, whole = cpu_seconds(text[:50_000]), cpu_seconds(text)
    # then: linear: ten times the text takes about ten times as long, where a quadratic pattern takes a hundred
    # times. No absolute limit: a shared machine's speed varies threefold from one run to the next.
    assert whole < 40 * tenth, (tenth, whole)
