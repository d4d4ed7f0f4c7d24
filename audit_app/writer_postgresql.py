"""The audit writer's PostgreSQL path: the fence check, the state re-read, the chain head, the
insert and the state projection in one statement, prepared once per connection, and sent with the
transaction's ``COMMIT`` in one round trip where the entry ends its block.

Kept because it saves 59 % of a whole ``run`` of 1,000 changes against the portable path
(docs/decisions.md, "The audit writer's one statement"); ``audit_app.services`` calls it through
:func:`write_postgres` only.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connections

from audit_app.chain import GENESIS_HASH, VERSION_FIELDS, canonical_json, chain_version, scalar, timestamp_text
from audit_app.models import AuditEntry, ChainHead, ChangeState, EntrySubject, MemberChangeState
from audit_app.subjects import entry_subject
from audit_app.types import UNCHECKED, Fence, HashMismatch, StateMoved, TrailClosed

#: PostgreSQL: the writer's statement is a server-side prepared statement unless a connection
#: pooler in transaction mode without prepared-statement support sits between (docs/operators.md).
PREPARED_STATEMENTS = getattr(settings, "FLAMINGOCK_DB_PREPARED_STATEMENTS", True)
HEAD_CREATE_POSTGRESQL = f"INSERT INTO {ChainHead._meta.db_table} (id, seq, entry_hash) VALUES (1, 0, %s) ON CONFLICT (id) DO NOTHING"


#: The fields written by the writer, in column order (the primary key is the database's).
_WRITTEN = [
    field
    for field in AuditEntry._meta.concrete_fields
    if not field.primary_key and field.name not in {"seq", "hash_version", "prev_hash", "entry_hash", "created_at"}
]
_WRITTEN_INDEX = {field.attname: index for index, field in enumerate(_WRITTEN)}
#: Fields whose Python value is already what the driver sends; the others (JSON, UUID) are prepared
#: by their field, as the ORM would.
_PLAIN = {"CharField", "TextField", "IntegerField", "BigIntegerField", "PositiveSmallIntegerField", "FloatField"}
_WRITTEN_PREP = [(field.attname, None if field.get_internal_type() in _PLAIN else field) for field in _WRITTEN]
#: The hash input of a chain version (chain.entry_hash) built by PostgreSQL around the values
#: that only the database knows under the head lock: the sequence, the previous hash, the time.
_HASH_SQL = (
    "encode(sha256(convert_to('[{version},' || v.seq || ',\"' || v.prev || '\",\"' || "
    "to_char(v.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || '\",' || %s || ']', 'UTF8')), 'hex')"
)


def _hash_tail(entry: AuditEntry, version: int) -> str:
    """The canonical JSON of the version's hashed fields, without brackets: the part of the hash
    input the writer knows before it takes the head (see chain.entry_hash)."""
    values = [
        canonical_json(entry.details if entry.details is not None else {}) if name == "details" else scalar(getattr(entry, name))
        for name in VERSION_FIELDS[version]
    ]
    return canonical_json(values)[1:-1]


@functools.cache
def _placeholders(vendor: str) -> str:
    """One typed placeholder per written column: with parameters bound by the server, ``INSERT ...
    SELECT`` would read an untyped one as text. Character columns take text, so that a value too long
    for its column is still an error, not silently cut."""
    connection = next(connection for connection in connections.all() if connection.vendor == vendor)
    return ", ".join(
        "%s::text" if field.get_internal_type() in ("CharField", "TextField") else f"%s::{field.db_type(connection)}" for field in _WRITTEN
    )


@functools.cache
def _prepared_cursor_class() -> type:
    """A psycopg cursor that binds parameters on the server and prepares the statement on its
    connection: the writer's statement is parsed and planned once per connection rather than once
    per entry. (psycopg is imported here, not at start-up: the embedded SQLite default needs none.)"""
    import psycopg

    class PreparedStatementCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):
            kwargs.setdefault("prepare", PREPARED_STATEMENTS)
            return super().execute(query, params, **kwargs)

    return PreparedStatementCursor


def _prepared_cursor(connection):
    """A Django cursor wrapper (query logging, execute wrappers, error mapping) around a
    prepared-statement cursor on the connection's psycopg connection."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        if PREPARED_STATEMENTS and connection.connection.prepare_threshold is None:
            # Django turns psycopg's automatic preparing off (for poolers); a threshold this high
            # keeps it off for every other statement while ``prepare=True`` works for this one.
            connection.connection.prepare_threshold = 2**31 - 1
        raw = _prepared_cursor_class()(connection.connection)
    if not connection.queries_logged:
        return connection.make_cursor(raw)
    cursor = connection.make_debug_cursor(raw)
    # Django reads the logged text off a client-side-binding cursor; show this one's the same way.
    cursor.db = _LoggedAs(connection)
    return cursor


