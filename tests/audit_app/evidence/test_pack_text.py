"""The pack's two reads (docs/decisions.md, "Evidence pack: the jsonl as PostgreSQL text"):
``audit.jsonl`` as text, printed by PostgreSQL and streamed with ``COPY`` on PostgreSQL, each line
the same record as the generic line built from Django's values for the same trail (its canonical
JSON byte for byte: what the verifier hashes), awkward values included; and the controls fed only
the entries they use, giving what the offline verifier recomputes from every line."""

from __future__ import annotations

import json
import threading
import uuid
import zipfile
from datetime import timedelta

import pytest
from django.db import connection

from audit_app.evidence import offline
from audit_app.evidence import trail as trail_module
from audit_app.evidence.build import pack_build
from audit_app.evidence.trail import _copy_parallel, context_lines, entries_copy_postgresql, entries_text, feed_lines, period_find
from audit_app.signing import public_key_hex, signing_key
from tests.audit_app.evidence.builder import DRIFT_ACK_HOURS, Q1_END, Q1_START, REVIEW_HOURS, TrailBuilder, quarter_with_exceptions
from tests.support.awkward import AWKWARD_TEXT

pytestmark = pytest.mark.django_db


def lines_of(text: str) -> list[str]:
    """The lines of jsonl text: split at newlines only (a string may hold U+2028 or a lone CR)."""
    return [raw for raw in text.split("\n") if raw]


#: (fields, details) of entries whose every column is hard to print the same way twice.
AWKWARD = [
    ({"change_id": "c,comma", "stage": 'st"age', "order": "0001", "target": "t\rcr", "duration_ms": 100.0, "actor_user_id": 7, "pid": 1}, {}),
    ({"checksum": "é" * 3, "transaction_strategy": "line\nbreak", "duration_ms": 1e-05, "fencing_token": 2**40}, {"b": 1, "aa": 2}),
    ({"duration_ms": 1e16, "reason": AWKWARD_TEXT, "member": "eu-1"}, {"z": None, "é": [1.0, 2.5, 2**70]}),
    ({"duration_ms": 1234567890123456.8, "error": "Traceback:\r\n  boom\r\n"}, {"nested": {"k": 'v "q", \\ \n'}, "list": []}),
    ({"duration_ms": None, "rollback_error": "lone\rreturn \x01 \x1f \x7f"}, {"f": 1e-07, "neg": -1.5, "t": True, "empty": ""}),
    ({"duration_ms": 0.1, "actor": "ünï 中 \u2028"}, {"s": AWKWARD_TEXT, "10": 1, "9": 2, "a": {"bb": 1, "c": 2}}),
    ({"duration_ms": 3.0, "run_id": str(uuid.UUID(int=77))}, {"big": 123456789012345678901234567890, "small": -0.0}),
]


@pytest.fixture
def trail():
    builder = TrailBuilder()
    quarter_with_exceptions(builder)
    at = Q1_START + timedelta(days=30)
    for index, (fields, details) in enumerate(AWKWARD):
        builder.add("change.noted", at + timedelta(minutes=index), details=details, environment="prod" if index % 2 else "dev", **fields)
    # Out of the pack's scope: executions and a drift in another environment, read by neither.
    builder.change(at + timedelta(hours=1), "staging-change", environment="staging")
    builder.drift(at + timedelta(hours=2), 901)
    builder.save()
    return builder


def build(path):
    return pack_build(
        path=path, since=Q1_START, until=Q1_END, environment="prod", targets=[], members=[],
        protected_environments=["prod"], drift_ack_hours=DRIFT_ACK_HOURS, review_hours=REVIEW_HOURS, requested_by="carla",
    )  # fmt: skip


def test_the_pack_of_a_trail_with_awkward_values_verifies_and_each_line_recomputes_its_hash(trail, tmp_path):
    pack = build(tmp_path / "q1.zip")
    verdict = offline.verify_pack(pack.path, public_key=public_key_hex(signing_key()))
    assert verdict.problems == []
    assert verdict.entries == pack.entries > 0
    with zipfile.ZipFile(pack.path) as archive:
        raw_lines = lines_of(archive.read(offline.AUDIT).decode())
    lines = [json.loads(raw) for raw in raw_lines]
    entries = [line for line in lines if line["record"] == "entry"]
    assert {line["hash_version"] for line in entries} == {1, 2}
    assert all(offline.record_hash(line) == line["entry_hash"] for line in entries)
    assert any(line["details"] == {"s": AWKWARD_TEXT, "10": 1, "9": 2, "a": {"bb": 1, "c": 2}} for line in entries)
    # Each line is an object with its keys in order; on PostgreSQL only ``details`` keeps the
    # database's spacing and key order, and ``duration_ms`` always parses as a float.
    assert all(list(line) == sorted(line) for line in lines)
    assert all(isinstance(line["duration_ms"], float) for line in entries if line["duration_ms"] is not None)
    if connection.vendor != "postgresql":
        assert all(raw == offline.canonical_json(json.loads(raw)) for raw in raw_lines)


