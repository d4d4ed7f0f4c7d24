"""The one writer of the audit trail.

Every entry, by a person or by the system, goes through :func:`audit_record`. It is the single
place where secrets are redacted, where a run's fencing token is checked and where the change's
latest state is re-read before the entry commits, so the hash chain and signed checkpoints can be
added here without touching the engine.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.db import connections, router, transaction
from django.db.models import F
from django.utils import timezone

from .chain import CHAIN_VERSION, GENESIS_HASH, HASHED_FIELDS, entry_hash, normalise_details
from .models import APPLIED_STATES, AuditEntry, ChainHead, ChangeState, ChangeStateName
from .redaction import redact, redact_data

#: FLAMINGOCK_HOSTNAME names the host in the trail where the OS name is not telling (containers).
HOSTNAME = os.environ.get("FLAMINGOCK_HOSTNAME") or socket.gethostname()


class FenceRefused(Exception):
    """The run's fencing token is no longer the newest: another holder took the lock."""


class StateMoved(Exception):
    """The change's latest state is not the one the writer's decision was based on."""


class Fence(Protocol):
    token: int

    def check(self, *, using: str) -> None:
        """Raise :class:`FenceRefused` unless ``token`` is still the newest; lock it until commit."""


@dataclass(frozen=True)
class Actor:
    """Who acts: a proven user, the local operator, or a service identity."""

    name: str
    user_id: int | None = None
    via: str = "cli"
    #: The operating-system user behind a CLI command, recorded beside the proven identity.
    os_user: str = ""
    host: str = HOSTNAME
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True)
class ChangeRef:
    """The identifying fields of a change recorded with each of its entries."""

    id: str
    stage: str = ""
    order: str = ""
    target: str = ""
    checksum: str = ""
    transaction_strategy: str = ""
    recovery_strategy: str = ""


UNCHECKED: Any = object()


def audit_record(
    *,
    event: str,
    actor: Actor,
    environment: str,
    change: ChangeRef | None = None,
    state: str = "",
    run_id: uuid.UUID | None = None,
    fence: Fence | None = None,
    expected_entry_id: int | None = UNCHECKED,
    duration_ms: float | None = None,
    reason: str = "",
    error: str = "",
    rollback_error: str = "",
    details: dict | None = None,
    counts_as_apply: bool | None = None,
    using: str | None = None,
) -> AuditEntry:
    """Append one entry, atomically with the change-state projection.

    When called inside a larger transaction (the shared-transaction strategy) these are its last
    statements: the fence check, the state re-read, the insert and the projection update.
    ``expected_entry_id`` is the latest entry of the change the caller decided on (``None`` for no
    entry); if another writer moved the change meanwhile, :class:`StateMoved` rolls it all back.
    ``counts_as_apply`` is false for an applied state that restores, rather than makes, an apply
    (a failed undo of a marker change): the apply generation keying marker rows stays the same.
    """
    using = using or router.db_for_write(AuditEntry)
    postgres = connections[using].vendor == "postgresql"
    # No savepoint: inside a caller's transaction, a refusal must roll all of it back.
    with transaction.atomic(using=using, savepoint=False):
        check_state = change is not None and expected_entry_id is not UNCHECKED
        head = None
        if postgres:
            # One round trip: fence check, state re-read and chain-head lock (see _prelude).
            fenced, current, head = _prelude(using, fence, change.id if check_state else None)
            if not fenced:
                fence.refused(using=using)
        else:
            if fence is not None:
                fence.check(using=using)
            if check_state:
                current = ChangeState.objects.using(using).select_for_update().filter(change_id=change.id).values_list("entry_id", flat=True).first()
        if check_state and current != expected_entry_id:
            raise StateMoved(f"Change {change.id} moved (latest entry {current}, expected {expected_entry_id}).")
        change = change or ChangeRef(id="")
        entry = AuditEntry(
            event=event,
            environment=environment,
            change_id=change.id,
            stage=change.stage,
            order=change.order,
            target=change.target,
            state=state,
            checksum=change.checksum,
            transaction_strategy=change.transaction_strategy,
            recovery_strategy=change.recovery_strategy,
            run_id=uuid.UUID(str(run_id)) if run_id is not None else None,
            actor=actor.name,
            actor_user_id=actor.user_id,
            host=actor.host,
            pid=actor.pid,
            fencing_token=fence.token if fence is not None else None,
            duration_ms=duration_ms,
            reason=redact(reason),
            error=redact(error),
            rollback_error=redact(rollback_error),
            details=normalise_details(redact_data({**(details or {}), **({"os_user": actor.os_user} if actor.os_user else {})})),
        )
        _chain(entry, using=using, head=head)
        applied = (state in APPLIED_STATES if counts_as_apply is None else counts_as_apply) if state else False
        if postgres:
            _append_postgres(entry, project=bool(state), applied=applied, using=using)
        else:
            entry.save(using=using)
            _advance_head(entry, using=using)
            if state:
                _project_state(entry, applied=applied, using=using)
        if not state and change.id and event == "change.checksum_accepted":
            ChangeState.objects.using(using).filter(change_id=change.id).update(checksum=change.checksum, entry=entry)
    return entry


