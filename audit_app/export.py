"""Evidence export: CSV or JSON Lines, streamed with constant memory, ending with a signed
statement of the chain head and of the exported rows, so that an auditor can check the file with
the public key alone, and against the live trail later."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from django.db import router

from .chain import HASHED_FIELDS, ROW_COLUMNS, canonical_json, entry_hash, timestamp_text
from .integrity import checkpoint_write
from .models import AuditEntry
from .signing import sign, signature_valid

FORMATS = ("csv", "jsonl")
COLUMNS = ("seq", "id", "created_at", *HASHED_FIELDS, "hash_version", "prev_hash", "entry_hash")
_NULLABLE_INT = {"actor_user_id", "pid", "fencing_token", "seq", "id", "hash_version"}
TRAILER_MARK = "#flamingock-export"


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


def audit_export(*, fmt: str, filters: ExportFilters, entries=None) -> Iterator[str]:
    """Yield the export line by line; the last line is the signed trailer. ``entries`` (the admin
    list's queryset) replaces the selection by ``filters``, which are then only recorded."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    checkpoint = checkpoint_write(reason="export", force=True)
    rows = filters.queryset() if entries is None else entries.exclude(seq=None).order_by("seq")
    if checkpoint is not None:
        rows = rows.filter(seq__lte=checkpoint.seq)  # the export is of the trail as signed
    digest, count = hashlib.sha256(), 0
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        yield buffer.getvalue()
    for row in rows.values_list(*ROW_COLUMNS).iterator(chunk_size=5000):
        record = _record(row)
        digest.update(record["entry_hash"].encode())
        count += 1
        if fmt == "jsonl":
            yield canonical_json(record) + "\n"
        else:
            buffer.seek(0)
            buffer.truncate()
            writer.writerow(
                ["" if record[name] is None else (canonical_json(record[name]) if name == "details" else record[name]) for name in COLUMNS]
            )
            yield buffer.getvalue()
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
        return None if name in _NULLABLE_INT or name in {"run_id", "duration_ms"} else ""
    if name in _NULLABLE_INT:
        return int(value)
    if name == "duration_ms":
        return float(value)
    if name == "details":
        return json.loads(value)
    return value


def _read(path) -> tuple[list[dict], dict | None, int]:
    """The rows, the trailer, and how many rows could not be read (a file cut in a row)."""
    records, trailer, unreadable = [], None, 0
    with open(path, encoding="utf-8", newline="") as handle:
        first = handle.readline()
        handle.seek(0)
        if first.startswith("{"):
            for line in handle:
                if line.startswith(TRAILER_MARK):
                    trailer = json.loads(line[len(TRAILER_MARK) :])
                elif line.strip():
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        unreadable += 1
        else:
            lines = [line for line in handle]
            body = [line for line in lines if not line.startswith(TRAILER_MARK)]
            trailer_lines = [line for line in lines if line.startswith(TRAILER_MARK)]
            trailer = json.loads(trailer_lines[-1][len(TRAILER_MARK) :]) if trailer_lines else None
            for raw in csv.DictReader(body):
                try:
                    if None in raw or None in raw.values():  # too many or too few fields
                        raise ValueError(raw)
                    records.append({name: _typed(name, raw[name]) for name in COLUMNS})
                except (ValueError, KeyError):
                    unreadable += 1
    return records, trailer, unreadable


def audit_export_verify(path, *, public_key: str | None = None, against_trail: bool = True) -> ExportCheck:
    """Check an export: every row's hash, the signature over the rows (with the auditor's copy of
    the public key if given), the links of a complete export, and optionally the live trail."""
    problems: list[str] = []
    records, trailer, unreadable = _read(path)
    if unreadable:
        problems.append(f"{unreadable} row(s) could not be read: the export was cut or damaged")
    digest = hashlib.sha256()
    previous = None
    for record in records:
        fields = {name: record[name] for name in HASHED_FIELDS}
        created = datetime.fromisoformat(record["created_at"].replace("Z", "+00:00"))
        if entry_hash(record["seq"], record["prev_hash"], created, fields, version=record["hash_version"]) != record["entry_hash"]:
            problems.append(f"row #{record['seq']}: its content does not match its hash (edited)")
        if previous is not None and record["seq"] == previous["seq"] + 1 and record["prev_hash"] != previous["entry_hash"]:
            problems.append(f"row #{record['seq']}: does not link to row #{previous['seq']}")
        digest.update(record["entry_hash"].encode())
        previous = record
    if trailer is None:
        problems.append("the export has no trailer: it was truncated")
    else:
        if trailer.get("count") != len(records) or trailer.get("rows_digest") != digest.hexdigest():
            problems.append("the rows do not match the trailer: rows were added, removed or edited")
        checkpoint = trailer.get("checkpoint")
        key = public_key or trailer.get("public_key")
        if checkpoint and key:
            if public_key and trailer.get("public_key") != public_key:
                problems.append("the export was signed with another key than the one given")
            message = export_message(trailer["count"], trailer["rows_digest"], checkpoint["seq"], checkpoint["entry_hash"])
            if not signature_valid(message, trailer.get("signature", ""), key):
                problems.append("the export's signature is not valid for its rows and chain head")
    if against_trail and records:
        live = dict(
            AuditEntry.objects.using(router.db_for_read(AuditEntry))
            .filter(seq__in=[record["seq"] for record in records])
            .values_list("seq", "entry_hash")
        )
        for record in records:
            if live.get(record["seq"]) != record["entry_hash"]:
                problems.append(f"row #{record['seq']} differs from the live trail")
                break
    return ExportCheck(ok=not problems, rows=len(records), problems=problems)
