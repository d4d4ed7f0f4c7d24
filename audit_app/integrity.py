"""Verification of the trail and its signed checkpoints (``flamingock audit verify``)."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, router, transaction
from django.db.models import Exists, OuterRef, Q

from audit_app.chain import GENESIS_HASH, ROW_COLUMNS, TEXT_ROW_SQL, canonical_json, entry_hash_of_row, entry_hash_of_text_row, timestamp_text
from audit_app.models import AuditCheckpoint, AuditEntry, ChainHead, QuarantinedEntry, Verification
from audit_app.services import audit_record
from audit_app.signing import checkpoint_message, key_id, public_key_hex, sign, signature_valid, signing_key
from audit_app.types import QUARANTINE_STEPS, TrailClosed

logger = logging.getLogger("flamingock.audit")

#: Below this many entries, verification runs in-process; above, it is split across processes.
PARALLEL_THRESHOLD = 50_000
CHUNK = 10_000
#: Rows per chunk received from PostgreSQL while it goes on sending.
STREAM_ROWS = 2_000


@dataclass
class Problem:
    seq: int
    entry_id: int | None
    message: str


@dataclass
class Report:
    ok: bool
    mode: str
    entries_checked: int
    head_seq: int
    problem: Problem | None
    duration_ms: float
    checkpoint_seq: int | None = None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["first_broken_seq"] = self.problem.seq if self.problem else None
        data["first_broken_id"] = self.problem.entry_id if self.problem else None
        data["message"] = self.problem.message if self.problem else "the chain is intact"
        return data


def _alias() -> str:
    return router.db_for_read(AuditEntry)


def verify_range(
    lo: int, hi: int, previous_hash: str, previous_id: int | None, progress: Callable[[int], None] | None = None
) -> tuple[int, Problem | None]:
    """Check entries lo..hi (inclusive): contiguous, linked, each hash recomputed. ``progress`` is told
    the number checked so far every :data:`CHUNK` entries (on PostgreSQL while the rows still stream:
    it must not use this process's connection to the trail)."""
    connection = connections[_alias()]
    if connection.vendor == "postgresql":
        rows = _rows_postgresql(connection, lo, hi)
        try:
            return _rows_check(rows, lo, hi, previous_hash, previous_id, entry_hash_of_text_row, progress)
        finally:
            rows.close()
    rows = AuditEntry.objects.using(_alias()).filter(seq__gte=lo, seq__lte=hi).order_by("seq").values_list(*ROW_COLUMNS)
    return _rows_check(rows.iterator(chunk_size=CHUNK), lo, hi, previous_hash, previous_id, entry_hash_of_row, progress)


def _rows_postgresql(connection, lo: int, hi: int) -> Iterator[tuple]:
    """Entries lo..hi in chain order as :data:`TEXT_ROW_SQL` rows: plain values typed by psycopg's
    C loaders a chunk of rows at a time while the server goes on sending (no model, datetime, UUID
    or dict per row)."""
    import psycopg  # only on PostgreSQL, where Django has imported it already

    columns = ", ".join(expression for expression, _ in TEXT_ROW_SQL)
    table = connection.ops.quote_name(AuditEntry._meta.db_table)
    query = f"SELECT {columns} FROM {table} WHERE seq >= %s AND seq <= %s ORDER BY seq"
    connection.ensure_connection()
    # A plain psycopg cursor on Django's connection (and in its transaction, if any): Django's
    # own binds parameters on the client, which psycopg allows only with text results.
    with psycopg.Cursor(connection.connection) as cursor:
        rows = cursor.stream(query, [lo, hi], binary=True, size=STREAM_ROWS)
        try:
            # Not ``yield from``: closing this generator would close the stream, which cancels.
            for row in rows:  # noqa: UP028
                yield row
        finally:
            # Stopped at a problem: read the rest rather than cancel the statement, which would
            # abort the transaction this runs in, if any.
            for _ in rows:
                pass


def _rows_check(rows, lo: int, hi: int, previous_hash: str, previous_id: int | None, recompute, progress=None) -> tuple[int, Problem | None]:
    expected, checked = lo, 0
    for row in rows:
        if progress is not None and checked and not checked % CHUNK:
            progress(checked)
        entry_id, seq, _, prev_hash, stored_hash = row[:5]
        if seq != expected:
            return checked, Problem(expected, None, f"entry #{expected} is missing: the next entry present is #{seq} (id {entry_id})")
        if prev_hash != previous_hash:
            return checked, Problem(seq, entry_id, f"entry #{seq} (id {entry_id}) does not link to entry #{seq - 1}: removed, inserted or reordered")
        if previous_id is not None and entry_id <= previous_id:
            return checked, Problem(seq, entry_id, f"entry #{seq} (id {entry_id}) is out of insertion order: rows were swapped")
        try:
            recomputed = recompute(row)
        except ValueError:  # a hash version no writer writes: the row was altered
            recomputed = None
        if recomputed != stored_hash:
            return checked, Problem(seq, entry_id, f"entry #{seq} (id {entry_id}) was altered: its content does not match its hash")
        previous_hash, previous_id, expected, checked = stored_hash, entry_id, expected + 1, checked + 1
    if expected <= hi:
        return checked, Problem(expected, None, f"entry #{expected} is missing")
    return checked, None


def _verify_range_in_child(args):
    lo, hi, previous_hash, previous_id = args
    try:
        return verify_range(lo, hi, previous_hash, previous_id)
    finally:
        connections.close_all()


def _anchor(seq: int) -> tuple[str, int | None]:
    """The stored hash and id of entry ``seq`` (the genesis before the first)."""
    if seq <= 0:
        return GENESIS_HASH, None
    row = AuditEntry.objects.using(_alias()).filter(seq=seq).values_list("entry_hash", "id").first()
    return (row[0], row[1]) if row else ("", None)


def _head_problems(last_seq: int, last_hash: str) -> Problem | None:
    head = ChainHead.objects.using(_alias()).filter(id=1).first()
    head_seq = head.seq if head else 0
    if head_seq != last_seq or (head and head.entry_hash != last_hash):
        return Problem(
            min(head_seq, last_seq) + 1,
            None,
            f"the chain head says #{head_seq} but the last entry is #{last_seq}: entries were removed at the tail or written outside the writer",
        )
    return None


def trusted_public_keys() -> set[str]:
    """The public keys this trail's checkpoints may be signed with: ``FLAMINGOCK_AUDIT_PUBLIC_KEYS``
    (hex, comma-separated: earlier keys after a rotation, or the keys a verifier without the
    private key trusts) and the public half of the configured signing key."""
    from django.conf import settings

    keys = set(getattr(settings, "FLAMINGOCK_AUDIT_PUBLIC_KEYS", []))
    try:
        keys.add(public_key_hex(signing_key()))
    except ImproperlyConfigured:
        pass
    return keys


def _checkpoint_problems(last_seq: int, *, every: bool) -> Problem | None:
    latest = AuditCheckpoint.objects.using(_alias()).order_by("-seq", "-id").first()
    if latest is None:
        return None
    if not signature_valid(checkpoint_message(latest.seq, latest.entry_hash, latest.created_at), latest.signature, latest.public_key):
        return Problem(latest.seq, None, f"checkpoint {latest.pk} (at #{latest.seq}) has an invalid signature")
    # The key stored beside a checkpoint proves nothing to whoever can write the database: trust
    # only the public half of the key that signs this trail, which lives outside it (when this
    # process has it: a verifier without the key still checks the chain and the signature).
    trusted = trusted_public_keys() or {latest.public_key}
    if latest.public_key not in trusted:
        shown = ", ".join(sorted(key_id(key) for key in trusted))
        return Problem(
            latest.seq, None, f"checkpoint {latest.pk} (at #{latest.seq}) is signed by key {latest.key_id}, not by a key of this trail ({shown})"
        )
    if latest.seq > last_seq:
        return Problem(
            last_seq + 1, None, f"checkpoint {latest.pk} signed entry #{latest.seq}, but the trail ends at #{last_seq}: the last entries were removed"
        )
    stored = AuditEntry.objects.using(_alias()).filter(seq=latest.seq).values_list("entry_hash", flat=True).first()
    if stored != latest.entry_hash:
        return Problem(latest.seq, None, f"checkpoint {latest.pk} no longer matches entry #{latest.seq}: the trail was rewritten")
    if not every:
        return None
    # Earlier checkpoints: every one must still match its entry (one query, by the seq index).
    same = AuditEntry.objects.using(_alias()).filter(seq=OuterRef("seq"), entry_hash=OuterRef("entry_hash"))
    mismatched = AuditCheckpoint.objects.using(_alias()).filter(~Exists(same)).order_by("seq").first()
    if mismatched is not None:
        return Problem(mismatched.seq, None, f"checkpoint {mismatched.pk} no longer matches entry #{mismatched.seq}: the trail was rewritten")
    return None


def audit_verify(*, from_checkpoint: bool = False, workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> Report:
    """Recompute the chain; the report names the first broken entry (or checkpoint). ``progress`` is
    told (entries checked, entries to check) as the work goes on."""
    started = time.perf_counter()
    alias = _alias()
    last = AuditEntry.objects.using(alias).exclude(seq=None).order_by("-seq").values_list("seq", "entry_hash").first()
    last_seq, last_hash = last if last else (0, GENESIS_HASH)
    start_seq, checkpoint_seq = 1, None
    problem: Problem | None = None
    if from_checkpoint:
        latest = AuditCheckpoint.objects.using(alias).order_by("-seq", "-id").first()
        if latest is not None:
            checkpoint_seq = latest.seq
            start_seq = latest.seq + 1
    problem = _checkpoint_problems(last_seq, every=not from_checkpoint)
    checked = 0
    if problem is None and last_seq >= start_seq:
        previous_hash, previous_id = _anchor(start_seq - 1)
        count = last_seq - start_seq + 1
        workers = workers if workers is not None else (min(4, multiprocessing.cpu_count()) if count >= PARALLEL_THRESHOLD else 1)
        if progress is not None:
            progress(0, count)
        if workers <= 1:
            checked, problem = verify_range(
                start_seq, last_seq, previous_hash, previous_id, (lambda done: progress(done, count)) if progress else None
            )
        else:
            # With progress to report, more pieces than processes: each finished piece is reported.
            pieces = workers * 4 if progress is not None else workers
            bounds = [start_seq + count * index // pieces for index in range(pieces + 1)]
            ranges = []
            for index in range(pieces):
                lo, hi = bounds[index], bounds[index + 1] - 1
                anchor = (previous_hash, previous_id) if index == 0 else _anchor(lo - 1)
                ranges.append((lo, hi, *anchor))
            connections.close_all()  # children open their own
            results = []
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for result in pool.imap(_verify_range_in_child, ranges):
                    results.append(result)
                    if progress is not None:
                        progress(sum(done for done, _ in results), count)
            checked = sum(result[0] for result in results)
            problems = [result[1] for result in results if result[1] is not None]
            problem = min(problems, key=lambda item: item.seq) if problems else None
    if problem is None:
        problem = _head_problems(last_seq, last_hash)
    if problem is None:
        # Only the writer numbers entries: a row without a number was inserted around it.
        outside = AuditEntry.objects.using(alias).filter(seq=None).order_by("id").values_list("id", flat=True).first()
        if outside is not None:
            problem = Problem(0, outside, f"entry id {outside} is outside the chain: it was not written by the one writer")
    return Report(
        ok=problem is None,
        mode="checkpoint" if from_checkpoint else "full",
        entries_checked=checked,
        head_seq=last_seq,
        problem=problem,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
        checkpoint_seq=checkpoint_seq,
    )


def verdict_log(report: Report) -> None:
    """The verdict in the log: an error when the chain is broken."""
    if report.ok:
        logger.info("audit trail verification passed: %s entries checked up to #%s", report.entries_checked, report.head_seq)
    else:
        logger.error("audit trail verification FAILED at entry #%s: %s", report.problem.seq, report.problem.message)


def verdict_record(report: Report, *, actor, details: dict | None = None) -> str:
    """Record a verdict already delivered (:func:`verification_record`). A verifier's verdict stands
    even when it cannot be recorded (the trail closed by a foreign row, a database error): that is
    logged, and returned as ``"verdict not recorded: ..."`` for the caller to report; "" when recorded."""
    try:
        verification_record(report, actor=actor, details=details)
    except (TrailClosed, DatabaseError) as error:
        why = f"verdict not recorded: {error}"
        logger.error("audit trail %s", why)
        return why
    return ""


def verification_record(report: Report, *, actor, details: dict | None = None) -> Verification:
    """Store the outcome and audit it (``audit.verified``, with ``details`` besides the report's).
    Callers deliver the verdict first and record it through :func:`verdict_record`, which survives a
    refusal."""
    with transaction.atomic(using=router.db_for_write(Verification)):
        verification = Verification.objects.create(
            mode=report.mode,
            ok=report.ok,
            entries_checked=report.entries_checked,
            head_seq=report.head_seq,
            first_broken_seq=report.problem.seq if report.problem else None,
            first_broken_id=report.problem.entry_id if report.problem else None,
            problem=report.problem.message if report.problem else "",
            duration_ms=report.duration_ms,
            actor=actor.name,
            from_seq=report.checkpoint_seq + 1 if report.checkpoint_seq is not None else 1,
        )
        audit_record(
            event="audit.verified", actor=actor, environment=settings.FLAMINGOCK_ENVIRONMENT, details={**report.as_dict(), **(details or {})}
        )
    return verification


def checkpoint_write(*, reason: str = "schedule", force: bool = False) -> AuditCheckpoint | None:
    """Sign the current chain head; nothing new since the last checkpoint means no new one."""
    alias = router.db_for_write(AuditCheckpoint)
    head = ChainHead.objects.using(alias).filter(id=1).first()
    if head is None or head.seq == 0:
        return None
    latest = AuditCheckpoint.objects.using(alias).order_by("-seq", "-id").first()
    if latest is not None and latest.seq == head.seq and not force:
        return latest
    from django.utils import timezone

    now = timezone.now()
    signature, public = sign(checkpoint_message(head.seq, head.entry_hash, now))
    checkpoint = AuditCheckpoint(
        seq=head.seq, entry_hash=head.entry_hash, created_at=now, key_id=key_id(public), public_key=public, signature=signature, reason=reason
    )
    checkpoint.save(using=alias)
    return checkpoint


# -- quarantine ---------------------------------------------------------------------------------------

#: The append-only triggers on the entries' table that refuse DELETE (migration 0003), lifted only
#: inside the quarantine's transaction. PostgreSQL: trigger names; SQLite: name and statement.
_ENTRY_TABLE = AuditEntry._meta.db_table
_PG_DELETE_TRIGGER = f"{_ENTRY_TABLE}_no_change"
_SQLITE_DELETE_TRIGGER = (
    f"{_ENTRY_TABLE}_no_delete",
    f"CREATE TRIGGER IF NOT EXISTS {_ENTRY_TABLE}_no_delete BEFORE DELETE ON {_ENTRY_TABLE} "
    f"BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: DELETE on {_ENTRY_TABLE} is refused'); END",
)


@dataclass
class Quarantine:
    """What :func:`trail_quarantine` moved aside, and the verdict on the trail afterwards."""

    rows: list[dict]
    entry_id: int | None
    head_seq: int
    report: Report | None = None
    moved: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "moved": self.moved,
            "rows": self.rows,
            "quarantine_entry_id": self.entry_id,
            "head_seq": self.head_seq,
            "verification": self.report.as_dict() if self.report else None,
        }


def _stored(value):
    if isinstance(value, datetime):
        return timestamp_text(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def trail_quarantine(*, actor, reason: str, environment: str) -> Quarantine:
    """Move aside every row the one writer provably did not write: beyond the chain head (the writer
    advances the head in the insert's own transaction) or without a sequence number. In one
    transaction, under the head lock: each row is copied as stored into ``QuarantinedEntry``, removed
    from the entries' table (the DELETE trigger is lifted for that statement's transaction only),
    and ``audit.quarantined`` names the moved rows and their hashes; then writes resume from the head.
    Nothing moves when there is nothing foreign. A break inside the chain is not a quarantine's to
    mend: the verification afterwards still names it."""
    alias = router.db_for_write(AuditEntry)
    connection = connections[alias]
    with transaction.atomic(using=alias):
        head = ChainHead.objects.using(alias).select_for_update().filter(id=1).first()
        head_seq = head.seq if head else 0
        foreign = AuditEntry.objects.using(alias).filter(Q(seq=None) | Q(seq__gt=head_seq)).order_by("id")
        rows = [{name: _stored(value) for name, value in row.items()} for row in foreign.values()]
        if not rows:
            return Quarantine(rows=[], entry_id=None, head_seq=head_seq)
        moved = [
            {
                "id": row["id"],
                "seq": row["seq"],
                "entry_hash": row["entry_hash"],
                "row_digest": hashlib.sha256(canonical_json(row).encode("utf-8")).hexdigest(),
                "event": row["event"],
                "actor": row["actor"],
            }
            for row in rows
        ]
        ids = [row["id"] for row in rows]
        with connection.cursor() as cursor:
            table = connection.ops.quote_name(_ENTRY_TABLE)
            marks = ", ".join(["%s"] * len(ids))
            if connection.vendor == "postgresql":
                # Needs the table's owner (the role that migrated); the lock it takes holds every
                # other session off the table until this transaction ends.
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {_PG_DELETE_TRIGGER}")
                cursor.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {_PG_DELETE_TRIGGER}")
            else:
                cursor.execute(f"DROP TRIGGER IF EXISTS {_SQLITE_DELETE_TRIGGER[0]}")
                cursor.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
                cursor.execute(_SQLITE_DELETE_TRIGGER[1])
        entry = audit_record(
            event="audit.quarantined",
            actor=actor,
            environment=environment,
            reason=reason,
            details={"head_seq": head_seq, "count": len(moved), "rows": moved},
            using=alias,
        )
        QuarantinedEntry.objects.using(alias).bulk_create(
            QuarantinedEntry(
                original_id=row["id"],
                seq=row["seq"],
                entry_hash=row["entry_hash"],
                row=row,
                row_digest=summary["row_digest"],
                reason=entry.reason,
                actor=actor.name,
                quarantine_entry_id=entry.pk,
            )
            for row, summary in zip(rows, moved, strict=True)
        )
    logger.warning("audit trail quarantine: %s foreign row(s) moved aside by %s (%s)", len(moved), actor.name, QUARANTINE_STEPS)
    return Quarantine(rows=rows, entry_id=entry.pk, head_seq=head_seq, moved=moved)
