"""The hash chain (docs/semantics.md §11): each entry's sequence number, link and hash over its values exactly as
stored, given by the one writer under the chain-head lock; no forks with 8 processes writing at
once; and secrets redacted before hashing."""

import hashlib
import json
import multiprocessing
from datetime import UTC, datetime

import pytest
from django.db import connections, transaction

from audit_app.chain import CHAIN_VERSION, GENESIS_HASH, HASHED_FIELDS, entry_hash
from audit_app.integrity import audit_verify
from audit_app.models import AuditEntry, ChainHead
from audit_app.services import Actor, audit_record
from changes_app.models import Run
from tests.support.audit import chain_rows, entries_write, entry_write, hashes_recomputed
from tests.support.trails import results, run_pipeline

# -- the serialisation --------------------------------------------------------------------------------

GOLDEN_FIELDS = {
    **dict.fromkeys(HASHED_FIELDS, ""),
    "event": "change.applied",
    "environment": "prod",
    "change_id": "0001_add_users",
    "actor": "alice",
    "actor_user_id": 7,
    "pid": 4242,
    "fencing_token": 19,
    "duration_ms": 12.5,
    "run_id": "6f1c1f86-3c2e-4b55-9d55-0a4f1e0e9c11",
    "details": {"b": [1, 2.5, None], "a": "é"},
}
GOLDEN_AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def test_version_1_serialisation_is_fixed_forever():
    # Chains written by every release must verify with every later one: this value never changes.
    assert entry_hash(42, "ab" * 32, GOLDEN_AT, GOLDEN_FIELDS) == "f5de875e079c7aa624e5ae9772f5d1f1ec031b77370fd3f9781ff9ff8e0122a7"


def test_version_1_hashes_the_documented_canonical_values():
    values = [1, 42, "ab" * 32, "2024-05-06T07:08:09.123456Z"]
    values += [
        json.dumps(GOLDEN_FIELDS[name], sort_keys=True, separators=(",", ":"), ensure_ascii=False) if name == "details" else GOLDEN_FIELDS[name]
        for name in HASHED_FIELDS
    ]
    expected = hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()

    assert entry_hash(42, "ab" * 32, GOLDEN_AT, GOLDEN_FIELDS) == expected


def test_hash_covers_every_field_time_and_link():
    original = entry_hash(42, "ab" * 32, GOLDEN_AT, GOLDEN_FIELDS)
    variants = [entry_hash(43, "ab" * 32, GOLDEN_AT, GOLDEN_FIELDS), entry_hash(42, "cd" * 32, GOLDEN_AT, GOLDEN_FIELDS)]
    variants.append(entry_hash(42, "ab" * 32, GOLDEN_AT.replace(microsecond=123457), GOLDEN_FIELDS))
    for name in HASHED_FIELDS:
        changed = {**GOLDEN_FIELDS, name: {"x": 1} if name == "details" else 8 if isinstance(GOLDEN_FIELDS[name], int) else "other"}
        variants.append(entry_hash(42, "ab" * 32, GOLDEN_AT, changed))

    assert original not in variants
    assert len(set(variants)) == len(variants)


def test_hash_ignores_key_order_of_details_and_the_time_zone_of_the_timestamp():
    reordered = {**GOLDEN_FIELDS, "details": {"a": "é", "b": [1, 2.5, None]}}
    elsewhere = GOLDEN_AT.astimezone(datetime.fromisoformat("2024-01-01T00:00:00+05:30").tzinfo)

    assert entry_hash(42, "ab" * 32, elsewhere, reordered) == entry_hash(42, "ab" * 32, GOLDEN_AT, GOLDEN_FIELDS)


def test_unknown_chain_version_is_refused():
    with pytest.raises(ValueError, match="unknown chain version 3"):
        entry_hash(1, GENESIS_HASH, GOLDEN_AT, GOLDEN_FIELDS, version=3)


# -- the writer ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_writer_links_each_entry_to_the_previous_one():
    start = ChainHead.objects.get(id=1).seq
    entries_write(5)

    rows = chain_rows()

    assert [row[1] for row in rows] == list(range(1, start + 6))
    assert rows[0][3] == GENESIS_HASH
    assert [row[3] for row in rows[1:]] == [row[4] for row in rows[:-1]]
    assert {row[2] for row in rows} == {CHAIN_VERSION}


@pytest.mark.django_db
def test_stored_hash_is_recomputed_from_the_values_as_read_back():
    entry_write(
        "change.failed",
        change_id="c-ünïcode",
        target="app-db",
        reason="tabs\tand\nnewlines",
        error="Traceback (most recent call last):\n  boom",
        details={"z": 1, "a": {"nested": [1.25, True, None, "ß"]}, "big": 2**53},
    )
    entries_write(3)

    rows = chain_rows()

    assert hashes_recomputed(rows) == [row[4] for row in rows]


@pytest.mark.django_db
def test_timestamps_are_hashed_at_microseconds_as_stored():
    written = entry_write()

    stored = AuditEntry.objects.get(pk=written.pk)

    assert stored.created_at == written.created_at
    assert stored.entry_hash == written.entry_hash


