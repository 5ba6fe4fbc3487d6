"""SecretsCheck: the credentials it finds, and the look-alikes it leaves alone (prose, placeholders, variables).

Pure: no database, no network. Every credential below is made up in the vendor's documented shape (the AWS
ones are AWS's own documentation examples); JWTs are signed here with PyJWT, our keys made by common.keys.
"""

from __future__ import annotations

import time

import jwt
import pytest

from common.keys import KeyHasher
from guardrails.checks.base import redact
from guardrails.checks.secrets import SecretsCheck

RANDOM_40 = "Ab3dEfGh1jKlMn0pQrStUvWxYz0123456789AbCd"  # 40 alphanumerics, upper, lower and digits
PEM = ("-----BEGIN RSA PRIVATE KEY-----\n"
       "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
       "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
       "-----END RSA PRIVATE KEY-----")


def findings(text: str) -> list[tuple[str, str]]:
    verdict = SecretsCheck().evaluate(text, point="input")
    return [(span.kind, text[span.start:span.end]) for span in verdict.spans]


@pytest.mark.parametrize(("text", "kind", "found"), [
    ("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "aws_access_key", "AKIAIOSFODNN7EXAMPLE"),
    ("session ASIAY34FZKBOKMUTVV7A here", "aws_access_key", "ASIAY34FZKBOKMUTVV7A"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_key",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ('{"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}', "aws_secret_key",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("token ghp_" + RANDOM_40[:36], "github_token", "ghp_" + RANDOM_40[:36]),
    ("gho_" + RANDOM_40[:36], "github_token", "gho_" + RANDOM_40[:36]),
    ("ghs_" + RANDOM_40[:36] + ".", "github_token", "ghs_" + RANDOM_40[:36]),
    ("github_pat_11ABCDEFG0" + RANDOM_40 + "_" + RANDOM_40, "github_token",
     "github_pat_11ABCDEFG0" + RANDOM_40 + "_" + RANDOM_40),
    ("GITLAB_TOKEN=glpat-" + RANDOM_40[:20], "gitlab_token", "glpat-" + RANDOM_40[:20]),
    ("slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "slack_token",
     "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("post to https://hooks.slack.com/services/T0123ABCD/B0456EFGH/" + RANDOM_40[:24], "slack_webhook",
     "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/" + RANDOM_40[:24]),
    ("stripe.api_key = 'sk_live_" + RANDOM_40[:24] + "'", "stripe_key", "sk_live_" + RANDOM_40[:24]),
    ("rk_live_" + RANDOM_40[:24], "stripe_key", "rk_live_" + RANDOM_40[:24]),
    ("sk_test_" + RANDOM_40[:24], "stripe_key", "sk_test_" + RANDOM_40[:24]),
    ("OPENAI_API_KEY=sk-" + RANDOM_40 + "12345678", "openai_key", "sk-" + RANDOM_40 + "12345678"),
    ("sk-proj-" + RANDOM_40 + "-" + RANDOM_40, "openai_key", "sk-proj-" + RANDOM_40 + "-" + RANDOM_40),
    ("sk-ant-api03-" + RANDOM_40 + RANDOM_40 + "-AA", "anthropic_key", "sk-ant-api03-" + RANDOM_40 + RANDOM_40 + "-AA"),
    ("maps key AIzaSyA-" + RANDOM_40[:31], "google_api_key", "AIzaSyA-" + RANDOM_40[:31]),
    ("postgres://app:S3cr3t-P4ss@db.internal:5432/app", "url_credentials", "S3cr3t-P4ss"),
    ("redis://:hunter2hunter2@cache:6379/0", "url_credentials", "hunter2hunter2"),
    ("password=Xk9#mP2$vL7q", "generic_secret", "Xk9#mP2$vL7q"),
    ('DB_PASSWORD: "c0rrect-h0rse-battery"', "generic_secret", "c0rrect-h0rse-battery"),
    ("client_secret => 'f3a9c1d27be84e0f9a1c'", "generic_secret", "f3a9c1d27be84e0f9a1c"),
    ("api-key: q8F2kLm9Zx4Rt7Wn", "generic_secret", "q8F2kLm9Zx4Rt7Wn"),
])
def test_finds_a_credential(text, kind, found):
    assert findings(text) == [(kind, found)]


def test_finds_a_jwt_whose_header_names_its_algorithm():
    # given
    token = jwt.encode({"sub": "user-42", "scope": "admin"}, "a-signing-key-of-32-bytes-000000", algorithm="HS256")
    # when
    found = findings(f"Authorization: Bearer {token}")
    # then
    assert found == [("jwt", token)]


def test_finds_an_unsigned_jwt():
    token = jwt.encode({"sub": "user-42"}, None, algorithm="none")
    assert token.endswith(".")
    assert findings(f"token={token} ") == [("jwt", token)]


def test_finds_a_whole_pem_private_key_block():
    # given
    text = f"my key:\n{PEM}\nthanks"
    # when
    verdict = SecretsCheck().evaluate(text, point="input")
    # then
    assert [(span.kind, text[span.start:span.end]) for span in verdict.spans] == [("private_key", PEM)]
    assert redact(text, verdict.spans) == "my key:\n[REDACTED:PRIVATE_KEY]\nthanks"


@pytest.mark.parametrize("label", ["", "EC ", "OPENSSH ", "ENCRYPTED ", "DSA "])
def test_finds_every_kind_of_pem_private_key(label):
    block = PEM.replace("RSA ", label)
    assert findings(f"x {block} y") == [("private_key", block)]


def test_a_private_key_cut_short_is_redacted_up_to_where_its_body_ends():
    # given: a key pasted without its END line (or a stream that has not sent it yet)
    head = PEM.rsplit("\n", 1)[0]
    text = f"{head}\nwhat is wrong with it?"
    # when
    found = findings(text)
    # then
    assert found == [("private_key", head)]


def test_finds_our_own_api_keys():
    # given
    hasher = KeyHasher(b"test-pepper-0123456789")
    tenant_key = hasher.generate("agp").plaintext
    operator_key = hasher.generate("agpop").plaintext
    # when
    found = findings(f"use {tenant_key} or {operator_key}")
    # then
    assert found == [("agentplane_key", tenant_key), ("agentplane_key", operator_key)]


@pytest.mark.parametrize("text", [
    # prose and look-alike words
    "learn new sk-ills fast", "we use sk-learn-is-a-great-library-for-ml and sk-learn-pipelines-everywhere",
    "the ghp_ prefix marks a GitHub token", "xoxb- tokens are for bots", "AKIA is how AWS key ids start",
    "AIza keys are for Google", "eyJhbGciOi is how a JWT starts",
    "a.b.c is not a token; neither is eyJub3QiOiJqd3QifQ.eyJ4IjoxfQ.abc",  # header without "alg"
    # placeholders and references to where a secret is kept
    "password=${DB_PASSWORD}", "password: process.env.DB_PASSWORD", "api_key=YOUR_API_KEY",
    "api_key = os.environ['API_KEY']", "secret_key = settings.SECRET_KEY", "password: <your password>",
    "password=********", "token: xxxxxxxxxxxx", "PASSWORD=changeme123", "password = example-password-1",
    "pwd=/home/user/project", "token=MY_TOKEN_NAME",
    # low-entropy or short values
    "password=aaaaaaaaaa", "password: 12345678", "secret: required", "password=hunter2", "token: 4096",
    # URLs without a password, or with a placeholder one
    "https://example.com/path?x=1", "https://user@example.com/", "postgres://user:password@localhost/db",
    "https://user:<password>@host/", "http://host:8080/path@v2",
    # our key format with the wrong shape
    "agp_0123456789ab_tooShort", "agp_XYZ456789abc_" + RANDOM_40,
    # prose mentioning the words
    "Reset your password: go to Settings, then Security.", "The secret: practise every day.",
    "Token counts: the model saw 1234 tokens.",
])
def test_leaves_look_alikes_alone(text):
    assert findings(text) == []


def test_a_specific_kind_wins_over_a_generic_assignment():
    # given: both "api_key=" and the sk- shape point at the same value
    key = "sk-" + RANDOM_40 + "12345678"
    # when
    verdict = SecretsCheck().evaluate(f"api_key={key}", point="tool_arguments")
    # then
    assert verdict.reasons == ("secrets.openai_key",)
    assert len(verdict.spans) == 1


def test_redaction_and_verdict_never_show_a_secret():
    # given
    github = "ghp_" + RANDOM_40[:36]
    text = f"export GITHUB_TOKEN={github} AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE; db postgres://app:S3cr3tP4ss@db/app"
    # when
    verdict = SecretsCheck().evaluate(text, point="output")
    # then
    assert verdict.triggered is True
    assert verdict.score == 1.0
    assert verdict.reasons == ("secrets.aws_access_key", "secrets.github_token", "secrets.url_credentials")
    assert redact(text, verdict.spans) == ("export GITHUB_TOKEN=[REDACTED:GITHUB_TOKEN] "
                                           "AWS_ACCESS_KEY_ID=[REDACTED:AWS_ACCESS_KEY]; "
                                           "db postgres://app:[REDACTED:URL_CREDENTIALS]@db/app")
    assert verdict.message == ("Credentials found (1 aws_access_key, 1 github_token, 1 url_credentials); "
                               "redact them, and rotate any that were real.")
    for secret in (github, "AKIAIOSFODNN7EXAMPLE", "S3cr3tP4ss"):
        assert secret not in verdict.message
        assert secret not in str(verdict.to_json()["reasons"])


def test_a_clean_text_does_not_trigger():
    verdict = SecretsCheck().evaluate("Write a haiku about rotating API keys every 90 days.", point="input")
    assert verdict.triggered is False
    assert verdict.score == 0.0
    assert verdict.spans == ()


@pytest.mark.parametrize("unit", [
    "eyJ", "eyJa.", "eyJhbGciOiJIUzI1NiJ9.", "sk-", "sk-a", "sk-ant-", "ghp_", "AKIA", "xoxb-1-", "glpat-",
    "agp_", "AIza", "-----BEGIN PRIVATE KEY-----\n", "-----BEGIN ", "MIIE\n", "Proc-Type: x\n", "password=",
    "password=a", "token:", "x://", "x://a:", "a:a@", "http://u:p", "a", "A1", "=", "-", ":", "\n",
])
def test_stays_linear_on_a_megabyte_of_adversarial_text(unit):
    # given: a repeated fragment that would make a backtracking pattern quadratic or worse
    text = (unit * (1_000_000 // len(unit) + 1))[:1_000_000]
    # when
    started = time.process_time()
    SecretsCheck().evaluate(text, point="input")
    # then: CPU time, so that other processes on the machine do not make it flaky
    assert time.process_time() - started < 2.0
