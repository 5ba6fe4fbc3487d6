"""No secrets in logs: a logging filter that redacts credentials from every record, and an exception reporter
filter that keeps them out of Django's error reports.

What is redacted: our keys (``agp_<lookup id>_<secret>`` and ``agpop_...``: the lookup id stays, to tell keys
apart, the secret goes), JWTs (stream tokens), ``Bearer``/``Basic`` credentials, values of fields named like
secrets (``password=``, ``"token": ...``, ``access_token=``, ``api_key``...), passwords in URLs, providers' key
formats (OpenAI, Stripe, GitHub, Slack, AWS) and PEM private keys.

Two layers: ``configure_logging`` (Django's ``LOGGING_CONFIG``) makes every log record of the process redacted
as it is created, so handlers that libraries add on their own (litellm's writes straight to stdout) redact too;
and ``SecretRedactingFilter`` on the handlers of ``settings.LOGGING``, for a record made before that.
"""

from __future__ import annotations

import logging
import logging.config
import re
from typing import Any

from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

REDACTED = "[REDACTED]"

_SECRET_NAMES = (r"password|passwd|pwd|passphrase|secret|client_secret|api[_-]?key|apikey|access[_-]?token|"
                 r"refresh[_-]?token|id[_-]?token|token|auth[_-]?token|private[_-]?key|pepper|secrets_key|"
                 r"session[_-]?id|csrftoken|x-api-key")

_RULES: list[tuple[tuple[str, ...], re.Pattern[str], str]] = [
    # PEM private keys, whole
    (("private key",), re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
     "-----BEGIN PRIVATE KEY-----" + REDACTED + "-----END PRIVATE KEY-----"),
    # our keys: the lookup id identifies the key and is not secret; the secret goes
    (("agp",), re.compile(r"\b(agp(?:op)?_[0-9a-f]{12}_)[A-Za-z0-9]+"), r"\1" + REDACTED),
    (("agp",), re.compile(r"\b(agp(?:op)?_)(?![0-9a-f]{12}_\[REDACTED\])[A-Za-z0-9_\-]{4,}"), r"\1" + REDACTED),
    # JWTs (stream tokens, anyone's id or access tokens)
    (("eyj",), re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"), REDACTED),
    # Authorization header credentials
    (("bearer", "basic", "digest"), re.compile(r"\b([Bb]earer|BEARER|Basic|Digest)(\s+)(?!\[REDACTED\]|agp)(?=[A-Za-z._~+/=\-]*\d)"
                r"[A-Za-z0-9._~+/=\-]{12,}"), r"\1\2" + REDACTED),
    # passwords in URLs: scheme://user:password@host
    (("://",), re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@'\"]+:)[^\s@/'\"]+@"), r"\1" + REDACTED + "@"),
    # providers' key formats
    (("sk-",), re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}"), REDACTED),
    (("sk_", "rk_", "pk_"), re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"), REDACTED),
    (("whsec_",), re.compile(r"\bwhsec_[A-Za-z0-9+/=]{10,}"), REDACTED),
    (("gh",), re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), REDACTED),
    (("xox",), re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), REDACTED),
    (("akia", "asia"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
    # name=value, name: value, "name": "value" for names that say secret
    (("pass", "pwd", "secret", "key", "token", "pepper", "session", "csrf"), re.compile(r"(?i)([\"']?\b(?:" + _SECRET_NAMES + r")\b[\"']?\s*[:=]\s*)([\"']?)(?!\[REDACTED\])"
                r"[^\s\"'&,;}\]]+"), r"\1\2" + REDACTED),
]
# Plain substrings (of the lowercased text) that every rule's match contains: a line with none of them is
# returned at once (a case-insensitive regex alternation of these took ~100 µs a line; this takes ~3 µs).
_HINTS = ("agp", "eyj", "bearer", "basic", "digest", "://", "sk-", "sk_", "rk_", "pk_", "whsec_", "gh", "xox",
          "akia", "asia", "private key", "pass", "pwd", "secret", "key", "token", "pepper", "session", "csrf")


def redact(text: str) -> str:
    """The text with every credential it holds replaced by [REDACTED]."""
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS):  # most log lines: nothing to do
        return text
    for rule_hints, pattern, replacement in _RULES:
        if any(hint in lowered for hint in rule_hints):
            text = pattern.sub(replacement, text)
    return text


_FORMATTER = logging.Formatter()


def redact_record(record: logging.LogRecord) -> None:
    """Redact the record's message (after its arguments are merged in), its traceback and its stack, in place."""
    if getattr(record, "secrets_redacted", False):
        return
    record.secrets_redacted = True
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: leave it to the handler's own error path
        return
    redacted = redact(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    if record.exc_info and not record.exc_text:
        record.exc_text = _FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class SecretRedactingFilter(logging.Filter):
    """Redacts every record that reaches the handler it is on (see ``redact_record``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def install_record_redaction() -> None:
    """Make every log record of the process redacted when it is created, whatever handler gets it."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_secrets", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    factory.redacts_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def configure_logging(logging_settings: dict[str, Any]) -> None:
    """Django's LOGGING_CONFIG: settings.LOGGING, then record redaction for the whole process."""
    logging.config.dictConfig(logging_settings)
    install_record_redaction()


class SecretSafeExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's error reports (500 logs by mail or a reporter) without credentials: besides the settings and
    headers Django already hides (names with AUTH, TOKEN, KEY, SECRET, PASS...), the query string, GET and POST
    values, and frames' local variables go through ``redact``."""

    def get_safe_request_meta(self, request: Any) -> dict[str, Any]:
        return {name: _redacted(value) for name, value in super().get_safe_request_meta(request).items()}

    def get_post_parameters(self, request: Any) -> Any:
        parameters = super().get_post_parameters(request)
        if not hasattr(parameters, "copy"):
            return parameters
        cleansed = parameters.copy()
        for name in list(cleansed.keys()):
            if self.hidden_settings.search(name):
                cleansed[name] = self.cleansed_substitute
            else:
                cleansed.setlist(name, [_redacted(v) for v in cleansed.getlist(name)]) \
                    if hasattr(cleansed, "setlist") else cleansed.__setitem__(name, _redacted(cleansed[name]))
        return cleansed

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> list[tuple[str, Any]]:
        return [(name, value if value == self.cleansed_substitute else _redacted_repr(value))
                for name, value in super().get_traceback_frame_variables(request, tb_frame)]


def _redacted(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _redacted_repr(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool, type(None))):
        return value
    try:
        text = repr(value)
    except Exception:
        return value
    return RedactedRepr(redact(text)) if redact(text) != text else value


class RedactedRepr:
    """A frame variable shown by its redacted repr."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class SecretSafeExceptionReporter(ExceptionReporter):
    """Django's error report (the 500 mail, a reporter's text) passed through ``redact`` as a whole: the request's
    URL with its query string is printed outside the filter's reach."""

    def get_traceback_html(self) -> str:
        return redact(super().get_traceback_html())

    def get_traceback_text(self) -> str:
        return redact(super().get_traceback_text())
