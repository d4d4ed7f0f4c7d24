"""Evidence export: CSV or JSON Lines, streamed with constant memory, ending with a signed
statement of the chain head and of the exported rows, so that an auditor can check the file with
the public key alone, and against the live trail later."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connections, router
from django.db.models.expressions import RawSQL

from audit_app.chain import HASHED_FIELDS, MEMBER_FIELD, ROW_COLUMNS, canonical_json, entry_hash, json_text_canonical, timestamp_text
from audit_app.integrity import checkpoint_write
from audit_app.models import AuditEntry
from audit_app.signing import sign, signature_valid

FORMATS = ("csv", "jsonl")
#: The member (fleets, chain version 2) follows the fields of version 1; an export written before
#: fleets has no such column, and reads as version 1 rows without a member.
COLUMNS = ("seq", "id", "created_at", *HASHED_FIELDS, MEMBER_FIELD, "hash_version", "prev_hash", "entry_hash")
_NULLABLE_INT = {"actor_user_id", "pid", "fencing_token", "seq", "id", "hash_version"}
TRAILER_MARK = "#flamingock-export"
#: The CSV columns before ``duration_ms``, between it and ``details``, and after ``details``.
_HEAD = COLUMNS[: COLUMNS.index("duration_ms")]
_MIDDLE = COLUMNS[COLUMNS.index("duration_ms") + 1 : COLUMNS.index("details")]
_TAIL = COLUMNS[COLUMNS.index("details") + 1 :]
#: Columns whose text often needs quoting in CSV (commas, quotes, line breaks).
_FREE_TEXT = set(_MIDDLE)
#: Rows read, and lines held, at a time: memory stays at one batch whatever the export's size.
BATCH_ROWS = 2_000
#: On PostgreSQL, a batch holds up to this many rows and about BATCH_BYTES of lines.
POSTGRES_BATCH_ROWS = 20_000
BATCH_BYTES = 4_000_000
#: Rows per chunk received from PostgreSQL while it goes on sending a batch.
STREAM_ROWS = 1_000


@dataclass
class ExportFilters:
    since: datetime | None = None
    until: datetime | None = None
    change_id: str = ""
    target: str = ""
    actor: str = ""
    events: list[str] = field(default_factory=list)
    environment: str = ""
    run_id: str = ""
    #: The admin list's query string, recorded in the trailer when the export is of that list.
    query: str = ""

    def queryset(self):
        entries = AuditEntry.objects.using(router.db_for_read(AuditEntry)).exclude(seq=None).order_by("seq")
        if self.since:
            entries = entries.filter(created_at__gte=self.since)
        if self.until:
            entries = entries.filter(created_at__lt=self.until)
        for name in ("change_id", "target", "actor", "environment", "run_id"):
            if getattr(self, name):
                entries = entries.filter(**{name: getattr(self, name)})
        if self.events:
            entries = entries.filter(event__in=self.events)
        return entries

    def as_dict(self) -> dict:
        return {key: (value.isoformat() if isinstance(value, datetime) else value) for key, value in self.__dict__.items() if value}


def _record(row: tuple) -> dict:
    values = dict(zip(ROW_COLUMNS, row, strict=True))
    record = {name: values[name] for name in COLUMNS}
    record["created_at"] = timestamp_text(values["created_at"])
    record["run_id"] = str(values["run_id"]) if values["run_id"] else None
    return record


def export_message(count: int, digest: str, checkpoint_seq: int, checkpoint_hash: str) -> bytes:
    return f"flamingock-export:v1:{count}:{digest}:{checkpoint_seq}:{checkpoint_hash}".encode()


def _csv_text(text: str) -> str:
    """A CSV field as Python's csv writer quotes it (minimal quoting, quotes doubled), and also
    quoted when it holds a lone carriage return, which the reader would take for the end of a row."""
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_field(value) -> str:
    if value is None:
        return ""
    return _csv_text(value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value))


def _csv_line(record: dict) -> str:
    details = record["details"]
    fields = [canonical_json(details) if name == "details" and details is not None else record[name] for name in COLUMNS]
    return ",".join([_csv_field(value) for value in fields]) + "\n"


def _lines(rows, fmt: str) -> Iterator[tuple[list[str], list[str]]]:
    """(lines, entry hashes) of the selected rows, a batch at a time, through the ORM."""
    lines, hashes = [], []
    for row in rows.values_list(*ROW_COLUMNS).iterator(chunk_size=BATCH_ROWS):
        record = _record(row)
        lines.append(canonical_json(record) + "\n" if fmt == "jsonl" else _csv_line(record))
        hashes.append(record["entry_hash"])
        if len(lines) >= BATCH_ROWS:
            yield lines, hashes
            lines, hashes = [], []
    if lines:
        yield lines, hashes


def _sql_csv_text(column: str) -> str:
    """:func:`_csv_text` in SQL."""
    return (
        f"CASE WHEN strpos({column}, ',') + strpos({column}, '\"') + strpos({column}, E'\\n') + strpos({column}, E'\\r') > 0 "
        f"THEN '\"' || replace({column}, '\"', '\"\"') || '\"' ELSE {column} END"
    )


def _csv_segments(connection) -> dict[str, str]:
    """The SQL of a CSV line in the pieces PostgreSQL writes: every column but ``duration_ms``
    (Python's float repr) and ``details`` (canonical JSON). The free-text columns are quoted here;
    the others (numbers, names, hashes) are joined as they are, and :func:`_csv_lines_postgresql`
    checks that none needed quoting, which is cheaper there than a test per column here."""
    table = connection.ops.quote_name(AuditEntry._meta.db_table)

    def column(name: str) -> str:
        quoted = f"{table}.{connection.ops.quote_name(name)}"
        if name == "created_at":
            return f"""to_char({quoted} AT TIME ZONE 'UTC', 'FMYYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
        if name in _FREE_TEXT:
            return _sql_csv_text(f"{quoted}::text")
        return f"coalesce({quoted}::text, '')"

    def line(names) -> str:
        return f"concat_ws(',', {', '.join(column(name) for name in names)})"

    return {
        "_head": line(_HEAD),
        "_duration": f"{table}.{connection.ops.quote_name('duration_ms')}",
        "_middle": line(_MIDDLE),
        "_details": f"{table}.{connection.ops.quote_name('details')}::text",
        "_tail": line(_TAIL),
        "_hash": f"{table}.{connection.ops.quote_name('entry_hash')}::text",
    }


def _csv_lines_postgresql(rows) -> Iterator[tuple[list[str], list[str]]]:
    """What :func:`_lines` yields for CSV, with PostgreSQL writing most of each line: a batch is a
    keyset page of the selection (``seq`` after the last one written), read while the server goes
    on sending it. The connection is free again between batches."""
    connection = connections[rows.db]
    segments = _csv_segments(connection)
    selected = rows.annotate(**{name: RawSQL(sql, ()) for name, sql in segments.items()}).values_list(*segments)
    commas = len(_HEAD) - 1 + len(_TAIL) - 1
    canonical = json_text_canonical
    last, limit = None, 1_000
    while True:
        page = selected if last is None else selected.filter(seq__gt=last)
        sql, params = page[:limit].query.get_compiler(using=rows.db).as_sql()
        lines, hashes, unusual = [], [], []
        with connection.cursor() as cursor:
            for head, duration, middle, details, tail, entry_hash in cursor.cursor.stream(sql, params, size=STREAM_ROWS):
                plain = head + tail
                if plain.count(",") != commas or '"' in plain or "\n" in plain or "\r" in plain:
                    unusual.append(len(lines))  # a name or hash that needs quoting: written below
                details = canonical(details)
                if details is None:
                    details = ""
                elif '"' in details or "," in details:  # as _csv_text: canonical JSON holds no raw line break
                    details = '"' + details.replace('"', '""') + '"'
                lines.append(f"{head},{'' if duration is None else repr(duration)},{middle},{details},{tail}\n")
                hashes.append(entry_hash)
        if unusual:
            seqs = {int(lines[index][: lines[index].index(",")]): index for index in unusual}
            for row in rows.filter(seq__in=list(seqs)).values_list(*ROW_COLUMNS):
                lines[seqs[row[1]]] = _csv_line(_record(row))
        if lines:
            yield lines, hashes
        if len(lines) < limit:
            return
        last = int(lines[-1][: lines[-1].index(",")])  # the seq, the line's first field
        # As many rows as make about BATCH_BYTES, whatever their size.
        limit = max(100, min(POSTGRES_BATCH_ROWS, BATCH_BYTES * len(lines) // sum(map(len, lines))))


def audit_export(*, fmt: str, filters: ExportFilters, entries=None) -> Iterator[str]:
    """Yield the export in pieces of whole lines (many at a time); the last piece is the signed
    trailer line alone. ``entries`` (the admin list's queryset) replaces the selection by
    ``filters``, which are then only recorded."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    checkpoint = checkpoint_write(reason="export", force=True)
    rows = filters.queryset() if entries is None else entries.exclude(seq=None).order_by("seq")
    if checkpoint is not None:
        rows = rows.filter(seq__lte=checkpoint.seq)  # the export is of the trail as signed
    digest, count = hashlib.sha256(), 0
    if fmt == "csv":
        yield ",".join(COLUMNS) + "\n"
    batches = _csv_lines_postgresql(rows) if fmt == "csv" and connections[rows.db].vendor == "postgresql" else _lines(rows, fmt)
    for lines, hashes in batches:
        digest.update("".join(hashes).encode())
        count += len(hashes)
        yield "".join(lines)
    trailer = {"record": "chain_head", "filters": filters.as_dict(), "count": count, "rows_digest": digest.hexdigest()}
    if checkpoint is not None:
        signature, public = sign(export_message(count, digest.hexdigest(), checkpoint.seq, checkpoint.entry_hash))
        trailer.update(
            checkpoint={
                "id": checkpoint.pk,
                "seq": checkpoint.seq,
                "entry_hash": checkpoint.entry_hash,
                "created_at": timestamp_text(checkpoint.created_at),
                "signature": checkpoint.signature,
            },
            signature=signature,
            public_key=public,
        )
    yield f"{TRAILER_MARK} {canonical_json(trailer)}\n"


@dataclass
class ExportCheck:
    ok: bool
    rows: int
    problems: list[str]


def _typed(name: str, value: str):
    if value == "":
        return None if name in _NULLABLE_INT or name in {"run_id", "duration_ms", MEMBER_FIELD} else ""
    if name in _NULLABLE_INT:
        return int(value)
    if name == "duration_ms":
        return float(value)
    if name == "details":
        return json.loads(value)
    return value


#: Rows named one by one in a check's problems; beyond them the problems say how many more.
PROBLEMS_NAMED = 100
#: Rows looked up at a time in the live trail.
LIVE_BATCH = 5_000


class _ExportReader:
    """The rows of an export file, one at a time, in constant memory. ``trailer``, ``unreadable``
    (rows that could not be read: a file cut or damaged) and ``trailer_damaged`` are known once
    every row was read. Opening a file that is not there raises ``OSError``."""

    def __init__(self, path):
        self.path = path
        self.trailer: dict | None = None
        self.trailer_damaged = False
        self.unreadable = 0

    def _trailer_read(self, line: str) -> None:
        try:
            trailer = json.loads(line[len(TRAILER_MARK) :])
        except ValueError:
            trailer = None
        self.trailer, self.trailer_damaged = (trailer, False) if isinstance(trailer, dict) else (None, True)

    def __iter__(self) -> Iterator[dict]:
        with open(self.path, encoding="utf-8", newline="") as handle:
            first = handle.readline()
            handle.seek(0)
            yield from self._jsonl(handle) if first.startswith("{") else self._csv(handle)

    def _jsonl(self, handle) -> Iterator[dict]:
        for line in handle:
            if line.startswith(TRAILER_MARK):
                self._trailer_read(line)
            elif line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    self.unreadable += 1
                    continue
                yield record

    def _csv(self, handle) -> Iterator[dict]:
        for raw in csv.DictReader(self._body(handle)):
            try:
                if None in raw or None in raw.values():  # too many or too few fields
                    raise ValueError(raw)
                # An export from before fleets has no member column: its rows are all version 1.
                record = {name: _typed(name, raw[name] if name != MEMBER_FIELD else raw.get(name, "")) for name in COLUMNS}
            except (ValueError, KeyError):
                self.unreadable += 1
                continue
            yield record

    def _body(self, handle) -> Iterator[str]:
        """Every line but the trailer. Only the last line is the trailer (a line of a quoted field
        may start like one), so each line is passed on once the next one is read."""
        previous = None
        for line in handle:
            if previous is not None:
                yield previous
            previous = line
        if previous is not None:
            if previous.startswith(TRAILER_MARK):
                self._trailer_read(previous)
            else:
                yield previous


class _RowProblems:
    """The problems of single rows: the first :data:`PROBLEMS_NAMED` named, the rest counted."""

    def __init__(self):
        self.named: list[str] = []
        self.more = 0

    def add(self, problem: str) -> None:
        if len(self.named) < PROBLEMS_NAMED:
            self.named.append(problem)
        else:
            self.more += 1

    def as_list(self) -> list[str]:
        return self.named + ([f"... and {self.more} more problem(s) of single rows"] if self.more else [])


def _first_difference_from_trail(rows: list[tuple[int, str]]) -> int | None:
    """The first of these (seq, entry hash) whose live entry is missing or differs."""
    entries = AuditEntry.objects.using(router.db_for_read(AuditEntry))
    low, high = min(seq for seq, _ in rows), max(seq for seq, _ in rows)
    # A dense batch (an unfiltered export) is one index range scan; a sparse one is looked up by seq.
    selected = entries.filter(seq__gte=low, seq__lte=high) if high - low < 4 * len(rows) else entries.filter(seq__in=[seq for seq, _ in rows])
    live = dict(selected.values_list("seq", "entry_hash"))
    return next((seq for seq, digest in rows if live.get(seq) != digest), None)


def audit_export_verify(path, *, public_key: str | None = None, against_trail: bool = True) -> ExportCheck:
    """Check an export: every row's hash, the signature over the rows (with the auditor's copy of
    the public key if given), the links of a complete export, and optionally the live trail.

    The file is read once, a row at a time, and the live trail looked up a batch of rows at a time:
    memory stays the same whatever the export's size."""
    reader = _ExportReader(path)
    row_problems = _RowProblems()
    digest = hashlib.sha256()
    previous = None
    rows = 0
    pending: list[tuple[int, str]] = []
    differs: int | None = None
    undecodable = False
    try:
        for record in reader:
            rows += 1
            fields = {name: record.get(name) for name in (*HASHED_FIELDS, MEMBER_FIELD)}
            created = datetime.fromisoformat(record["created_at"].replace("Z", "+00:00"))
            try:
                recomputed = entry_hash(record["seq"], record["prev_hash"], created, fields, version=record["hash_version"])
            except ValueError:  # a version no writer writes, or a member on a version 1 row
                recomputed = None
            if recomputed != record["entry_hash"]:
                row_problems.add(f"row #{record['seq']}: its content does not match its hash (edited)")
            if previous is not None and record["seq"] == previous["seq"] + 1 and record["prev_hash"] != previous["entry_hash"]:
                row_problems.add(f"row #{record['seq']}: does not link to row #{previous['seq']}")
            digest.update(record["entry_hash"].encode())
            previous = record
            if against_trail and differs is None:
                pending.append((record["seq"], record["entry_hash"]))
                if len(pending) >= LIVE_BATCH:
                    differs, pending = _first_difference_from_trail(pending), []
    except UnicodeDecodeError:
        undecodable = True
    if against_trail and differs is None and pending:
        differs = _first_difference_from_trail(pending)
    trailer = reader.trailer
    problems: list[str] = []
    if undecodable:
        problems.append(f"the export is not UTF-8 text after row {rows}: it was damaged")
    if reader.unreadable:
        problems.append(f"{reader.unreadable} row(s) could not be read: the export was cut or damaged")
    problems += row_problems.as_list()
    if reader.trailer_damaged:
        problems.append("the export's trailer could not be read: it was damaged")
    elif trailer is None:
        problems.append("the export has no trailer: it was truncated")
    else:
        if trailer.get("count") != rows or trailer.get("rows_digest") != digest.hexdigest():
            problems.append("the rows do not match the trailer: rows were added, removed or edited")
        checkpoint = trailer.get("checkpoint")
        key = public_key or trailer.get("public_key")
        if checkpoint and key:
            if public_key and trailer.get("public_key") != public_key:
                problems.append("the export was signed with another key than the one given")
            message = export_message(trailer["count"], trailer["rows_digest"], checkpoint["seq"], checkpoint["entry_hash"])
            if not signature_valid(message, trailer.get("signature", ""), key):
                problems.append("the export's signature is not valid for its rows and chain head")
    if differs is not None:
        problems.append(f"row #{differs} differs from the live trail")
    return ExportCheck(ok=not problems, rows=rows, problems=problems)
