"""The hash chain: a canonical, versioned serialisation of an entry and its SHA-256.

Version 1 hashes, in this order, the values exactly as stored: the chain version, the sequence
number, the previous entry's hash, the timestamp at microseconds in UTC, every recorded field,
and ``details`` as canonical JSON text (sorted keys, no insignificant whitespace, UTF-8). The
serialisation of a version never changes; a new one gets a new number and both stay verifiable.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

CHAIN_VERSION = 1
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
#: Columns to select, in order, to recompute a hash: what :func:`entry_hash_of_row` expects.
ROW_COLUMNS = ("id", "seq", "hash_version", "prev_hash", "entry_hash", "created_at", *HASHED_FIELDS)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def normalise_details(details: dict) -> dict:
    """The details as they will read back from the database (JSON round trip)."""
    return json.loads(canonical_json(details or {}))


def timestamp_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # UUIDs


def entry_hash(seq: int, prev_hash: str, created_at: datetime, fields: dict[str, Any], version: int = CHAIN_VERSION) -> str:
    """The hash of an entry from its values."""
    if version != 1:
        raise ValueError(f"unknown chain version {version}")
    values = [version, seq, prev_hash, timestamp_text(created_at)]
    for name in HASHED_FIELDS:
        value = fields[name]
        values.append(canonical_json(value if value is not None else {}) if name == "details" else _scalar(value))
    return hashlib.sha256(canonical_json(values).encode("utf-8")).hexdigest()


def entry_hash_of_row(row: tuple) -> str:
    """Recompute the hash of a row selected with :data:`ROW_COLUMNS`."""
    fields = dict(zip(HASHED_FIELDS, row[6:], strict=True))
    details = fields["details"]
    if isinstance(details, str):  # SQLite returns JSON text through a raw cursor
        fields["details"] = json.loads(details)
    created_at = row[5]
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at)
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return entry_hash(row[1], row[3], created_at, fields, version=row[2])