def _prelude(using: str, fence: Fence | None, change_id: str | None) -> tuple[bool, int | None, tuple]:
    """PostgreSQL: the fence check, the change's state re-read and the chain-head lock with the
    database clock, in one statement. Returns (fenced, latest entry id, head row)."""
    params: list = []
    prefix, fenced = "", "1"
    if fence is not None:
        fence_sql, fence_params = fence.statement(using=using)
        prefix, fenced = f"WITH fence AS ({fence_sql} RETURNING 1) ", "(SELECT count(*) FROM fence)"
        params += fence_params
    state = "NULL"
    if change_id is not None:
        state = f"(SELECT entry_id FROM {ChangeState._meta.db_table} WHERE change_id = %s FOR UPDATE)"
        params.append(change_id)
    sql = f"{prefix}SELECT {fenced}, {state}, h.seq, h.entry_hash, clock_timestamp() FROM {ChainHead._meta.db_table} h WHERE h.id = 1 FOR UPDATE OF h"
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        if row is None:  # no chain head yet (created by the migration; this is the fallback)
            cursor.execute(_HEAD_CREATE["postgresql"], [GENESIS_HASH])
            cursor.execute(sql, params)
            row = cursor.fetchone()
    return bool(row[0]), row[1], tuple(row[2:])


def _append_postgres(entry: AuditEntry, *, project: bool, applied: bool, using: str) -> None:
    """PostgreSQL: insert the entry, advance the head and project the state in one statement."""
    connection = connections[using]
    fields = [field for field in AuditEntry._meta.concrete_fields if not field.primary_key]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    values = [field.get_db_prep_save(getattr(entry, field.attname), connection) for field in fields]
    head = ChainHead._meta.db_table
    sql = (
        f"WITH e AS (INSERT INTO {AuditEntry._meta.db_table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))}) RETURNING id), "
        f"h AS (UPDATE {head} SET seq = %s, entry_hash = %s, entry_id = (SELECT id FROM e) WHERE id = 1)"
    )
    params = [*values, entry.seq, entry.entry_hash]
    if project:
        table = ChangeState._meta.db_table
        sql += (
            f', s AS (INSERT INTO {table} (change_id, state, checksum, entry_id, run_id, stage, "order", target, applied_count, updated_at) '
            f"SELECT %s, %s, %s, e.id, %s, %s, %s, %s, %s, clock_timestamp() FROM e "
            f"ON CONFLICT (change_id) DO UPDATE SET state = EXCLUDED.state, checksum = EXCLUDED.checksum, entry_id = EXCLUDED.entry_id, "
            f'run_id = EXCLUDED.run_id, stage = EXCLUDED.stage, "order" = EXCLUDED."order", target = EXCLUDED.target, '
            f"applied_count = {table}.applied_count + EXCLUDED.applied_count, updated_at = EXCLUDED.updated_at)"
        )
        params += [entry.change_id, entry.state, entry.checksum, entry.run_id, entry.stage, entry.order, entry.target, int(applied)]
    with connection.cursor() as cursor:
        cursor.execute(sql + " SELECT id FROM e", params)
        entry.pk = cursor.fetchone()[0]
    entry._state.adding = False
    entry._state.db = using