class _LoggedAs:
    """The connection as a debug cursor sees it, with ``ops.last_executed_query`` composing the
    statement with its parameters (what Django shows for client-side binding)."""

    def __init__(self, connection):
        self._connection = connection
        self.ops = _LoggedOps(connection.ops)

    def __getattr__(self, name):
        return getattr(self._connection, name)


class _LoggedOps:
    def __init__(self, ops):
        self._ops = ops

    def last_executed_query(self, cursor, sql, params):
        return self._ops.compose_sql(sql, params)

    def __getattr__(self, name):
        return getattr(self._ops, name)


@functools.lru_cache(maxsize=64)
def _statement(
    vendor: str, fence_sql: str | None, checked: bool, project: bool, refusing: bool = False, version: int = 1, member: bool = False
) -> str:
    """The writer's statement for one shape of entry (fenced or not, state-checked or not, projected
    or not, refusing with an error or not), built once: its text depends on nothing else. Parameters,
    in order: the fence's, the change id and the expected entry (checked), the hash tail, the written
    columns, the entry's target and change (the side index), the projection's. A refusing statement
    raises (``flamingock_refuse``, SQLSTATE FLREF, migration 0005) where another returns a row without
    an entry: it is the one sent with the ``COMMIT`` of its transaction, which must then not commit.
    A ``member`` entry (fleets) re-reads and projects the member's state instead (``MemberChangeState``,
    keyed by member and change): the member follows the change id in the parameters of both."""
    connection = next(connection for connection in connections.all() if connection.vendor == vendor)
    quote = connection.ops.quote_name
    ctes: list[str] = []
    fenced = "true"
    if fence_sql is not None:
        ctes.append(f"f AS ({fence_sql} RETURNING 1)")
        fenced = "EXISTS (SELECT 1 FROM f)"
    current, state_ok = "NULL::bigint", "true"
    if checked:
        table = MemberChangeState._meta.db_table if member else ChangeState._meta.db_table
        ctes.append(f"st AS (SELECT entry_id FROM {table} WHERE change_id = %s{' AND member = %s' if member else ''} FOR UPDATE)")
        current = "(SELECT entry_id FROM st)"
        state_ok = "c.current IS NOT DISTINCT FROM %s::bigint"
    head = ChainHead._meta.db_table
    ctes.append(f"h AS (SELECT seq, entry_hash FROM {head} WHERE id = 1 FOR UPDATE)")
    ctes.append(f"c AS (SELECT {fenced} AS fenced, {current} AS current)")
    ctes.append(f"v AS (SELECT h.seq + 1 AS seq, h.entry_hash AS prev, clock_timestamp() AS ts FROM h, c WHERE c.fenced AND {state_ok})")
    ctes.append(f"x AS (SELECT v.seq, v.prev, v.ts, {_HASH_SQL.format(version=int(version))} AS hash FROM v)")
    columns = ", ".join(quote(field.column) for field in _WRITTEN)
    ctes.append(
        f"e AS (INSERT INTO {AuditEntry._meta.db_table} (seq, hash_version, prev_hash, entry_hash, created_at, {columns}) "
        f"SELECT x.seq, {int(version)}, x.prev, x.hash, x.ts, {_placeholders(vendor)} FROM x "
        f"RETURNING id, seq, prev_hash, entry_hash, created_at)"
    )
    ctes.append(f"hu AS (UPDATE {head} SET seq = e.seq, entry_hash = e.entry_hash, entry_id = e.id FROM e WHERE {head}.id = 1)")
    # The entry's row of the side index (audit_app.subjects): its target and change, in the same round
    # trip. A row left by an entry removed outside the writer is replaced: the index follows the trail.
    ctes.append(
        f"sj AS (INSERT INTO {EntrySubject._meta.db_table} (seq, target, change_id) SELECT e.seq, %s::text, %s::text FROM e "
        "ON CONFLICT (seq) DO UPDATE SET target = EXCLUDED.target, change_id = EXCLUDED.change_id)"
    )
    if project and member:
        table = MemberChangeState._meta.db_table
        ctes.append(
            f'p AS (INSERT INTO {table} (change_id, member, state, checksum, entry_id, run_id, stage, "order", target, applied_count, updated_at) '
            f"SELECT %s::text, %s::text, %s::text, %s::text, e.id, %s::uuid, %s::text, %s::text, %s::text, %s::integer, e.created_at FROM e "
            f"ON CONFLICT (member, change_id) DO UPDATE SET state = EXCLUDED.state, checksum = EXCLUDED.checksum, entry_id = EXCLUDED.entry_id, "
            f'run_id = EXCLUDED.run_id, stage = EXCLUDED.stage, "order" = EXCLUDED."order", target = EXCLUDED.target, '
            f"applied_count = {table}.applied_count + EXCLUDED.applied_count, updated_at = EXCLUDED.updated_at)"
        )
    elif project:
        table = ChangeState._meta.db_table
        ctes.append(
            f'p AS (INSERT INTO {table} (change_id, state, checksum, entry_id, run_id, stage, "order", target, applied_count, updated_at) '
            f"SELECT %s::text, %s::text, %s::text, e.id, %s::uuid, %s::text, %s::text, %s::text, %s::integer, e.created_at FROM e "
            f"ON CONFLICT (change_id) DO UPDATE SET state = EXCLUDED.state, checksum = EXCLUDED.checksum, entry_id = EXCLUDED.entry_id, "
            f'run_id = EXCLUDED.run_id, stage = EXCLUDED.stage, "order" = EXCLUDED."order", target = EXCLUDED.target, '
            f"applied_count = {table}.applied_count + EXCLUDED.applied_count, updated_at = EXCLUDED.updated_at)"
        )
    refusal = ""
    if refusing:
        why = "CASE WHEN NOT c.fenced THEN 'fence' WHEN (SELECT count(*) FROM h) = 0 THEN 'no chain head' ELSE 'state' END"
        refusal = f", CASE WHEN e.id IS NULL THEN flamingock_refuse({why}) END"
    return (
        f"WITH {', '.join(ctes)} SELECT c.fenced, c.current, e.id, e.seq, e.prev_hash, e.entry_hash, e.created_at, "
        f"(SELECT count(*) FROM h){refusal} FROM c LEFT JOIN e ON true"
    )


