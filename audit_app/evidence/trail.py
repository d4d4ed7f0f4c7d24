"""The lines of a pack's ``audit.jsonl``, read from the trail a range of entries at a time, never the
period at once; and, apart, the entries the controls are fed.

The period is the run of sequence numbers from the first entry at or after ``since`` to the last
entry before ``until``. Before it: the entries from the latest signed checkpoint before the period
(or the chain's start); after it: the entries up to the first checkpoint at or after its end (one
is signed now if none is). Context entries, each recomputable but not linked: the role grants
before the period (who held which role when deciding) and the request entries, before the period,
of the runs in it.

Two reads (docs/decisions.md, "Evidence pack: the jsonl as PostgreSQL text"): :func:`audit_text`
gives ``audit.jsonl``, on PostgreSQL as the lines the server prints and streams with ``COPY``
(:func:`entries_copy_postgresql`), elsewhere as canonical JSON from Django's values
(:func:`entries_text`): each line parses to the same record either way, which is what the verifier
hashes; :func:`feed_lines` gives, in chain order, only the entries that ``Evidence.feed`` uses
(``offline.FED_EVENTS`` in any environment, ``offline.SCOPED_EVENTS`` in the pack's). The context
entries are read once (:func:`context_lines`) and given to both.
"""

from __future__ import annotations

import heapq
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from json.encoder import c_make_encoder, encode_basestring

from django.db import connections, router
from django.db.models import Count, Max, Min, Q

from audit_app.chain import GENESIS_HASH, ROW_COLUMNS, TEXT_ROW_SQL, canonical_json, timestamp_text
from audit_app.evidence.offline import FED_EVENTS, FED_PREFIXES, SCOPED_EVENTS, SCOPED_PREFIXES
from audit_app.integrity import checkpoint_write
from audit_app.models import AuditCheckpoint, AuditEntry

#: Rows fetched per round trip.
CHUNK = 2_000
#: Sequence numbers per ``COPY`` of ``audit.jsonl`` on PostgreSQL (about 6 MB of lines), and the
#: connections printing ranges at once (:func:`entries_copy_postgresql`).
COPY_RANGE = 8_000
COPY_STREAMS = 2


@dataclass
class Period:
    first_seq: int
    last_seq: int
    before: dict
    after: dict
    #: The period's entries: ``since <= created_at < until`` (all of them between the two sequence numbers).
    entries: int = 0

    @property
    def size(self) -> int:
        return max(0, self.last_seq - self.first_seq + 1)


def _alias() -> str:
    return router.db_for_read(AuditEntry)


def _entries():
    return AuditEntry.objects.using(_alias()).exclude(seq=None)


def _checkpoint_line(checkpoint: AuditCheckpoint, position: str) -> dict:
    return {
        "record": "checkpoint",
        "position": position,
        "seq": checkpoint.seq,
        "entry_hash": checkpoint.entry_hash,
        "created_at": timestamp_text(checkpoint.created_at),
        "public_key": checkpoint.public_key,
        "signature": checkpoint.signature,
    }


def period_find(*, since: datetime, until: datetime) -> Period:
    """The period's sequence numbers and the signed checkpoints around it."""
    entries = _entries()
    bounds = entries.filter(created_at__gte=since, created_at__lt=until).aggregate(first=Min("seq"), last=Max("seq"), count=Count("seq"))
    if bounds["first"] is None:
        earlier = entries.filter(created_at__lt=since).aggregate(last=Max("seq"))["last"] or 0
        bounds = {"first": earlier + 1, "last": earlier, "count": 0}
    first, last = bounds["first"], bounds["last"]
    checkpoints = AuditCheckpoint.objects.using(router.db_for_read(AuditCheckpoint))
    before = checkpoints.filter(seq__lt=first).order_by("-seq", "-id").first()
    after = checkpoints.filter(seq__gte=max(last, 1)).order_by("seq", "id").first()
    if after is None:
        after = checkpoint_write(reason="evidence", force=True)
    if after is None:  # an empty trail
        after_line = {"record": "genesis", "position": "after", "seq": 0, "entry_hash": GENESIS_HASH}
    else:
        after_line = _checkpoint_line(after, "after")
    before_line = (
        _checkpoint_line(before, "before")
        if before is not None
        else {"record": "genesis", "position": "before", "seq": 0, "entry_hash": GENESIS_HASH}
    )
    return Period(first_seq=first, last_seq=last, before=before_line, after=after_line, entries=bounds["count"])