@pytest.mark.django_db
def test_chain_head_follows_the_newest_entry():
    entries_write(3)
    newest = entry_write("run.finished")

    head = ChainHead.objects.get(id=1)

    assert (head.seq, head.entry_hash, head.entry_id) == (newest.seq, newest.entry_hash, newest.pk)


@pytest.mark.django_db
def test_rolled_back_entry_leaves_no_gap_in_the_chain():
    before = entry_write()

    with pytest.raises(RuntimeError), transaction.atomic():
        entry_write("run.started", reason="never committed")
        raise RuntimeError("the caller's transaction fails")
    after = entry_write()

    assert not AuditEntry.objects.filter(reason="never committed").exists()
    assert (after.seq, after.prev_hash) == (before.seq + 1, before.entry_hash)
    assert audit_verify().ok


# -- redaction before hashing -------------------------------------------------------------------------

SECRET_DSN = "postgres://app:Sup3r-S3cret-pw@db.internal:5432/app"
FAILING_CHANGE = """
import os

from changes_app.definitions import Change


class Connect(Change):
    id = "{change_id}"
    author = "tests"
    target = "app-db"

    def apply(self, cursor):
        cursor.execute("SELECT 1")
        raise ConnectionError("could not connect to " + os.environ["APP_DSN"] + " as token=" + os.environ["APP_TOKEN"])
"""


@pytest.mark.django_db(transaction=True)
def test_failing_change_error_is_redacted_before_hashing_and_the_chain_verifies(make_pipeline, unique, settings, monkeypatch):
    monkeypatch.setenv("APP_DSN", SECRET_DSN)
    monkeypatch.setenv("APP_TOKEN", "tok-9f8e7d6c5b")
    monkeypatch.setenv("UPSTREAM_KEY", "k3y-material-42")
    settings.FLAMINGOCK_SECRET_ENV_VARS = ["UPSTREAM_KEY"]
    change_id = f"connect-{unique}"
    make_pipeline({"main": {"0001_connect.py": FAILING_CHANGE.format(change_id=change_id)}})

    run = run_pipeline()
    entry_write("run.note", details={"dsn": SECRET_DSN, "nested": ["k3y-material-42"]}, reason="seen k3y-material-42")

    failed = AuditEntry.objects.get(change_id=change_id, state="FAILED")
    note = AuditEntry.objects.get(event="run.note")
    assert run.status == Run.Status.FAILED
    assert results(run)[change_id] == "FAILED"
    assert "ConnectionError: could not connect to postgres://app:********@db.internal:5432/app as token=********" in failed.error
    assert note.details == {"dsn": "postgres://app:********@db.internal:5432/app", "nested": ["********"]}
    assert note.reason == "seen ********"
    trail = json.dumps(list(AuditEntry.objects.values()), default=str)
    for secret in ("Sup3r-S3cret-pw", "tok-9f8e7d6c5b", "k3y-material-42"):
        assert secret not in trail
    rows = chain_rows()
    assert hashes_recomputed(rows) == [row[4] for row in rows]
    assert audit_verify().ok


# -- many writers at once -----------------------------------------------------------------------------

WRITERS, PER_WRITER = 8, 200


def _writer(name: str, count: int, start_together) -> None:
    """A writer process: its own connection to the test database, then ``count`` entries."""
    connections.close_all()  # never share the parent's sockets
    start_together.wait(timeout=60)
    actor = Actor(name=name, via="tests")
    for index in range(count):
        audit_record(event="run.started", actor=actor, environment="dev", reason=f"{name} {index}", details={"index": index})
    connections.close_all()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_eight_processes_writing_at_once_produce_one_unbroken_chain():
    start = ChainHead.objects.get(id=1).seq
    names = [f"writer-{index}" for index in range(WRITERS)]
    context = multiprocessing.get_context("fork")
    start_together = context.Barrier(WRITERS)
    connections.close_all()
    children = [context.Process(target=_writer, args=(name, PER_WRITER, start_together)) for name in names]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=180)

    assert [child.exitcode for child in children] == [0] * WRITERS
    rows = list(
        AuditEntry.objects.filter(seq__gt=start).order_by("seq").values_list("seq", "prev_hash", "entry_hash", "actor", "reason", "created_at")
    )
    assert [row[0] for row in rows] == list(range(start + 1, start + WRITERS * PER_WRITER + 1))
    assert len({row[1] for row in rows}) == len(rows)  # no two entries claim the same predecessor: no fork
    assert [row[1] for row in rows[1:]] == [row[2] for row in rows[:-1]]
    for name in names:
        assert [row[4] for row in rows if row[3] == name] == [f"{name} {index}" for index in range(PER_WRITER)]
    switches = sum(1 for before, after in zip(rows, rows[1:], strict=False) if before[3] != after[3])
    assert switches > WRITERS  # the writers really interleaved
    assert [row[5] for row in rows] == sorted(row[5] for row in rows)  # time follows the chain
    head = ChainHead.objects.get(id=1)
    assert (head.seq, head.entry_hash) == (rows[-1][0], rows[-1][2])
    report = audit_verify()
    assert report.ok, report.problem
    assert report.entries_checked == start + WRITERS * PER_WRITER
