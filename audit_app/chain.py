"""The hash chain: a canonical, versioned serialisation of an entry and its SHA-256.

Version 1 hashes, in this order, the values exactly as stored: the chain version, the sequence
number, the previous entry's hash, the timestamp at microseconds in UTC, every recorded field,
and ``details`` as canonical JSON text (sorted keys, no insignificant whitespace, UTF-8). Version 2
(fleets, issue 22) hashes the same values and then the entry's ``member``: an entry of a member of
a target group is written in version 2, every other entry still in version 1, byte for byte as
before. The serialisation of a version never changes; a new one gets a new number and every
version stays verifiable.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

#: The version of an entry without a member (every entry before fleets).
CHAIN_VERSION = 1
#: The version of an entry that names a member of a target group.
MEMBER_CHAIN_VERSION = 2
CHAIN_VERSIONS = (CHAIN_VERSION, MEMBER_CHAIN_VERSION)
GENESIS_HASH = "0" * 64

#: The stored fields hashed after (version, seq, prev_hash, created_at), in order.
HASHED_FIELDS = (
    "event",
    "environment",
    "change_id",
    "stage",
    "order",
    "target",
    "state",
    "checksum",
    "transaction_strategy",
    "recovery_strategy",
    "run_id",
    "actor",
    "actor_user_id",
    "host",
    "pid",
    "fencing_token",
    "duration_ms",
    "reason",
    "error",
    "rollback_error",
    "details",
)
#: The field hashed after ``details`` from version 2 on.
MEMBER_FIELD = "member"
#: The hashed fields of each version, in order.
VERSION_FIELDS = {CHAIN_VERSION: HASHED_FIELDS, MEMBER_CHAIN_VERSION: (*HASHED_FIELDS, MEMBER_FIELD)}
#: Columns to select, in order, to recompute a hash: what :func:`entry_hash_of_row` expects.
ROW_COLUMNS = ("id", "seq", "hash_version", "prev_hash", "entry_hash", "created_at", *HASHED_FIELDS, MEMBER_FIELD)

#: The same row as PostgreSQL gives it in text form, for :func:`entry_hash_of_text_row`: (SQL
#: expression, type to read it as) per column, in the order of :data:`ROW_COLUMNS`. The server
#: formats the timestamp the way :func:`timestamp_text` does (year unpadded, like strftime's %Y)
#: and the run id the way ``str(UUID)`` does; ``details`` comes as JSON text.
_TEXT_TYPES = {"actor_user_id": "int8", "pid": "int8", "fencing_token": "int8", "duration_ms": "float8", "details": "text"}
TEXT_ROW_SQL = (
    ('"id"::int8', "int8"),
    ('"seq"::int8', "int8"),
    ('"hash_version"::int8', "int8"),
    ('"prev_hash"::text', "text"),
    ('"entry_hash"::text', "text"),
    ("""to_char("created_at" AT TIME ZONE 'UTC', 'FMYYYY-MM-DD"T"HH24:MI:SS.US"Z"')""", "text"),
    *((f'"{name}"::{_TEXT_TYPES.get(name, "text")}', _TEXT_TYPES.get(name, "text")) for name in HASHED_FIELDS),
    (f'"{MEMBER_FIELD}"::text', "text"),
)

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DECODER = json.JSONDecoder()


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def _c_iterencode():
    """The C encoder that ``JSONEncoder.encode`` builds on every call, built once, for values that
    cannot hold themselves (scalars, parsed JSON). ``None`` if this interpreter has none, or if it
    gives another text than ``canonical_json`` (its constructor is not a public interface)."""
    try:
        from json.encoder import c_make_encoder, encode_basestring

        iterencode = c_make_encoder(None, _CANONICAL.default, encode_basestring, None, ":", ",", True, False, False)
        samples = ([1, -2.5, 1e16, None, True, 'é"\\\n\u2028', {"b": [1, {"d": None, "c": 0.1}], "a": "x", "": 2**70}], "\t", 0.5, {})
        if all("".join(iterencode(sample, 0)) == canonical_json(sample) for sample in samples):
            return iterencode
    except Exception:  # the plain encoder is the fallback
        pass
    return None


_ITERENCODE = _c_iterencode()


def _canonical_acyclic(value: Any) -> str:
    return "".join(_ITERENCODE(value, 0)) if _ITERENCODE is not None else canonical_json(value)


def normalise_details(details: dict) -> dict:
    """The details as they will read back from the database (JSON round trip): a float ``-0.0``
    reads back as ``0.0`` and an integral float from 1e16 up as an integer (PostgreSQL's jsonb
    keeps numbers as decimals), so they are stored that way and hash the same before and after."""
    return _json_numbers(json.loads(canonical_json(details or {})))


def _json_numbers(value: Any) -> Any:
    if isinstance(value, float):
        if value == 0:
            return 0.0
        return int(value) if value.is_integer() and abs(value) >= 1e16 else value
    if isinstance(value, dict):
        return {key: _json_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_numbers(item) for item in value]
    return value


def timestamp_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_PLAIN = frozenset({str, int, float, bool, type(None)})


def scalar(value: Any) -> Any:
    if type(value) in _PLAIN or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # UUIDs


def _digest(values: list) -> str:
    return hashlib.sha256(_canonical_acyclic(values).encode("utf-8")).hexdigest()


def chain_version(member: str | None) -> int:
    """The version an entry is written in: 2 when it names a member, 1 otherwise."""
    return MEMBER_CHAIN_VERSION if member else CHAIN_VERSION


def entry_hash(seq: int, prev_hash: str, created_at: datetime, fields: dict[str, Any], version: int = CHAIN_VERSION) -> str:
    """The hash of an entry from its values (``fields`` holds the version's :data:`VERSION_FIELDS`)."""
    if version not in VERSION_FIELDS:
        raise ValueError(f"unknown chain version {version}")
    if version == CHAIN_VERSION and fields.get(MEMBER_FIELD):
        # Version 1 does not hash a member: one set on such an entry was set after it was written.
        raise ValueError("chain version 1 names no member")
    values = [version, seq, prev_hash, timestamp_text(created_at)]
    values += [scalar(fields[name]) for name in HASHED_FIELDS[:-1]]
    details = fields["details"]
    values.append(canonical_json(details if details is not None else {}))
    if version == MEMBER_CHAIN_VERSION:
        values.append(scalar(fields[MEMBER_FIELD]))
    return _digest(values)


_MEMBER_AT = ROW_COLUMNS.index(MEMBER_FIELD)


def entry_hash_of_row(row: tuple) -> str:
    """Recompute the hash of a row selected with :data:`ROW_COLUMNS`."""
    fields = dict(zip(HASHED_FIELDS, row[6:_MEMBER_AT], strict=True))
    fields[MEMBER_FIELD] = row[_MEMBER_AT] if len(row) > _MEMBER_AT else None
    details = fields["details"]
    if isinstance(details, str):  # SQLite returns JSON text through a raw cursor
        fields["details"] = json.loads(details)
    created_at = row[5]
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at)
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return entry_hash(row[1], row[3], created_at, fields, version=row[2])