def entry_line(row: tuple, part: str) -> dict:
    record = dict(zip(ROW_COLUMNS, row, strict=True))
    record["created_at"] = timestamp_text(record["created_at"])
    record["run_id"] = str(record["run_id"]) if record["run_id"] else None
    record["record"], record["part"] = "entry", part
    return record


def context_lines(period: Period) -> list[dict]:
    """The context entries in chain order: the role grants and the earlier requests, merged. Read
    once per pack: both ``audit.jsonl`` and the controls' feed take them from the one list."""
    return list(heapq.merge(_grants(period), _requests(period), key=lambda line: line["seq"]))


def _grants(period: Period) -> Iterator[dict]:
    earlier = _entries().filter(seq__lt=period.before["seq"] + 1).order_by("seq")
    grants = earlier.filter(event__in=("permission.granted", "permission.revoked"), details__kind="group_membership")
    for row in grants.values_list(*ROW_COLUMNS).iterator(chunk_size=CHUNK):
        yield entry_line(row, "context")


def _requests(period: Period) -> Iterator[dict]:
    earlier = _entries().filter(seq__lt=period.before["seq"] + 1).order_by("seq")
    queued = _entries().filter(seq__gte=period.first_seq, seq__lte=period.last_seq, event="run.queued").values_list("details", flat=True)
    requests = sorted({details["request_id"] for details in queued.iterator(chunk_size=CHUNK) if (details or {}).get("request_id") is not None})
    if requests:
        rows = earlier.filter(event__startswith="request.", details__request_id__in=requests).values_list(*ROW_COLUMNS)
        for row in rows.iterator(chunk_size=CHUNK):
            yield entry_line(row, "context")


def _part(seq: int, period: Period) -> str:
    return "before" if seq < period.first_seq else "period" if seq <= period.last_seq else "after"


def feed_lines(period: Period, environment: str, context: list[dict]) -> Iterator[dict]:
    """The lines :class:`~audit_app.evidence.offline.Evidence` uses, in the order of ``audit.jsonl``:
    the ``context``, then the entries from the checkpoint before to the one after whose event it reads
    (any environment) or reads in its scope (this environment): what it would ignore is not read."""
    yield from context
    lo, hi = period.before["seq"] + 1, period.after["seq"]
    if hi < lo:
        return
    fed = Q(event__in=FED_EVENTS)
    for prefix in FED_PREFIXES:
        fed |= Q(event__startswith=prefix)
    scoped = Q(event__in=SCOPED_EVENTS)
    for prefix in SCOPED_PREFIXES:
        scoped |= Q(event__startswith=prefix)
    rows = _entries().filter(Q(seq__gte=lo, seq__lte=hi) & (fed | (Q(environment=environment) & scoped))).order_by("seq")
    for row in rows.values_list(*ROW_COLUMNS).iterator(chunk_size=CHUNK):
        yield entry_line(row, _part(row[1], period))


def audit_text(period: Period, context: list[dict], *, since: datetime, until: datetime) -> Iterator[tuple[bytes, int]]:
    """``audit.jsonl`` as chunks of UTF-8, each with how many of the period's entries it holds (for
    the progress: in its run of sequence numbers, and on the generic path also
    ``since <= created_at < until``, as ``Evidence.in_period``)."""
    yield "".join(canonical_json(line) + "\n" for line in context).encode(), 0
    yield (canonical_json(period.before) + "\n").encode(), 0
    connection = connections[_alias()]
    if connection.vendor == "postgresql":
        yield from entries_copy_postgresql(connection, period)
    else:
        for text, count in entries_text(period, since=since, until=until):
            yield text.encode(), count
    yield (canonical_json(period.after) + "\n").encode(), 0