def _chain(entry: AuditEntry, *, using: str, head: tuple | None = None) -> None:
    """Lock the chain head and link the entry to it: sequence, previous hash, time, own hash.

    The head stays locked until the caller's transaction commits, so writers never fork the
    chain; it is taken last, after any fence check and state re-read, to be held only briefly.
    """
    row = head
    if row is None:
        connection = connections[using]
        with connection.cursor() as cursor:
            row = _head_row(cursor, connection.vendor)
            if row is None:
                cursor.execute(_HEAD_CREATE[connection.vendor], [GENESIS_HASH])
                row = _head_row(cursor, connection.vendor)
    seq, previous, now = row
    entry.seq = seq + 1
    entry.prev_hash = previous
    entry.hash_version = CHAIN_VERSION
    entry.created_at = now if now is not None else timezone.now()
    fields = {name: getattr(entry, name) for name in HASHED_FIELDS}
    entry.entry_hash = entry_hash(entry.seq, entry.prev_hash, entry.created_at, fields)


_HEAD_CREATE = {
    "postgresql": f"INSERT INTO {ChainHead._meta.db_table} (id, seq, entry_hash) VALUES (1, 0, %s) ON CONFLICT (id) DO NOTHING",
    "sqlite": f"INSERT OR IGNORE INTO {ChainHead._meta.db_table} (id, seq, entry_hash) VALUES (1, 0, %s)",
}


def _head_row(cursor, vendor: str):
    table = ChainHead._meta.db_table
    if vendor == "postgresql":
        # The database clock, read under the head lock: timestamps follow the chain's order.
        cursor.execute(f"SELECT seq, entry_hash, clock_timestamp() FROM {table} WHERE id = 1 FOR UPDATE")
        return cursor.fetchone()
    # SQLite: the IMMEDIATE transaction already holds the only write lock.
    cursor.execute(f"SELECT seq, entry_hash, NULL FROM {table} WHERE id = 1")
    return cursor.fetchone()


def _advance_head(entry: AuditEntry, *, using: str) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"UPDATE {ChainHead._meta.db_table} SET seq = %s, entry_hash = %s, entry_id = %s WHERE id = 1",
            [entry.seq, entry.entry_hash, entry.pk],
        )


def _project_state(entry: AuditEntry, *, applied: bool, using: str) -> None:
    applied = int(applied)
    fields = dict(
        state=entry.state,
        checksum=entry.checksum,
        entry=entry,
        run_id=entry.run_id,
        stage=entry.stage,
        order=entry.order,
        target=entry.target,
    )
    updated = ChangeState.objects.using(using).filter(change_id=entry.change_id).update(applied_count=F("applied_count") + applied, **fields)
    if not updated:
        ChangeState.objects.using(using).create(change_id=entry.change_id, applied_count=applied, **fields)


def change_states(*, using: str | None = None) -> dict[str, ChangeState]:
    """The latest state of every change that has one, in one query."""
    using = using or router.db_for_read(ChangeState)
    return {row.change_id: row for row in ChangeState.objects.using(using).all()}


__all__ = [
    "Actor",
    "ChangeRef",
    "ChangeStateName",
    "Fence",
    "FenceRefused",
    "StateMoved",
    "audit_record",
    "change_states",
]
