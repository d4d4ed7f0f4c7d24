"""Logs and error reports that carry no secret (docs/operators.md, "Logs and errors").

Both pass every string through :func:`audit_app.redaction.redact`, the redaction of the audit trail:
the JSON log formatter (``FLAMINGOCK_LOG_FORMAT=json``), which also writes a record's extra fields
and its traceback, and Sentry's ``before_send`` (``SENTRY_DSN``).
"""

from __future__ import annotations

from pythonjsonlogger.json import JsonFormatter

from audit_app.redaction import redact


def scrub(value):
    """Every string inside ``value`` (dicts, lists, tuples) redacted; keys are kept."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value


class RedactingJsonFormatter(JsonFormatter):
    """python-json-logger's formatter, redacting what the RedactingFilter cannot reach: extra fields
    (Celery passes a failed task's arguments as ``data``) and a traceback it formats again."""

    def process_log_record(self, log_data):
        return scrub(super().process_log_record(log_data))

    def jsonify_log_record(self, log_data) -> str:
        # Values the JSON encoder turns into strings itself (objects, exceptions) are redacted here.
        return redact(super().jsonify_log_record(log_data))


def sentry_before_send(event, hint):
    """Sentry's ``before_send``: the event with every string redacted (messages, exception values,
    local variables, breadcrumbs, request data)."""
    return scrub(event)