def json_text_canonical(text: str | None, _scan=_DECODER.scan_once, _iterencode=_ITERENCODE) -> str | None:
    """The canonical JSON of JSON text as the database prints it; ``None`` for an SQL NULL or a
    JSON null (which Django reads as ``None``). Called once per row: kept to one call."""
    if text is None:
        return None
    try:
        value, end = _scan(text, 0)  # json.loads without its whitespace handling
    except StopIteration:
        value, end = json.loads(text), len(text)  # raises the usual error, or copes with whitespace
    if end != len(text):
        value = json.loads(text)
    if value is None:
        return None
    return "".join(_iterencode(value, 0)) if _iterencode is not None else canonical_json(value)


def entry_hash_of_text_row(row: tuple) -> str:
    """Recompute the hash of a row selected with :data:`TEXT_ROW_SQL`: the same value as
    :func:`entry_hash_of_row` gives for the row as Django reads it, without building a datetime,
    a UUID or a dict per row (the cost of verifying a million entries)."""
    version = row[2]
    if version not in VERSION_FIELDS:
        raise ValueError(f"unknown chain version {version}")
    details = json_text_canonical(row[26])
    values = [version, row[1], row[3], row[5], *row[6:26], "{}" if details is None else details]
    if version == MEMBER_CHAIN_VERSION:
        values.append(row[27])
    elif row[27]:
        raise ValueError("chain version 1 names no member")
    text = "".join(_ITERENCODE(values, 0)) if _ITERENCODE is not None else canonical_json(values)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
