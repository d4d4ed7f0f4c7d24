"""The lines of a pack's ``audit.jsonl``, read from the trail a range of entries at a time, never the
period at once; and, apart, the entries the controls are fed.

The period is the run of sequence numbers from the first entry at or after ``since`` to the last
entry before ``until``. Before it: the entries from the latest signed checkpoint before the period
(or the chain's start); after it: the entries up to the first checkpoint at or after its end (one
is signed now if none is). Context entries, each recomputable but not linked: the role grants
before the period (who held which role when deciding) and the request entries, before the period,
of the runs in it.

Two reads (docs/decisions.md, "Evidence pack: the jsonl as PostgreSQL text"): :func:`audit_text`
gives ``audit.jsonl`` as text, on PostgreSQL from rows of plain text and numbers
(:func:`entries_text_postgresql`), elsewhere from Django's values (:func:`entries_text`), the same
bytes; :func:`feed_lines` gives, in chain order, only the entries that ``Evidence.feed`` uses
(``offline.FED_EVENTS`` in any environment, ``offline.SCOPED_EVENTS`` in the pack's).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from json.encoder import c_make_encoder, encode_basestring
from math import isfinite
from operator import itemgetter

from django.db import connections, router
from django.db.models import Max, Min, Q

from audit_app.chain import GENESIS_HASH, ROW_COLUMNS, TEXT_ROW_SQL, canonical_json, json_text_canonical, timestamp_text
from audit_app.evidence.offline import FED_EVENTS, FED_PREFIXES, SCOPED_EVENTS, SCOPED_PREFIXES
from audit_app.integrity import checkpoint_write
from audit_app.models import AuditCheckpoint, AuditEntry

#: Rows fetched per round trip.
CHUNK = 2_000
#: Rows per round trip, and per chunk of text, of ``audit.jsonl`` on PostgreSQL.
TEXT_CHUNK = 5_000


@dataclass
class Period:
    first_seq: int
    last_seq: int
    before: dict
    after: dict

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
    bounds = entries.filter(created_at__gte=since, created_at__lt=until).aggregate(first=Min("seq"), last=Max("seq"))
    if bounds["first"] is None:
        earlier = entries.filter(created_at__lt=since).aggregate(last=Max("seq"))["last"] or 0
        bounds = {"first": earlier + 1, "last": earlier}
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
    return Period(first_seq=first, last_seq=last, before=before_line, after=after_line)


def entry_line(row: tuple, part: str) -> dict:
    record = dict(zip(ROW_COLUMNS, row, strict=True))
    record["created_at"] = timestamp_text(record["created_at"])
    record["run_id"] = str(record["run_id"]) if record["run_id"] else None
    record["record"], record["part"] = "entry", part
    return record


def _context(period: Period) -> Iterator[dict]:
    """The context entries in chain order: the role grants and the earlier requests, merged."""
    return heapq.merge(_grants(period), _requests(period), key=lambda line: line["seq"])


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


def feed_lines(period: Period, environment: str) -> Iterator[dict]:
    """The lines :class:`~audit_app.evidence.offline.Evidence` uses, in the order of ``audit.jsonl``:
    the context, then the entries from the checkpoint before to the one after whose event it reads
    (any environment) or reads in its scope (this environment): what it would ignore is not read."""
    yield from _context(period)
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


def audit_text(period: Period, *, since: datetime, until: datetime) -> Iterator[tuple[str, int]]:
    """``audit.jsonl`` as chunks of text, each with how many of its entries are of the period (in
    its run of sequence numbers and ``since <= created_at < until``, as ``Evidence.in_period``)."""
    yield "".join(canonical_json(line) + "\n" for line in _context(period)), 0
    yield canonical_json(period.before) + "\n", 0
    connection = connections[_alias()]
    if connection.vendor == "postgresql":
        yield from entries_text_postgresql(connection, period, since=since, until=until)
    else:
        yield from entries_text(period, since=since, until=until)
    yield canonical_json(period.after) + "\n", 0


def entries_text(period: Period, *, since: datetime, until: datetime) -> Iterator[tuple[str, int]]:
    """The entries' lines from Django's values, on any database."""
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


def entries_text_postgresql(connection, period: Period, *, since: datetime, until: datetime) -> Iterator[tuple[str, int]]:
    """The same text as :func:`entries_text`, from rows PostgreSQL sends as plain text and numbers
    (:data:`~audit_app.chain.TEXT_ROW_SQL`: the time and the run id already in their line form),
    read by psycopg's C loaders a range of sequence numbers per query: no model, datetime, UUID or
    Django converter per row. A query per range rather than a server-side cursor: one held across
    commits is materialised by the server first, and the connection stays free between ranges for
    the progress written meanwhile."""
    import psycopg  # only on PostgreSQL, where Django has imported it already

    columns = ", ".join(expression for expression, _ in TEXT_ROW_SQL)
    in_period = '"seq" >= %(first)s AND "seq" <= %(last)s AND "created_at" >= %(since)s AND "created_at" < %(until)s'
    table = connection.ops.quote_name(AuditEntry._meta.db_table)
    query = f'SELECT {columns}, \'entry\', %(part)s, {in_period} FROM {table} WHERE "seq" >= %(lo)s AND "seq" <= %(hi)s ORDER BY "seq"'
    params = {"first": period.first_seq, "last": period.last_seq, "since": since, "until": until}
    names = [*ROW_COLUMNS, "record", "part", "in_period"]
    head = [key for key in LINE_KEYS if key < "details"]
    tail = [key for key in LINE_KEYS if key > "duration_ms"]
    head_of, tail_of = itemgetter(*(names.index(key) for key in head)), itemgetter(*(names.index(key) for key in tail))
    details_at, duration_at = names.index("details"), names.index("duration_ms")
    encode, canonical, number = _encoder_in_order(), json_text_canonical, float.__repr__
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        for lo, hi, part in _ranges(period):
            for start in range(lo, hi + 1, TEXT_CHUNK):
                cursor.execute(query, {**params, "lo": start, "hi": min(hi, start + TEXT_CHUNK - 1), "part": part}, binary=True)
                buffer, count = [], 0
                for row in cursor.fetchall():
                    # Two objects whose keys are already in order, joined around details and duration_ms.
                    details, duration = canonical(row[details_at]), row[duration_at]
                    if duration is not None and not isfinite(duration):
                        raise ValueError(f"entry #{row[1]}: duration_ms {duration} has no JSON form")
                    buffer.append(
                        f"{encode(dict(zip(head, head_of(row), strict=True)))[:-1]},"
                        f'"details":{"null" if details is None else details},'
                        f'"duration_ms":{"null" if duration is None else number(duration)},'
                        f"{encode(dict(zip(tail, tail_of(row), strict=True)))[1:]}"
                    )
                    count += row[-1]
                buffer.append("")
                yield "\n".join(buffer), count


#: The keys of an entry's line, in canonical (sorted) order.
LINE_KEYS = tuple(sorted((*ROW_COLUMNS, "record", "part")))


def _encoder_in_order():
    """JSON of a dict whose keys are already in order (not sorted again), by the C encoder when
    there is one; nothing in it holds a dict (``details`` is printed apart)."""
    try:
        iterencode = c_make_encoder(None, None, encode_basestring, None, ":", ",", False, False, False)
    except TypeError:  # no C encoder
        return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    return lambda value: "".join(iterencode(value, 0))
