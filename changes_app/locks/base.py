"""The pipeline lock: a lease with heartbeat, and a fencing token from the audit database.

Backends honour one contract (:class:`LockBackend`): the database lease lock of the embedded
default (``locks.database``) and Redis (``locks.redis``), chosen by ``locks.backends``. Whatever the backend, the fencing token is issued by the audit database (on
PostgreSQL by a sequence of the lock's own, without a commit; elsewhere by the :class:`Fence` row)
and every fenced write checks there that it is still the newest (:meth:`Lease.check`), so a holder
that lost its lease cannot write, whatever the lock store says.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from django.db import IntegrityError, ProgrammingError, connections, router, transaction
from django.db.models import F
from django.utils import timezone

from audit_app.services import Actor, FenceRefused
from changes_app.models import Fence, Run

logger = logging.getLogger("flamingock.lock")


@dataclass(frozen=True)
class Holder:
    """Who holds the lock, for the admin, the CLI and LOCKED runs."""

    name: str
    run_id: str
    holder: str
    host: str
    pid: int | None
    token: int | None
    since: datetime | None
    expires_at: datetime | None

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "run_id": self.run_id,
            "holder": self.holder,
            "host": self.host,
            "pid": self.pid,
            "token": self.token,
            "since": self.since.isoformat() if self.since else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "expired": self.expired,
        }


class RunCancelled(FenceRefused):
    """The run was cancelled: its next fenced write is refused, so it stops before its next change."""


class LockBackend(Protocol):
    name: str
    lease_seconds: float

    def try_acquire(self, *, run_id: uuid.UUID, actor: Actor) -> Lease | None: ...

    def holder(self) -> Holder | None: ...

    def force_release(self) -> Holder | None: ...


def fence_sequence(name: str) -> str:
    """PostgreSQL: the sequence that issues the fencing tokens of lock ``name``, one per lock."""
    return f"{Fence._meta.db_table}_{hashlib.sha256(name.encode()).hexdigest()[:24]}"


def fence_issue(name: str) -> int:
    """Issue the next fencing token of lock ``name``: from then on, every older token is refused.

    The token is recorded in the fence row (:func:`fence_advance`), which waits for the row lock that a
    fenced transaction of the previous holder still holds: a new holder plans only after that
    transaction has committed or rolled back. A bare ``nextval`` (which takes no row lock) let a new
    holder read the ledger while the old holder's fenced entry, already past its fence check, was
    still to commit; its own state re-read, on its statement's snapshot, then missed the new row, and
    both applied. The protocol model found that window (docs/reliability.md, "The protocol,
    model-checked"); the wait is bounded by the server's idle-in-transaction limit of half a lease.
    """
    return fence_advance(name)


def fence_advance(name: str) -> int:
    """Issue the next fencing token and record it in the fence row.

    Waits for the row lock a fenced transaction holds to commit. The database lease lock takes its
    tokens here (its acquisition commits anyway), and a force release fences out the holder with it.
    """
    using = router.db_for_write(Fence)
    connection = connections[using]
    table = Fence._meta.db_table
    if connection.vendor == "postgresql":
        # One statement, committed on its own: the ``nextval`` and the row update that waits for
        # the row lock (one round trip; a transaction of two statements cost 6 and 10 ms a lock).
        sql = (
            f"WITH t AS (SELECT nextval(%s::regclass) AS token) "
            f"UPDATE {table} SET token = GREATEST({table}.token, t.token) FROM t WHERE {table}.name = %s RETURNING t.token"
        )
        params = [fence_sequence(name), name]
        # Inside a transaction, a savepoint keeps a missing sequence from aborting it.
        savepoint = transaction.atomic(using=using) if connection.in_atomic_block else contextlib.nullcontext()
        try:
            with savepoint, connection.cursor() as cursor:
                cursor.execute(sql, params)
                row = cursor.fetchone()
        except ProgrammingError as error:
            if getattr(error.__cause__, "sqlstate", None) != "42P01":  # undefined_table: the lock's first token
                raise
            row = None
        if row is None:  # the lock's first token: its fence row and sequence are made once
            _fence_sequence_create(connection, name)
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                row = cursor.fetchone()
        return row[0]
    try:
        Fence.objects.using(using).get_or_create(name=name)
    except IntegrityError:  # created concurrently
        pass
    with transaction.atomic(using=using):
        Fence.objects.using(using).filter(name=name).update(token=F("token") + 1)
        return Fence.objects.using(using).values_list("token", flat=True).get(name=name)


def fence_newest(name: str, *, using: str) -> int | None:
    """The newest fencing token issued for lock ``name`` (``None``: none yet)."""
    if connections[using].vendor == "postgresql":
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_sequence_last_value(to_regclass(%s))", [fence_sequence(name)])
            return cursor.fetchone()[0]
    return Fence.objects.using(using).filter(name=name).values_list("token", flat=True).first()


def _fence_sequence_create(connection, name: str) -> None:
    """Create the lock's fence row and sequence, the sequence above every token the row recorded."""
    table, sequence = Fence._meta.db_table, fence_sequence(name)
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} (name, token) VALUES (%s, 0) ON CONFLICT (name) DO NOTHING", [name])
        # The row lock makes concurrent first acquirers create the sequence once.
        cursor.execute(f"SELECT token FROM {table} WHERE name = %s FOR UPDATE", [name])
        recorded = cursor.fetchone()[0]
        cursor.execute("SELECT to_regclass(%s)", [sequence])
        if cursor.fetchone()[0] is None:
            cursor.execute(f"CREATE SEQUENCE {connection.ops.quote_name(sequence)} AS bigint MINVALUE 1 CACHE 1 NO CYCLE")
            # Tokens recorded before the lock had a sequence (an upgrade) are never issued again.
            cursor.execute("SELECT setval(%s, %s, %s)", [sequence, max(recorded, 1), recorded > 0])


