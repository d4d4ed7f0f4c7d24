"""Entries whose every column holds what a CSV or JSON writer can get wrong: separators, quotes, line
breaks (a lone carriage return too), control characters, non-ASCII text, floats that print in
exponent form or without a fraction, and details whose keys sort differently by length and by
code point. Written through the one writer, so their hashes are real."""

from __future__ import annotations

import uuid

from audit_app.models import AuditEntry
from audit_app.services import Actor, ChangeRef, audit_record

AWKWARD_TEXT = 'a, "quoted" b\\c\nline 2\r\nline 3\rlone CR\ttab \x01 é ü 中 \u2028 end'


def awkward_entries_write(environment: str = "dev") -> list[AuditEntry]:
    written = []
    cases = [
        # (change fields, actor, duration, details)
        (ChangeRef(id="c,comma", stage='st"age', order="0001", target="t\rcr"), Actor(name="Doe, John", user_id=7, host='h"ost', pid=1), 100.0, {}),
        (ChangeRef(id="c-2", checksum="é" * 3, transaction_strategy="line\nbreak"), Actor(name="plain", host="h", pid=2), 1e-05, {"b": 1, "aa": 2}),
        (ChangeRef(id="c-3", recovery_strategy="MANUAL_INTERVENTION"), Actor(name="ünï", pid=3), 1e16, {"z": None, "é": [1.0, 2.5, 2**70]}),
        (ChangeRef(id="c-4"), Actor(name="svc", pid=4), 1234567890123456.8, {"nested": {"k": 'v "q", \\ \n'}, "list": []}),
        (ChangeRef(id="c-5"), Actor(name="svc", pid=5), None, {"f": 1e-07, "neg": -1.5, "t": True, "empty": ""}),
        (ChangeRef(id="c-6"), Actor(name="svc", pid=6), 0.5, {"s": AWKWARD_TEXT}),
        (ChangeRef(id="c-7"), Actor(name="svc", pid=7), 0.1, None),
    ]
    for index, (change, actor, duration, details) in enumerate(cases):
        written.append(
            audit_record(
                event="change.failed" if index % 2 else "change.applied",
                actor=actor,
                environment=environment,
                change=change,
                state="FAILED" if index % 2 else "APPLIED",
                run_id=uuid.UUID(int=index + 1) if index % 3 else None,
                duration_ms=duration,
                reason=AWKWARD_TEXT if index % 2 else f"reason {index}, with a comma",
                error="Traceback:\r\n  boom\r\n" if index % 2 else "",
                rollback_error="lone\rreturn" if index == 3 else "",
                details=details,
            )
        )
    return written
