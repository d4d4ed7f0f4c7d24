"""The one writer of the audit trail, and its portable path (any database Django speaks to).

Every entry, by a person or by the system, goes through :func:`audit_record`. It is the single
place where secrets are redacted, where a run's fencing token is checked and where the change's
latest state is re-read before the entry commits, so the hash chain and signed checkpoints can be
added here without touching the engine. On PostgreSQL the entry is one statement
(``writer_postgresql``, docs/decisions.md "The audit writer's one statement"): a run of 1,000
changes takes 59 % less time than through the portable path.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.db import IntegrityError, connections, router, transaction
from django.db.models import F
from django.utils import timezone

from audit_app.chain import GENESIS_HASH, VERSION_FIELDS, chain_version, entry_hash, normalise_details
from audit_app.models import APPLIED_STATES, AuditEntry, ChainHead, ChangeState, ChangeStateName, MemberChangeState
from audit_app.redaction import redact, redact_data
from audit_app.subjects import subject_write
from audit_app.types import HOSTNAME, UNCHECKED, Actor, ChangeRef, Fence, FenceRefused, HashMismatch, StateMoved, TrailClosed
from audit_app.writer_postgresql import HEAD_CREATE_POSTGRESQL, write_postgres


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
    before_commit: Callable[[], None] | None = None,
    member: str | None = None,
) -> AuditEntry:
    """Append one entry, atomically with the change-state projection.

    When called inside a larger transaction (the shared-transaction strategy) these are its last
    statements: the fence check, the state re-read, the insert and the projection update.
    ``expected_entry_id`` is the latest entry of the change the caller decided on (``None`` for no
    entry); if another writer moved the change meanwhile, :class:`StateMoved` rolls it all back.
    ``counts_as_apply`` is false for an applied state that restores, rather than makes, an apply
    (a failed undo of a marker change): the apply generation keying marker rows stays the same.

    ``before_commit`` says that the entry ends the caller's atomic block (nothing after it): the
    function is called when the transaction is about to commit. On PostgreSQL, when that block is the
    outermost one, the writer sends the statement and ``COMMIT`` in one round trip and the block finds
    nothing left to commit; otherwise the entry is written, the function called, and the block ends
    as usual.

    ``member`` names the member of a target group the entry is about (fleets): the entry is then
    hashed in chain version 2, and its change's state is re-read and projected per (member, change)
    (``MemberChangeState``). Without one (``None`` or empty) it is version 1, as before.
    """
    using = using or router.db_for_write(AuditEntry)
    connection = connections[using]
    postgres = connection.vendor == "postgresql"
    check_state = change is not None and expected_entry_id is not UNCHECKED
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
        duration_ms=0.0 if duration_ms == 0 else duration_ms,  # -0.0 reads back as 0.0
        reason=redact(reason),
        error=redact(error),
        rollback_error=redact(rollback_error),
        details=normalise_details(redact_data({**(details or {}), **({"os_user": actor.os_user} if actor.os_user else {})})),
        member=member or None,
    )
    applied = (state in APPLIED_STATES if counts_as_apply is None else counts_as_apply) if state else False
    accepts_checksum = not state and change.id and event == "change.checksum_accepted"
    if postgres and not accepts_checksum and connection.get_autocommit() and not connection.in_atomic_block:
        # An entry of its own: the writer's one statement is its own transaction (autocommit), one
        # round trip instead of BEGIN, the statement and COMMIT. It writes nothing when refused.
        write_postgres(
            entry, fence=fence, expected=expected_entry_id if check_state else UNCHECKED, project=bool(state), applied=applied, using=using
        )
        return entry
    # The statement and COMMIT in one round trip only when the caller's block is the outermost one
    # (not inside a larger transaction, such as a test's): only then does committing end it.
    with_commit = postgres and not accepts_checksum and before_commit is not None and connection.in_atomic_block and not connection.savepoint_ids
    # No savepoint: inside a caller's transaction, a refusal must roll all of it back.
    with transaction.atomic(using=using, savepoint=False):
        if postgres:
            write_postgres(
                entry,
                fence=fence,
                expected=expected_entry_id if check_state else UNCHECKED,
                project=bool(state),
                applied=applied,
                using=using,
                before_commit=before_commit if with_commit else None,
            )
        else:
            if fence is not None:
                fence.check(using=using)
            if check_state:
                states = _states_of(entry.member).using(using)
                current = states.select_for_update().filter(change_id=change.id).values_list("entry_id", flat=True).first()
                if current != expected_entry_id:
                    raise StateMoved(f"Change {change.id} moved (latest entry {current}, expected {expected_entry_id}).")
            _chain(entry, using=using)
            try:
                entry.save(using=using)
            except IntegrityError as error:
                # Under the head lock the writer's own rows end at the head: a row already at
                # head + 1 was inserted around it, and the trail fails closed (free on the normal path).
                if not str(error).startswith(f"UNIQUE constraint failed: {AuditEntry._meta.db_table}."):
                    raise
                raise TrailClosed(entry.seq, entry.event) from error
            _advance_head(entry, using=using)
            subject_write(entry, using=using)
            if state:
                _project_state(entry, applied=applied, using=using)
        if accepts_checksum:
            _states_of(entry.member).using(using).filter(change_id=change.id).update(checksum=change.checksum, entry=entry)
        if before_commit is not None and not with_commit:
            before_commit()
    return entry


def _chain(entry: AuditEntry, *, using: str) -> None:
    """SQLite: link the entry to the chain head: sequence, previous hash, time, own hash. (PostgreSQL
    does all of it in the writer's one statement, :func:`_write_postgres`.)

    The IMMEDIATE transaction holds the database's only write lock until the caller commits, so
    writers never fork the chain.
    """
    connection = connections[using]
    with connection.cursor() as cursor:
        row = _head_row(cursor)
        if row is None:
            cursor.execute(_HEAD_CREATE[connection.vendor], [GENESIS_HASH])
            row = _head_row(cursor)
    seq, previous, now = row
    entry.seq = seq + 1
    entry.prev_hash = previous
    entry.hash_version = chain_version(entry.member)
    entry.created_at = now if now is not None else timezone.now()
    fields = {name: getattr(entry, name) for name in VERSION_FIELDS[entry.hash_version]}
    entry.entry_hash = entry_hash(entry.seq, entry.prev_hash, entry.created_at, fields, version=entry.hash_version)


_HEAD_CREATE = {
    "postgresql": HEAD_CREATE_POSTGRESQL,
    "sqlite": f"INSERT OR IGNORE INTO {ChainHead._meta.db_table} (id, seq, entry_hash) VALUES (1, 0, %s)",
}


def _head_row(cursor):
    cursor.execute(f"SELECT seq, entry_hash, NULL FROM {ChainHead._meta.db_table} WHERE id = 1")
    return cursor.fetchone()


def _advance_head(entry: AuditEntry, *, using: str) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"UPDATE {ChainHead._meta.db_table} SET seq = %s, entry_hash = %s, entry_id = %s WHERE id = 1",
            [entry.seq, entry.entry_hash, entry.pk],
        )


def _states_of(member: str | None):
    """The state projection an entry reads and keeps: the member's, or the single target's."""
    return MemberChangeState.objects.filter(member=member) if member else ChangeState.objects.all()


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
    states = _states_of(entry.member).using(using)
    updated = states.filter(change_id=entry.change_id).update(applied_count=F("applied_count") + applied, **fields)
    if not updated:
        if entry.member:
            MemberChangeState.objects.using(using).create(member=entry.member, change_id=entry.change_id, applied_count=applied, **fields)
        else:
            ChangeState.objects.using(using).create(change_id=entry.change_id, applied_count=applied, **fields)


def change_states(*, using: str | None = None) -> dict[str, ChangeState]:
    """The latest state of every change that has one, in one query."""
    using = using or router.db_for_read(ChangeState)
    return {row.change_id: row for row in ChangeState.objects.using(using).all()}


def member_change_states(*, member: str, using: str | None = None) -> dict[str, MemberChangeState]:
    """The latest state of every change on ``member`` that has one, in one query (fleets)."""
    using = using or router.db_for_read(MemberChangeState)
    return {row.change_id: row for row in MemberChangeState.objects.using(using).filter(member=member)}


__all__ = [
    "HOSTNAME",
    "Actor",
    "ChangeRef",
    "ChangeStateName",
    "Fence",
    "FenceRefused",
    "HashMismatch",
    "StateMoved",
    "TrailClosed",
    "audit_record",
    "change_states",
    "member_change_states",
]
