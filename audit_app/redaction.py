"""Secrets never enter the trail: the writer passes every text through :func:`redact`.

Three kinds of secret are masked wherever they appear:

* the values settings name, known to every process (web, worker, command line) from its settings
  alone, whether or not it ever built a target system: the credentials of every configured target
  system (``FLAMINGOCK_TARGET_SYSTEMS``: the value of each ``*_env`` variable that holds a token,
  secret, password or key, and the password inside each URL or DSN), the variables listed in
  ``FLAMINGOCK_SECRET_ENV_VARS``, and Django's own (``SECRET_KEY``, database and mail passwords,
  the broker's URL);
* values a target system registers when it reads one (:func:`register_secret`);
* anything shaped like a credential: ``scheme://user:password@host`` and ``password=...``,
  ``token: ...``, ``api_key=...``.

What a person types with no recognisable shape, and that no setting names, cannot be recognised:
docs/compliance.md, "Redaction", says what to do then.
"""

import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

MASK = "********"
# scheme://user:password@host -> scheme://user:********@host
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")
# password=..., token: ..., api_key=... in traces and DSNs
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key|authorization)\b\s*[=:]\s*)(?P<quote>['\"]?)(?P<value>[^\s'\",;&]+)",
    re.IGNORECASE,
)
#: A configuration key (or a URL's query parameter) whose whole value is a secret.
_SECRET_NAME = re.compile(r"token|secret|password|passw|pwd|api[_-]?key|private[_-]?key|credential", re.IGNORECASE)
#: A key=value DSN's password (libpq's ``host=db password=...``).
_DSN_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*(?P<quote>'?)(?P<value>(?:\\.|[^'\s])+)(?P=quote)", re.IGNORECASE)
#: Variables the product itself reads that always hold secrets.
BUILT_IN_SECRET_ENV_VARS = ("FLAMINGOCK_TOKEN", "FLAMINGOCK_WEBHOOK_SECRET", "FLAMINGOCK_AUDIT_SIGNING_KEY")
#: Django settings holding a secret, or a URL that may carry one.
_SECRET_SETTINGS = ("SECRET_KEY", "EMAIL_HOST_PASSWORD")
_URL_SETTINGS = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL")
#: The settings the configured secrets are read from: a change to one (``override_settings`` in a
#: test) forgets what was read.
_WATCHED = frozenset({"FLAMINGOCK_TARGET_SYSTEMS", "FLAMINGOCK_SECRET_ENV_VARS", "DATABASES", "CACHES", *_SECRET_SETTINGS, *_URL_SETTINGS})
#: Shorter values are not masked: they would mask ordinary words.
MIN_SECRET_LENGTH = 4
_registered: set[str] = set()
#: Bumped by each new registered secret: the key of the ordered list's cache.
_registered_version = 0


def register_secret(value: str | None) -> None:
    """Remember a secret value (read from the environment by a target system) so it is masked."""
    global _registered_version
    if value and len(value) >= MIN_SECRET_LENGTH and value not in _registered:
        _registered.add(value)
        _registered_version += 1


def url_secrets(value: str) -> set[str]:
    """The secrets inside a URL or DSN: its password (as written and decoded), the values of
    query parameters named like a secret, and a key=value DSN's ``password``."""
    found: set[str] = set()
    if "://" in value:
        try:
            parts = urlsplit(value.strip())
            password = parts.password
        except ValueError:
            parts, password = None, None
        if password:
            found |= {password, unquote(password)}
        if parts is not None and parts.query:
            found |= {item for name, item in parse_qsl(parts.query) if _SECRET_NAME.search(name)}
    for match in _DSN_PASSWORD.finditer(value):
        found.add(match["value"])
    return found


def _config_secrets(config: Mapping[str, Any]) -> set[str]:
    """The secrets of one target system's configuration: the values of the environment variables
    it names (``<key>_env``) and its literal values, each read as a whole secret when its key is
    named like one, otherwise for the password of a URL."""
    found: set[str] = set()
    for key, value in config.items():
        if not isinstance(key, str):
            continue
        if key.endswith("_env") and isinstance(value, str) and value:
            key, value = key[: -len("_env")], os.environ.get(value, "")
        if isinstance(value, Mapping):
            found |= _config_secrets(value)
        elif isinstance(value, str) and value:
            found |= {value} if _SECRET_NAME.search(key) else url_secrets(value)
    return found


def _from_settings() -> tuple[frozenset[str], frozenset[str]]:
    """(environment variables whose whole value is secret, literal secrets of settings)."""
    names = set(BUILT_IN_SECRET_ENV_VARS) | set(getattr(settings, "FLAMINGOCK_SECRET_ENV_VARS", None) or ())
    literal: set[str] = set()
    for name in _SECRET_SETTINGS:
        value = getattr(settings, name, "")
        if isinstance(value, str) and value:
            literal.add(value)
    for name in _URL_SETTINGS:
        value = getattr(settings, name, "")
        if isinstance(value, str) and value:
            literal |= url_secrets(value)
    for database in (getattr(settings, "DATABASES", None) or {}).values():
        literal.add(str(database.get("PASSWORD") or ""))
    for cache in (getattr(settings, "CACHES", None) or {}).values():
        locations = cache.get("LOCATION") or ""
        for location in [locations] if isinstance(locations, str) else locations:
            literal |= url_secrets(str(location))
    return frozenset(names), frozenset(literal)


@functools.cache
def _settings_read() -> tuple[frozenset[str], frozenset[str], tuple[Mapping[str, Any], ...]]:
    """What settings name: variables whose whole value is secret, literal secrets, and the target
    systems' configurations."""
    names, literal = _from_settings()
    targets = getattr(settings, "FLAMINGOCK_TARGET_SYSTEMS", None) or {}
    return names, literal, tuple(config for config in targets.values() if isinstance(config, Mapping))


@functools.cache
def _configured() -> frozenset[str]:
    """The configured secrets, read once per process from the settings and the environment (and
    again after a setting changes, or :func:`secrets_forget`)."""
    names, literal, targets = _settings_read()
    found = set(literal) | {os.environ.get(name, "") for name in names}
    for config in targets:
        found |= _config_secrets(config)
    return frozenset(value for value in found if len(value) >= MIN_SECRET_LENGTH)


@receiver(setting_changed)
def _forget_settings(*, setting: str, **kwargs) -> None:
    if setting in _WATCHED:
        secrets_forget()


def secrets_forget() -> None:
    """Read the configured secrets again on the next redaction: after a change of the environment
    at run time (a test's), which no signal announces. A change of settings needs no call."""
    _settings_read.cache_clear()
    _configured.cache_clear()


def configured_secrets() -> frozenset[str]:
    """The secrets settings name, as this process's environment holds them."""
    return _configured()


def secret_values() -> Iterable[str]:
    yield from _registered
    yield from configured_secrets()


@functools.lru_cache(maxsize=4)
def _ordered(version: int, configured: frozenset[str]) -> tuple[str, ...]:
    # Longest first: a secret that contains another is masked whole.
    return tuple(sorted(_registered | configured, key=len, reverse=True))


def redact(text: str) -> str:
    if not text:
        return text
    for value in _ordered(_registered_version, configured_secrets()):
        if value in text:
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
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        return True
