"""Helpers for the audit trail tests: entries written through the one writer, the append-only
triggers dropped and restored as a superuser would, raw SQL on the trail, and many cheap rows for
the export's memory test."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

from django.conf import settings
from django.db import connection

from audit_app.chain import HASHED_FIELDS, ROW_COLUMNS, entry_hash, entry_hash_of_row
from audit_app.models import AuditCheckpoint, AuditEntry, ChainHead
from audit_app.services import Actor, ChangeRef, audit_record

ENTRY_TABLE = AuditEntry._meta.db_table
CHECKPOINT_TABLE = AuditCheckpoint._meta.db_table
HEAD_TABLE = ChainHead._meta.db_table
TEST_ACTOR = Actor(name="tests", via="tests")

_triggers = importlib.import_module("audit_app.migrations.0003_chain_and_append_only_triggers")


def entry_write(
    event: str = "run.started",
    *,
    change_id: str = "",
    target: str = "",
    actor: Actor = TEST_ACTOR,
    reason: str = "",
    error: str = "",
    details: dict | None = None,
    environment: str | None = None,
) -> AuditEntry:
    """One entry through the one writer (a change's entry when ``change_id`` or ``target`` is given)."""
    change = ChangeRef(id=change_id, target=target) if change_id or target else None
    return audit_record(
        event=event,
        actor=actor,
        environment=environment or settings.FLAMINGOCK_ENVIRONMENT,
        change=change,
        reason=reason,
        error=error,
        details=details,
    )


def entries_write(count: int, **kwargs) -> list[AuditEntry]:
    return [entry_write(reason=f"entry {index}", **kwargs) for index in range(count)]


def sql(statement: str, params: list | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])


def chain_rows() -> list[tuple]:
    """Every chained entry as stored, in chain order, selected with ``ROW_COLUMNS``."""
    return list(AuditEntry.objects.exclude(seq=None).order_by("seq").values_list(*ROW_COLUMNS))


def trail_seqs() -> list[int]:
    """The seq of every chained entry, in chain order: a baseline to compare with after an action."""
    return list(AuditEntry.objects.exclude(seq=None).order_by("seq").values_list("seq", flat=True))


def trail_rows() -> list[dict]:
    """Every entry as stored, in id order: equal before and after an action that must add, change
    and remove nothing, whatever the fixtures (or the permission audit) wrote first."""
    return list(AuditEntry.objects.order_by("id").values())


def hashes_recomputed(rows: list[tuple]) -> list[str]:
    return [entry_hash_of_row(row) for row in rows]


@contextmanager
def triggers_dropped() -> Iterator[None]:
    """Drop the append-only triggers as a superuser can (the test role is one), then put them back
    exactly as the migration installs them."""
    editor = SimpleNamespace(connection=connection)
    _triggers.uninstall(None, editor)
    try:
        yield
    finally:
        _triggers.install(None, editor)


def trigger_names() -> set[str]:
    """The append-only triggers present on the trail's tables."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN (%s::regclass, %s::regclass)",
                [ENTRY_TABLE, CHECKPOINT_TABLE],
            )
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN (%s, %s)", [ENTRY_TABLE, CHECKPOINT_TABLE])
        return {name for (name,) in cursor.fetchall()}


def rows_bulk_insert(count: int, *, reason_size: int = 400) -> int:
    """Append ``count`` rows in one statement, advancing the chain head over them: cheap rows for
    measuring the export (their hashes are not real, so they do not verify). Returns the new head."""
    head = ChainHead.objects.get(id=1).seq
    details = 'CAST(\'{"k": "v"}\' AS jsonb)' if connection.vendor == "postgresql" else '\'{"k": "v"}\''
    sql(
        f"""
        INSERT INTO {ENTRY_TABLE} (seq, hash_version, prev_hash, entry_hash, event, created_at, environment, change_id, stage,
            "order", target, state, checksum, transaction_strategy, recovery_strategy, run_id, actor, actor_user_id, host, pid,
            fencing_token, duration_ms, reason, error, rollback_error, details)
        WITH RECURSIVE numbers(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM numbers WHERE n < %s)
        SELECT %s + n, 1, %s, %s, 'run.started', CURRENT_TIMESTAMP, 'bulk', 'bulk-' || n, 'main', '0001', 'app-db', '', %s, '', '',
            NULL, 'bulk-writer', NULL, 'host', 1, NULL, NULL, %s, '', '', {details}
        FROM numbers
        """,
        [count, head, "0" * 64, "f" * 64, "c" * 64, "r" * reason_size],
    )
    sql(f"UPDATE {HEAD_TABLE} SET seq = %s WHERE id = 1", [head + count])
    return head + count


def chain_rewrite(seq: int, **changes) -> None:
    """What a superuser with the triggers dropped can do to hide an edit: change entry ``seq``, then
    recompute its hash and every later link and hash, and move the chain head to the new last hash."""
    previous = AuditEntry.objects.filter(seq=seq - 1).values_list("entry_hash", flat=True).first() or "0" * 64
    for row in AuditEntry.objects.filter(seq__gte=seq).order_by("seq").values(*ROW_COLUMNS):
        if row["seq"] == seq:
            row.update(changes)
        fields = {name: row[name] for name in HASHED_FIELDS}
        digest = entry_hash(row["seq"], previous, row["created_at"], fields)
        assignments = ", ".join(f"{name} = %s" for name in changes) if row["seq"] == seq else ""
        params = [changes[name] for name in changes] if row["seq"] == seq else []
        sql(
            f"UPDATE {ENTRY_TABLE} SET {assignments + ', ' if assignments else ''}prev_hash = %s, entry_hash = %s WHERE id = %s",
            [*params, previous, digest, row["id"]],
        )
        previous = digest
    sql(f"UPDATE {HEAD_TABLE} SET entry_hash = %s WHERE id = 1", [previous])


def head_rewind(seq: int) -> None:
    """Move the chain head back to entry ``seq``, as if the entries after it had never been written."""
    entry = AuditEntry.objects.get(seq=seq)
    sql(f"UPDATE {HEAD_TABLE} SET seq = %s, entry_hash = %s, entry_id = %s WHERE id = 1", [entry.seq, entry.entry_hash, entry.pk])