def write_postgres(
    entry: AuditEntry,
    *,
    fence: Fence | None,
    expected: Any,
    project: bool,
    applied: bool,
    using: str,
    before_commit: Callable[[], None] | None = None,
) -> None:
    """PostgreSQL: the whole entry in one statement, one round trip.

    It runs the fence check, re-reads the change's latest state, locks the chain head, reads the
    database clock under that lock, hashes the entry (the same bytes as ``chain.entry_hash``),
    inserts it, advances the head and projects the change's state. If the fence or the state
    check fails it writes nothing and says why. The hash is recomputed in Python from what was
    stored, so a server that formatted any part differently would stop the write, not fork the
    chain's meaning.

    With ``before_commit`` the entry ends the caller's transaction: ``before_commit`` is called,
    then the statement and ``COMMIT`` go in one round trip (:func:`_send_with_commit`).
    """
    connection = connections[using]
    params: list = []
    fence_sql = None
    if fence is not None:
        fence_sql, fence_params = fence.statement(using=using)
        params += fence_params
    checked = expected is not UNCHECKED
    member = entry.member or None
    if checked:
        params += [entry.change_id, *([member] if member else []), expected]
    version = chain_version(entry.member)
    tail = _hash_tail(entry, version)
    params.append(tail)
    values = [getattr(entry, name) if field is None else field.get_db_prep_save(getattr(entry, name), connection) for name, field in _WRITTEN_PREP]
    params += values
    params += entry_subject(target=entry.target, change_id=entry.change_id, details=entry.details)
    if project:
        run_id = values[_WRITTEN_INDEX["run_id"]]
        params += [entry.change_id, *([member] if member else []), entry.state, entry.checksum, run_id, entry.stage, entry.order, entry.target]
        params.append(int(applied))
    if before_commit is not None:
        before_commit()
        pk, seq, prev_hash, digest, created_at = _send_with_commit(
            connection,
            _statement(connection.vendor, fence_sql, checked, project, refusing=True, version=version, member=bool(member)),
            params,
            fence=fence,
            entry=entry,
            expected=expected,
        )
        _written(entry, version, tail, pk, seq, prev_hash, digest, created_at, using=using, committed=True)
        return
    sql = _statement(connection.vendor, fence_sql, checked, project, version=version, member=bool(member))
    # Not in psycopg's pipeline mode: after a pipelined statement PostgreSQL did not end the
    # transaction when it sat idle past idle_in_transaction_session_timeout, and a paused lock holder
    # must be cut off (test_chaos). An entry of its own needs no pipeline: it runs in autocommit.
    with _prepared_cursor(connection) as cursor:
        try:
            cursor.execute(sql, params)
            is_fenced, current_entry, pk, seq, prev_hash, digest, created_at, heads = cursor.fetchone()
            if pk is None and is_fenced and heads == 0:  # no chain head yet (the migration creates it; this is the fallback)
                cursor.execute(HEAD_CREATE_POSTGRESQL, [GENESIS_HASH])
                cursor.execute(sql, params)
                is_fenced, current_entry, pk, seq, prev_hash, digest, created_at, heads = cursor.fetchone()
        except IntegrityError as error:
            closed = _trail_closed(error, entry)
            if closed is None:
                raise
            raise closed from error
    if pk is None:
        if not is_fenced:
            fence.refused(using=using)
        raise StateMoved(f"Change {entry.change_id} moved (latest entry {current_entry}, expected {expected}).")
    _written(entry, version, tail, pk, seq, prev_hash, digest, created_at, using=using, committed=connection.get_autocommit())