def test_the_controls_fed_only_the_entries_they_use_equal_those_fed_every_line(trail):
    period = period_find(since=Q1_START, until=Q1_END)
    parameters = {"environment": "prod", "protected_environments": ["prod"], "drift_ack_hours": DRIFT_ACK_HOURS, "review_hours": REVIEW_HOURS}
    parameters |= {"from": offline.time_text(Q1_START), "to": offline.time_text(Q1_END), "end": offline.time_text(Q1_END)}
    every, fed = offline.Evidence(parameters), offline.Evidence(parameters)
    text = "".join(chunk for chunk, _ in entries_text(period, since=Q1_START, until=Q1_END))
    for raw in lines_of(text):
        line = json.loads(raw)
        every.feed(line, line["part"])
    read = 0
    for line in feed_lines(period, "prod", context_lines(period)):
        if line["part"] != "context":
            fed.feed(line, line["part"])
            read += 1
    assert read < len(lines_of(text))  # what the controls ignore is not read
    assert fed.changes_csv() == every.changes_csv() and b"staging-change" not in fed.changes_csv()
    assert fed.access_csv() == every.access_csv()
    assert fed.findings_csv() == every.findings_csv()
    assert fed.controls_json() == every.controls_json()
    assert {control["result"] for control in fed.controls()} == {offline.EXCEPTION}


@pytest.mark.postgres
def test_postgresql_prints_lines_that_parse_to_the_generic_lines_byte_for_byte(trail):
    assert connection.vendor == "postgresql"
    # A period whose bounds cut through the trail, so that entries before it are read too.
    since, until = Q1_START + timedelta(days=20), Q1_START + timedelta(days=60)
    period = period_find(since=since, until=until)
    generic = list(entries_text(period, since=since, until=until))
    server = list(entries_copy_postgresql(connection, period))
    generic_lines = lines_of("".join(c for c, _ in generic))
    server_text = b"".join(c for c, _ in server).decode("utf-8")
    server_lines = lines_of(server_text)
    assert len(server_lines) == len(generic_lines) > len(AWKWARD)
    # What the verifier hashes: the value each line parses to, in canonical JSON (5.0 is not 5).
    assert [offline.canonical_json(json.loads(raw)) for raw in server_lines] == generic_lines
    parsed = [json.loads(raw) for raw in server_lines]
    assert all(offline.record_hash(line) == line["entry_hash"] for line in parsed)
    assert {line["duration_ms"] for line in parsed} >= {100.0, 1e-05, 1e16, 1234567890123456.8, 0.1, 3.0}
    assert all(type(line["duration_ms"]) is float for line in parsed if line["duration_ms"] is not None)
    assert sum(n for _, n in server) == period.last_seq - period.first_seq + 1
    assert period.entries == sum(n for _, n in generic) > 0
    assert {line["part"] for line in parsed} >= {"before", "period"}
    assert "é" in server_text and "\\u0001" in server_text and "\u2028" in server_text and "\\r" in server_text


@pytest.mark.postgres
def test_a_duration_json_cannot_hold_stops_the_postgresql_lines_with_the_entry_named(tmp_path):
    builder = TrailBuilder()
    builder.add("change.noted", Q1_START + timedelta(days=1), duration_ms=1.0)
    builder.pending[-1].duration_ms = float("nan")  # as no writer stores it (its hash could not be computed)
    builder.save()
    period = period_find(since=Q1_START, until=Q1_END)
    with pytest.raises(Exception, match=r"entry #\d+: duration_ms NaN has no JSON form"):
        list(entries_copy_postgresql(connection, period))


SERIES = "COPY (SELECT g FROM generate_series(%(lo)s::int, %(hi)s::int) g) TO STDOUT"


@pytest.mark.postgres
def test_ranges_printed_by_parallel_connections_are_written_in_their_order():
    ranges = [{"lo": lo, "hi": lo + 9} for lo in range(1, 200, 10)]
    printed = list(_copy_parallel(connection, SERIES, ranges, 3))
    assert b"".join(printed) == b"".join(f"{n}\n".encode() for n in range(1, 201))
    assert [int(chunk.split()[0]) for chunk in printed] == [r["lo"] for r in ranges]


@pytest.mark.postgres
def test_an_error_in_one_parallel_connection_stops_them_all_and_is_raised():
    ranges = [{"lo": 1, "hi": 10}, {"lo": 11, "hi": 20}, {"lo": 21, "hi": "not a number"}, *({"lo": n, "hi": n} for n in range(30, 90))]
    before = {thread.name for thread in threading.enumerate()}
    printed = []
    with pytest.raises(Exception, match="not a number"):
        for chunk in _copy_parallel(connection, SERIES, ranges, 2):
            printed.append(chunk)
    assert printed == [b"".join(f"{n}\n".encode() for n in range(1, 11)), b"".join(f"{n}\n".encode() for n in range(11, 21))]
    assert not {thread.name for thread in threading.enumerate()} - before  # every printer has ended


@pytest.mark.postgres
def test_inside_a_transaction_the_lines_come_from_djangos_connection_alone(trail, monkeypatch):
    monkeypatch.setattr(trail_module, "COPY_RANGE", 4)
    monkeypatch.setattr(trail_module, "_copy_parallel", lambda *args: pytest.fail("the other connections cannot see this transaction's rows"))
    period = period_find(since=Q1_START, until=Q1_END)
    assert connection.in_atomic_block
    chunks = list(entries_copy_postgresql(connection, period, streams=2))
    assert len(chunks) > 2 and sum(len(lines_of(chunk.decode())) for chunk, _ in chunks) == period.after["seq"] - period.before["seq"]