class Lease:
    """An acquired lock: a fence for the audit writer, a heartbeat, and compare-and-delete release."""

    def __init__(self, backend: LockBackend, *, token: int, run_id: uuid.UUID):
        self.backend = backend
        self.name = backend.name
        self.token = token
        self.run_id = run_id
        self.lost_reason = ""
        #: Backend-specific state (the value a Redis lease was set with: its owner proof).
        self.handle = None
        #: Set by the engine before a change's first entry: that check also refuses a cancelled run.
        self.cancel_check = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Fence protocol (audit_app.services.Fence)
    def statement(self, *, using: str) -> tuple[str, list]:
        """The fence check as one UPDATE: it matches one row only if the token is still the newest
        issued for the lock (and, for a change's first entry, the run was not cancelled), and locks
        it until commit. The writer may send it alone or fold it into its own first statement."""
        connection = connections[using]
        table = Fence._meta.db_table
        if connection.vendor == "postgresql":
            # The newest token is the last value of the lock's sequence (see fence_advance).
            newest = f"(SELECT last_value FROM {connection.ops.quote_name(fence_sequence(self.name))})"
            sql = f"UPDATE {table} SET checked_at = CURRENT_TIMESTAMP, token = %s WHERE name = %s AND %s = {newest}"
            params = [self.token, self.name, self.token]
        else:
            sql = f"UPDATE {table} SET checked_at = CURRENT_TIMESTAMP WHERE name = %s AND token = %s"
            params = [self.name, self.token]
        if self.cancel_check:
            # Only the first entry of a change: a change under way is never cut short by a cancel.
            self.cancel_check = False
            sql += f" AND NOT EXISTS (SELECT 1 FROM {Run._meta.db_table} WHERE id = %s AND cancel_requested_at IS NOT NULL)"
            params.append(Run._meta.pk.get_db_prep_value(self.run_id, connection))
        return sql, params

    def check(self, *, using: str) -> None:
        sql, params = self.statement(using=using)
        with connections[using].cursor() as cursor:
            cursor.execute(sql, params)
            if cursor.rowcount == 1:
                return
        self.refused(using=using)

    def refused(self, *, using: str) -> None:
        """Raise why the fence check matched no row: the run was cancelled, or the token is stale."""
        if fence_newest(self.name, using=using) == self.token:
            by = Run.objects.using(using).filter(pk=self.run_id).values_list("cancel_requested_by", flat=True).first()
            raise RunCancelled(f"cancelled by {by}")
        self.lost_reason = self.lost_reason or f"fencing token {self.token} is no longer the newest"
        raise FenceRefused(f"fencing token {self.token} of lock {self.name!r} is stale: another holder took the lock")

    @property
    def lost(self) -> bool:
        return bool(self.lost_reason)

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"flamingock-heartbeat-{self.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = self.backend.lease_seconds / 3
        try:
            while not self._stop.wait(interval):
                try:
                    if not self.backend.extend(self):
                        self.lost_reason = "the lease was taken over or released by someone else"
                        return
                    # The run's heartbeat is what the reaper watches to tell a live run from a dead one.
                    Run.objects.filter(pk=self.run_id).update(heartbeat_at=timezone.now())
                except Exception as error:  # a lost store connection: stop before the next change
                    self.lost_reason = f"heartbeat failed: {error}"
                    logger.warning("lock %s: %s", self.name, self.lost_reason)
                    return
        finally:
            connections.close_all()

    def release(self) -> bool:
        """Stop the heartbeat and release by token; False if the lock was no longer this lease's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.backend.lease_seconds)
        # Compare-and-delete by token: safe even when the lease was lost, and it frees a lock that
        # was only fenced out sooner than its expiry would.
        try:
            released = self.backend.release(self)
        except Exception as error:  # the lease expires on its own
            logger.warning("lock %s: release failed: %s", self.name, error)
            released = False
        if not released and not self.lost_reason:
            self.lost_reason = "the lock was released or taken over by someone else"
        return released