def entries_text(period: Period, *, since: datetime, until: datetime) -> Iterator[tuple[str, int]]:
    """The entries' lines from Django's values, on any database: canonical JSON."""
    since_text, until_text = timestamp_text(since), timestamp_text(until)
    for lo, hi, part in _ranges(period):
        buffer, count = [], 0
        rows = _entries().filter(seq__gte=lo, seq__lte=hi).order_by("seq").values_list(*ROW_COLUMNS)
        for row in rows.iterator(chunk_size=CHUNK):
            line = entry_line(row, part)
            count += part == "period" and since_text <= line["created_at"] < until_text
            buffer.append(_ENCODE(line) + "\n")
            if len(buffer) >= CHUNK:
                yield "".join(buffer), count
                buffer, count = [], 0
        yield "".join(buffer), count


def _ranges(period: Period) -> list[tuple[int, int, str]]:
    ranges = [
        (period.before["seq"] + 1, period.first_seq - 1, "before"),
        (period.first_seq, period.last_seq, "period"),
        (period.last_seq + 1, period.after["seq"], "after"),
    ]
    return [(lo, hi, part) for lo, hi, part in ranges if lo <= hi]


def _c_encode():
    """``canonical_json`` by the C encoder that ``JSONEncoder.encode`` would build on every call,
    built once (a line is an acyclic dict); ``canonical_json`` itself if this interpreter has none
    or it prints a sample otherwise (tests/audit_app/evidence/test_pack_text.py compares the lines)."""
    try:
        iterencode = c_make_encoder(None, None, encode_basestring, None, ":", ",", True, False, False)
    except TypeError:  # no C encoder
        return canonical_json
    sample = {"b": [1, -2.5, 1e16, None, True, {"d": 'é"\\\n\u2028\x01', "c": 0.1}], "a": 2**70, "": "x"}
    if "".join(iterencode(sample, 0)) != canonical_json(sample):
        return canonical_json
    return lambda value: "".join(iterencode(value, 0))


_ENCODE = _c_encode()


#: The keys of an entry's line, in canonical (sorted) order.
LINE_KEYS = tuple(sorted((*ROW_COLUMNS, "record", "part")))


def _line_sql(connection) -> str:
    """One entry's line as PostgreSQL prints it: ``row_to_json`` of the columns in the order of
    :data:`LINE_KEYS` (no spaces, strings escaped as Python escapes them). ``details`` is its
    ``jsonb`` text (keys by length, with spaces: the same value, not the same bytes); ``duration_ms``
    is printed as a JSON float (PostgreSQL prints ``5`` for 5.0, which would parse as an integer
    and hash differently), and a value JSON cannot hold stops the query with the entry named."""
    expressions = dict(zip(ROW_COLUMNS, (expression for expression, _ in TEXT_ROW_SQL), strict=True))
    expressions["details"] = '"details"'
    expressions["duration_ms"] = (
        'CASE WHEN "duration_ms" IS NULL THEN NULL'
        """ WHEN NOT ("duration_ms" > '-Infinity' AND "duration_ms" < 'Infinity')"""
        """ THEN ('entry #' || "seq" || ': duration_ms ' || "duration_ms" || ' has no JSON form')::int8::text::json"""
        # Below 1e15 PostgreSQL prints an integral float without exponent or point (Python: "5.0").
        """ WHEN "duration_ms" = trunc("duration_ms") AND abs("duration_ms") < 1e15 THEN ("duration_ms"::text || '.0')::json"""
        ' ELSE "duration_ms"::text::json END'
    )
    expressions["record"] = "'entry'"
    expressions["part"] = """CASE WHEN "seq" < %(first)s THEN 'before' WHEN "seq" <= %(last)s THEN 'period' ELSE 'after' END"""
    columns = ", ".join(f'{expressions[key]} AS "{key}"' for key in LINE_KEYS)
    table = connection.ops.quote_name(AuditEntry._meta.db_table)
    return f'SELECT row_to_json(line) FROM (SELECT {columns} FROM {table} WHERE "seq" >= %(lo)s AND "seq" <= %(hi)s) line ORDER BY line."seq"'