def _written(entry: AuditEntry, version: int, tail: str, pk, seq, prev_hash, digest, created_at, *, using: str, committed: bool) -> None:
    """Fill in what the database wrote, after checking its hash."""
    entry.pk, entry.seq, entry.prev_hash, entry.entry_hash, entry.created_at = pk, seq, prev_hash, digest, created_at
    entry.hash_version = version
    # The same bytes as chain.entry_hash, from the tail already built: a server that formatted the
    # sequence, the previous hash or the time differently would stop the write here.
    # (An entry that committed with its statement, on its own or with its transaction, is written by
    # now: the error then says so, and `audit verify` reports the entry; the formatting is fixed, so
    # this is a tripwire.)
    expected_input = f'[{version},{seq},"{prev_hash}","{timestamp_text(created_at)}",{tail}]'
    if hashlib.sha256(expected_input.encode("utf-8")).hexdigest() != digest:
        written = "it was written and audit verify will report it" if committed else "nothing was written"
        raise HashMismatch(f"audit entry #{seq}: the database computed a hash that differs from chain version {version}; {written}")
    entry._state.adding = False
    entry._state.db = using


#: SQLSTATE of ``flamingock_refuse`` (migration 0005).
REFUSED_SQLSTATE = "FLREF"
UNIQUE_VIOLATION = "23505"


def _trail_closed(error: DatabaseError, entry: AuditEntry) -> TrailClosed | None:
    """The trail fails closed when the statement's insert conflicts on the entries' table: under the
    head lock the writer's own rows end at the head, so the row holding the next place was inserted
    around it. Read off the error only (the transaction may be aborted): no query on any path."""
    cause = error.__cause__
    if getattr(cause, "sqlstate", None) != UNIQUE_VIOLATION or getattr(cause.diag, "table_name", None) != AuditEntry._meta.db_table:
        return None
    found = re.search(r"\(seq\)=\((\d+)\)", cause.diag.message_detail or "")
    return TrailClosed(int(found.group(1)) if found else None, entry.event)


def _send_with_commit(connection, sql: str, params: list, *, fence: Fence | None, entry: AuditEntry, expected: Any) -> tuple:
    """Send the refusing statement and ``COMMIT`` together and wait once: psycopg's pipeline mode,
    one ``Sync`` for both. A refusal is an error, after which PostgreSQL skips the ``COMMIT``: the
    transaction is over, rolled back here, and why it was refused is read afterwards (the fence's
    sequence and the run, or the change's state), outside it.

    Pipeline mode is entered only now, after the change's own statements have had their answers:
    a holder paused before this point sits idle in its transaction, which PostgreSQL ends at
    idle_in_transaction_session_timeout (test_chaos); once sent, nothing waits on the client."""
    import psycopg  # imported already by the prepared cursor; here for the plain cursor of COMMIT

    raw = connection.connection
    with _prepared_cursor(connection) as cursor:
        try:
            with connection.wrap_database_errors, raw.pipeline():
                cursor.execute(sql, params)
                psycopg.Cursor(raw).execute("COMMIT")  # queued behind the statement: one Sync for both
        except DatabaseError as error:
            refused = getattr(error.__cause__, "sqlstate", None) == REFUSED_SQLSTATE
            closed = None if refused else _trail_closed(error, entry)
            if closed is not None:
                raw.rollback()  # the COMMIT was skipped: end the transaction, as for a refusal
                raise closed from error
            if not refused:
                raise
            why = error.__cause__.diag.message_detail
            raw.rollback()  # the transaction is over: what follows only reads, and the caller's atomic block rolls back
            if why == "fence" and fence is not None:
                fence.refused(using=connection.alias)
            if why == "state":
                states = MemberChangeState.objects.filter(member=entry.member) if entry.member else ChangeState.objects.all()
                current = states.using(connection.alias).filter(change_id=entry.change_id).values_list("entry_id", flat=True).first()
                raise StateMoved(f"Change {entry.change_id} moved (latest entry {current}, expected {expected}).") from None
            raise RuntimeError(f"the audit trail refused the entry ({why}); the transaction it ended was rolled back") from None
        is_fenced, current_entry, pk, seq, prev_hash, digest, created_at, heads, _ = cursor.fetchone()
    return pk, seq, prev_hash, digest, created_at
