"""Secrets never enter the trail: the writer passes every text through :func:`redact`."""

import os
import re
from collections.abc import Iterable

from django.conf import settings

MASK = "********"
# scheme://user:password@host -> scheme://user:********@host
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")
# password=..., token: ..., api_key=... in traces and DSNs
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key|authorization)\b\s*[=:]\s*)(?P<quote>['\"]?)(?P<value>[^\s'\",;&]+)",
    re.IGNORECASE,
)
_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value (read from the environment by a target system) so it is masked."""
    if value and len(value) >= 4:
        _registered.add(value)


def secret_values() -> Iterable[str]:
    yield from _registered
    for name in getattr(settings, "FLAMINGOCK_SECRET_ENV_VARS", []):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            yield value


def redact(text: str) -> str:
    if not text:
        return text
    for value in sorted(set(secret_values()), key=len, reverse=True):
        text = text.replace(value, MASK)
    if ":" not in text and "=" not in text:
        return text  # both patterns need one of them: most texts (ids, labels) end here
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{m['quote']}{MASK}", text)


def redact_data(value):
    """Redact every string inside a JSON-like structure."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(item) for item in value]
    return value


class RedactingFilter:
    """A logging filter: the same redaction for log records as for the trail."""

    def filter(self, record) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's business
            return True
        redacted = redact(message)
        if record.exc_info and not record.exc_text:
            import logging

            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        return True