def entries_copy_postgresql(connection, period: Period, *, streams: int | None = None) -> Iterator[tuple[bytes, int]]:
    """The entries' lines built by PostgreSQL and streamed with ``COPY ... TO STDOUT``, a range of
    :data:`COPY_RANGE` sequence numbers per statement, each range's bytes yielded with the number of
    the period's sequence numbers in it: no row reaches Python as values, only as the bytes written
    to the pack. CSV with a delimiter and a quote that JSON text never holds raw (control characters,
    which JSON escapes) leaves each line exactly as PostgreSQL printed it; the text format would
    double every backslash. A statement per range rather than one: nothing is materialised (a cursor
    held across commits would be), and the connection is free between ranges for the progress the
    worker writes meanwhile.

    Printing a line costs the server about four times what ``SELECT *`` costs, so outside a
    transaction ranges are printed by ``streams`` (:data:`COPY_STREAMS`) connections of their own at
    once, and written in order; inside one (tests, or a caller's atomic block) the other connections
    would not see its rows, and Django's connection prints them one range after the other."""
    lo, hi = period.before["seq"] + 1, period.after["seq"]
    ranges = [(start, min(hi, start + COPY_RANGE - 1)) for start in range(lo, hi + 1, COPY_RANGE)]
    query = f"COPY ({_line_sql(connection)}) TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')"
    streams = COPY_STREAMS if streams is None else streams

    def params(start: int, end: int) -> dict:
        return {"first": period.first_seq, "last": period.last_seq, "lo": start, "hi": end}

    def in_period(start: int, end: int) -> int:
        return max(0, min(end, period.last_seq) - max(start, period.first_seq) + 1)

    connection.ensure_connection()
    if streams > 1 and len(ranges) > 1 and not connection.in_atomic_block:
        for (start, end), data in zip(ranges, _copy_parallel(connection, query, [params(*r) for r in ranges], streams), strict=True):
            yield data, in_period(start, end)
        return
    with _copy_cursor(connection.connection) as cursor:
        for start, end in ranges:
            yield _copy_range(cursor, query, params(start, end)), in_period(start, end)


@contextmanager
def _copy_cursor(raw) -> Iterator:
    """A client-side binding cursor (``COPY`` takes no server-side parameters) on ``raw``, with floats
    printed shortest-exact whatever the server's setting (PostgreSQL 12 and later)."""
    import psycopg  # only on PostgreSQL, where Django has imported it already

    with psycopg.ClientCursor(raw) as cursor:
        cursor.execute("SET extra_float_digits = 3")
        try:
            yield cursor
        finally:
            if raw.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
                cursor.execute("RESET extra_float_digits")


def _copy_range(cursor, query: str, params: dict) -> bytes:
    with cursor.copy(query, params) as copy:
        return b"".join(copy)


def _copy_parallel(connection, query: str, ranges: list[dict], streams: int) -> Iterator[bytes]:
    """Each range's bytes, in order, printed by ``streams`` new connections at once: range ``i`` by
    connection ``i % streams``, each at most one range ahead of the writer (memory: two ranges per
    connection). An error in any stops them all and is raised here."""
    stop = threading.Event()
    queues: list[queue.Queue] = [queue.Queue(maxsize=1) for _ in range(streams)]

    def put(box: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def printer(index: int) -> None:
        try:
            raw = connection.get_new_connection(connection.get_connection_params())
            try:
                raw.autocommit = True
                with _copy_cursor(raw) as cursor:
                    for params in ranges[index::streams]:
                        if stop.is_set() or not put(queues[index], ("data", _copy_range(cursor, query, params))):
                            return
            finally:
                raw.close()
        except BaseException as error:  # noqa: BLE001 -- handed to the writer, which raises it
            put(queues[index], ("error", error))

    threads = [threading.Thread(target=printer, args=(index,), name=f"evidence-copy-{index}", daemon=True) for index in range(streams)]
    for thread in threads:
        thread.start()
    try:
        for index in range(len(ranges)):
            kind, value = queues[index % streams].get()
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        for thread in threads:
            thread.join()
