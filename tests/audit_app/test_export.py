"""Evidence export (docs/semantics.md §11): CSV and JSON Lines, filtered by time, change, target, actor and event,
ending with the signed chain head; re-read and checked against the trail it passes, and an edited,
shortened, truncated or re-signed export fails with a clear problem; constant memory."""

import csv
import gc
import hashlib
import io
import json
import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_app.chain import HASHED_FIELDS, entry_hash
from audit_app.export import COLUMNS, PROBLEMS_NAMED, TRAILER_MARK, ExportFilters, audit_export, audit_export_verify, export_message
from audit_app.models import AuditCheckpoint, AuditEntry
from audit_app.services import Actor
from audit_app.signing import public_key_hex, sign, signing_key
from tests.support.audit import ENTRY_TABLE, entry_write, rows_bulk_insert, sql, triggers_dropped
from tests.support.awkward import awkward_entries_write
from tests.support.trails import cli

pytestmark = pytest.mark.django_db

FORMATS = ["csv", "jsonl"]
ALICE, BOB = Actor(name="alice", via="admin"), Actor(name="bob", via="cli")


@dataclass
class Evidence:
    """Entries written in three slices of time, each with known change, target, actor and event."""

    before: list[AuditEntry]
    window: list[AuditEntry]
    after: list[AuditEntry]

    @property
    def all(self) -> list[AuditEntry]:
        return self.before + self.window + self.after


def _slice(label: str) -> list[AuditEntry]:
    return [
        entry_write("change.applied", change_id="c-users", target="app-db", actor=ALICE, reason=f"{label}: applied"),
        entry_write(
            "change.failed", change_id="c-index", target="ext-pg", actor=BOB, error=f'{label}: Traceback\n  line 1\n"quoted", comma, ünïcode'
        ),
        entry_write("run.started", actor=BOB, details={"label": label, "nested": {"b": [1, 2.5, None]}}),
        entry_write("lock.acquired", target="app-db", actor=ALICE),
    ]


@pytest.fixture
def evidence() -> Evidence:
    return Evidence(before=_slice("before"), window=_slice("window"), after=_slice("after"))


def export_to(path, fmt: str, filters: ExportFilters | None = None):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for line in audit_export(fmt=fmt, filters=filters or ExportFilters()):
            handle.write(line)
    return path


def read_export(path) -> tuple[list[dict], dict | None]:
    """The export's rows (as text) and its trailer, read independently of the product's reader."""
    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    body, mark, trailer = text.rpartition(TRAILER_MARK + " ")
    if not mark:
        body, trailer = text, ""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in body.split("\n") if line]
    else:
        rows = list(csv.DictReader(io.StringIO(body, newline="")))
    return rows, json.loads(trailer) if trailer else None


def seqs(rows: list[dict]) -> list[int]:
    return [int(row["seq"]) for row in rows]


def lines_of(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


# -- what an export holds -----------------------------------------------------------------------------


def test_jsonl_export_holds_every_entry_as_stored_and_ends_with_the_signed_chain_head(evidence, tmp_path):
    path = export_to(tmp_path / "trail.jsonl", "jsonl")

    rows, trailer = read_export(path)

    assert seqs(rows) == [entry.seq for entry in evidence.all]
    assert rows[1]["error"] == evidence.before[1].error
    assert rows[2]["details"] == {"label": "before", "nested": {"b": [1, 2.5, None]}}
    assert [row["entry_hash"] for row in rows] == [entry.entry_hash for entry in evidence.all]
    assert lines_of(path)[-1].startswith(TRAILER_MARK)
    checkpoint = AuditCheckpoint.objects.get(reason="export")
    assert trailer["record"] == "chain_head"
    assert trailer["count"] == 12
    assert trailer["checkpoint"]["seq"] == checkpoint.seq == evidence.all[-1].seq
    assert trailer["checkpoint"]["entry_hash"] == evidence.all[-1].entry_hash
    assert trailer["public_key"] == public_key_hex(signing_key())


def test_csv_export_holds_every_entry_with_its_columns_and_ends_with_the_signed_chain_head(evidence, tmp_path):
    path = export_to(tmp_path / "trail.csv", "csv")

    rows, trailer = read_export(path)

    assert lines_of(path)[0].strip() == ",".join(COLUMNS)
    assert seqs(rows) == [entry.seq for entry in evidence.all]
    assert rows[1]["error"] == evidence.before[1].error
    assert json.loads(rows[2]["details"]) == {"label": "before", "nested": {"b": [1, 2.5, None]}}
    assert [row["actor"] for row in rows[:4]] == ["alice", "bob", "bob", "alice"]
    assert trailer["count"] == 12
    assert trailer["checkpoint"]["seq"] == evidence.all[-1].seq


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "name",
    ["time range", "change", "target", "actor", "event", "two events", "change and actor", "time range and target", "nothing matches"],
)
def test_export_filters_select_exactly_the_right_entries(evidence, tmp_path, fmt, name):
    window = evidence.window
    cases = {
        "time range": (ExportFilters(since=window[0].created_at, until=evidence.after[0].created_at), window),
        "change": (ExportFilters(change_id="c-users"), [entry for entry in evidence.all if entry.change_id == "c-users"]),
        "target": (ExportFilters(target="app-db"), [entry for entry in evidence.all if entry.target == "app-db"]),
        "actor": (ExportFilters(actor="bob"), [entry for entry in evidence.all if entry.actor == "bob"]),
        "event": (ExportFilters(events=["change.failed"]), [entry for entry in evidence.all if entry.event == "change.failed"]),
        "two events": (
            ExportFilters(events=["change.failed", "lock.acquired"]),
            [entry for entry in evidence.all if entry.event in ("change.failed", "lock.acquired")],
        ),
        "change and actor": (ExportFilters(change_id="c-index", actor="alice"), []),
        "time range and target": (
            ExportFilters(since=window[0].created_at, until=evidence.after[0].created_at, target="app-db"),
            [window[0], window[3]],
        ),
        "nothing matches": (ExportFilters(change_id="no-such-change"), []),
    }
    filters, expected = cases[name]

    path = export_to(tmp_path / f"filtered.{fmt}", fmt, filters)
    rows, trailer = read_export(path)

    assert seqs(rows) == [entry.seq for entry in expected]
    assert trailer["count"] == len(expected)
    assert audit_export_verify(path).ok


def test_export_command_applies_every_filter(evidence, tmp_path):
    path = tmp_path / "cli.jsonl"
    since, until = evidence.window[0].created_at.isoformat(), evidence.after[0].created_at.isoformat()

    result = cli(
        "audit", "export", "--format", "jsonl", "--output", str(path), "--since", since, "--until", until,
        "--target", "ext-pg", "--actor", "bob", "--change", "c-index", "--event", "change.failed",
    )  # fmt: skip

    rows, trailer = read_export(path)
    assert result.code == 0, result.err
    assert seqs(rows) == [evidence.window[1].seq]
    assert trailer["filters"]["change_id"] == "c-index"
    assert "exported 1 entries" in result.err


def test_export_command_writes_csv_with_repeated_events(evidence, tmp_path):
    path = tmp_path / "cli.csv"

    result = cli("audit", "export", "--format", "csv", "--output", str(path), "--event", "run.started", "--event", "lock.acquired")

    rows, _ = read_export(path)
    assert result.code == 0, result.err
    assert seqs(rows) == [entry.seq for entry in evidence.all if entry.event in ("run.started", "lock.acquired")]
    assert "exported 6 entries" in result.err


def test_export_command_needs_an_output(evidence):
    assert cli("audit", "export", "--format", "csv").code == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_of_awkward_values_verifies_and_reads_back_exactly_as_stored(tmp_path, fmt):
    # Separators, quotes, line breaks (a lone carriage return too, which a CSV reader takes for the
    # end of a row unless it is quoted), control characters, non-ASCII text, floats in exponent form.
    written = awkward_entries_write()
    path = export_to(tmp_path / f"trail.{fmt}", fmt)

    check = audit_export_verify(path)
    rows, _ = read_export(path)

    assert (check.ok, check.rows, check.problems) == (True, len(written), [])
    for row, entry in zip(rows, written, strict=True):
        assert (row["reason"], row["error"], row["rollback_error"], row["actor"], row["target"]) == (
            entry.reason,
            entry.error,
            entry.rollback_error,
            entry.actor,
            entry.target,
        )
        assert (json.loads(row["details"]) if fmt == "csv" else row["details"]) == entry.details
        assert (float(row["duration_ms"]) if row["duration_ms"] not in ("", None) else None) == entry.duration_ms


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_that_looks_like_a_trailer_inside_a_row_is_only_text(evidence, tmp_path, fmt):
    forged = f'{TRAILER_MARK} {{"record": "chain_head", "count": 0}}'
    entry_write("change.failed", change_id="c-forge", reason=f"line one\n{forged}\nline three")
    path = export_to(tmp_path / f"trail.{fmt}", fmt)

    check = audit_export_verify(path)

    assert (check.ok, check.rows, check.problems) == (True, 13, [])


# -- checking an export -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reread_and_checked_against_the_trail_passes(evidence, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)

    check = audit_export_verify(path)
    offline = audit_export_verify(path, public_key=public_key_hex(signing_key()), against_trail=False)

    assert (check.ok, check.rows, check.problems) == (True, 12, [])
    assert (offline.ok, offline.problems) == (True, [])


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_export_command_passes_an_intact_export(evidence, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)

    checked = cli("audit", "verify-export", str(path), "--json")
    offline = cli("audit", "verify-export", str(path), "--public-key", public_key_hex(signing_key()), "--offline")

    assert checked.code == 0
    assert checked.json() == {"ok": True, "rows": 12, "problems": []}
    assert offline.code == 0
    assert "the export is intact: 12 rows" in offline.out


def rewritten(path, transform):
    """Rewrite the export's rows through ``transform`` (a list of rows in, a list out) as its writer
    would, keeping the header and the trailer."""
    rows, _ = read_export(path)
    trailer = lines_of(path)[-1]
    out = io.StringIO()
    if path.suffix == ".jsonl":
        for row in transform(rows):
            out.write(json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    else:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([row[name] for name in COLUMNS] for row in transform(rows))
    path.write_text(out.getvalue() + trailer, encoding="utf-8")
    return path


def edited(path, index: int, **changes):
    return rewritten(path, lambda rows: [{**row, **changes} if position == index else row for position, row in enumerate(rows)])


def test_rewriting_an_untouched_export_changes_nothing(evidence, tmp_path):
    for fmt in FORMATS:
        path = export_to(tmp_path / f"trail.{fmt}", fmt)
        before = path.read_bytes()

        assert rewritten(path, lambda rows: rows).read_bytes() == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_edited_row_fails_with_the_row_named(evidence, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)
    seq = evidence.all[3].seq
    edited(path, 3, actor="mallory")

    check = audit_export_verify(path)
    result = cli("audit", "verify-export", str(path))

    assert not check.ok
    assert f"row #{seq}: its content does not match its hash (edited)" in check.problems
    assert result.code == 6
    assert f"row #{seq}: its content does not match its hash (edited)" in result.out


@pytest.mark.parametrize("fmt", FORMATS)
def test_edited_row_with_its_hash_recomputed_fails_on_the_signature_and_the_trail(evidence, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)
    row = read_export(path)[0][5]
    original = evidence.all[5]
    fields = {name: getattr(original, name) for name in HASHED_FIELDS}
    fields["actor"] = "mallory"
    edited(path, 5, actor="mallory", entry_hash=entry_hash(original.seq, original.prev_hash, original.created_at, fields))

    check = audit_export_verify(path)
    offline = audit_export_verify(path, against_trail=False)

    assert int(row["seq"]) == original.seq
    assert "the rows do not match the trailer: rows were added, removed or edited" in check.problems
    assert f"row #{original.seq + 1}: does not link to row #{original.seq}" in check.problems
    assert f"row #{original.seq} differs from the live trail" in check.problems
    assert not offline.ok


@pytest.mark.parametrize("fmt", FORMATS)
def test_removed_row_fails(evidence, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)
    rewritten(path, lambda rows: rows[:5] + rows[6:])

    check = audit_export_verify(path, against_trail=False)

    assert check.rows == 11
    assert "the rows do not match the trailer: rows were added, removed or edited" in check.problems
    assert cli("audit", "verify-export", str(path), "--offline").code == 6


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_export_without_its_trailer_fails(evidence, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)
    path.write_text("".join(lines_of(path)[:-1]), encoding="utf-8")

    check = audit_export_verify(path)
    result = cli("audit", "verify-export", str(path))

    assert "the export has no trailer: it was truncated" in check.problems
    assert result.code == 6
    assert "the export has no trailer: it was truncated" in result.out


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_damaged_trailer_is_a_problem_not_a_crash(evidence, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)
    lines = lines_of(path)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(TRAILER_MARK) + 20] + "\n", encoding="utf-8")

    check = audit_export_verify(path)
    result = cli("audit", "verify-export", str(path))

    assert check.rows == len(evidence.all)
    assert check.problems == ["the export's trailer could not be read: it was damaged"]
    assert result.code == 6
    assert "the export's trailer could not be read: it was damaged" in result.out


@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_that_are_not_utf8_are_a_problem_not_a_crash(evidence, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)
    data = path.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    path.write_bytes(data[:cut] + b"\xff\xfe not text\n" + data[cut:])

    check = audit_export_verify(path, against_trail=False)
    result = cli("audit", "verify-export", str(path), "--offline")

    assert not check.ok
    assert any(problem.startswith("the export is not UTF-8 text after row ") for problem in check.problems)
    assert result.code == 6


def test_verify_export_of_a_file_that_is_not_there_is_a_usage_error(tmp_path):
    missing = tmp_path / "nowhere.csv"

    result = cli("audit", "verify-export", str(missing))

    assert result.code == 2
    assert f"cannot read {missing}: No such file or directory" in result.err


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cut", [40, 200], ids=["in the last hash", "across fields"])
def test_export_cut_in_the_middle_of_a_row_fails_with_a_clear_problem(evidence, tmp_path, fmt, cut):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)
    body = "".join(lines_of(path)[:-1])
    path.write_text(body[:-cut], encoding="utf-8")

    check = audit_export_verify(path)
    result = cli("audit", "verify-export", str(path))

    assert "the export has no trailer: it was truncated" in check.problems
    if fmt == "csv" and cut == 40:  # every field is there, the last one short
        assert (check.rows, f"row #{evidence.all[-1].seq}: its content does not match its hash (edited)" in check.problems) == (12, True)
    else:
        assert (check.rows, "1 row(s) could not be read: the export was cut or damaged" in check.problems) == (11, True)
    assert result.code == 6
    assert "it was truncated" in result.out


@pytest.mark.parametrize("fmt", FORMATS)
def test_signature_checked_with_another_public_key_fails(evidence, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)
    other = public_key_hex(Ed25519PrivateKey.generate())

    check = audit_export_verify(path, public_key=other, against_trail=False)
    result = cli("audit", "verify-export", str(path), "--public-key", other, "--offline")

    assert "the export was signed with another key than the one given" in check.problems
    assert "the export's signature is not valid for its rows and chain head" in check.problems
    assert result.code == 6


def test_export_re_signed_by_an_intruder_fails_with_the_auditors_key(evidence, tmp_path):
    # Whoever edits an export can recompute every hash and sign it again with a key of their own;
    # the auditor's copy of the real public key is what refuses it.
    path = export_to(tmp_path / "trail.jsonl", "jsonl")
    rows, trailer = read_export(path)
    rows = [row for row in rows if row["actor"] != "bob"]  # leave out everything bob did
    digest = hashlib.sha256("".join(row["entry_hash"] for row in rows).encode()).hexdigest()
    intruder = Ed25519PrivateKey.generate()
    signature, public = sign(export_message(len(rows), digest, trailer["checkpoint"]["seq"], trailer["checkpoint"]["entry_hash"]), intruder)
    forged = {**trailer, "count": len(rows), "rows_digest": digest, "signature": signature, "public_key": public}
    body = "".join(json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n" for row in rows)
    path.write_text(body + f"{TRAILER_MARK} {json.dumps(forged)}\n", encoding="utf-8")

    check = audit_export_verify(path, public_key=public_key_hex(signing_key()), against_trail=False)

    assert "the export was signed with another key than the one given" in check.problems
    assert "the export's signature is not valid for its rows and chain head" in check.problems


def test_old_export_reveals_entries_removed_from_the_trail_since(evidence, tmp_path):
    path = export_to(tmp_path / "trail.jsonl", "jsonl")
    last = evidence.all[-1].seq
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq >= %s", [last - 1])

    check = audit_export_verify(path)

    assert f"row #{last - 1} differs from the live trail" in check.problems
    assert audit_export_verify(path, against_trail=False).ok


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_is_of_the_trail_as_signed_at_its_start(evidence, tmp_path, fmt):
    pieces = audit_export(fmt=fmt, filters=ExportFilters())
    first = next(pieces)  # the checkpoint is signed when the export starts
    entry_write("run.finished")
    path = tmp_path / f"trail.{fmt}"
    path.write_text("".join([first, *pieces]), encoding="utf-8")

    rows, trailer = read_export(path)
    assert seqs(rows) == [entry.seq for entry in evidence.all]
    assert trailer["count"] == len(evidence.all)


# -- constant memory ----------------------------------------------------------------------------------


def _resident(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key + ":"))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_streams_in_constant_memory(fmt):
    # The peak resident size of this process, reset before the export (Linux clear_refs), is measured
    # instead of tracemalloc's peak, which multiplies the export's time by about seven. Holding every
    # line in memory peaks at more than the export's size; streaming stays at one batch of lines.
    count = 80_000
    rows_bulk_insert(count)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the high-water mark starts again from the current size
    baseline = _resident("VmRSS")

    started = time.perf_counter()
    size = lines = largest = 0
    for piece in audit_export(fmt=fmt, filters=ExportFilters(environment="bulk")):
        size += len(piece)
        lines += piece.count("\n")
        largest = max(largest, len(piece))
    elapsed = time.perf_counter() - started
    growth = _resident("VmHWM") - baseline

    assert lines == count + (2 if fmt == "csv" else 1)  # the rows, the trailer and the CSV header
    assert size > count * 500
    assert largest < size / 4  # pieces of a batch, not the whole export
    assert growth < size / 2, f"peak grew by {growth / 1e6:.1f} MB for {size / 1e6:.1f} MB exported in {elapsed:.1f} s"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_export_reads_a_large_file_in_constant_memory_and_counts_what_it_does_not_name(fmt, tmp_path):
    # The bulk rows' hashes are not real: every row is a problem, so the check names the first rows
    # and counts the rest rather than holding a message per row. Reading every row into memory first
    # peaked at several times the file's size; a row at a time stays far below it.
    count = 60_000
    rows_bulk_insert(count)
    path = tmp_path / f"bulk.{fmt}"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for piece in audit_export(fmt=fmt, filters=ExportFilters(environment="bulk")):
            handle.write(piece)
    size = path.stat().st_size
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    baseline = _resident("VmRSS")

    check = audit_export_verify(path)
    growth = _resident("VmHWM") - baseline

    assert check.rows == count and not check.ok
    assert check.problems[0].endswith(": its content does not match its hash (edited)")
    more = [problem for problem in check.problems if problem.startswith("... and ")]
    assert len(more) == 1 and int(more[0].split()[2]) == 2 * count - 1 - PROBLEMS_NAMED  # a hash and a link problem per row
    assert len(check.problems) == PROBLEMS_NAMED + 1  # the trailer, the signature and the live trail all agree with the rows
    assert size > count * 500
    assert growth < size / 4, f"peak grew by {growth / 1e6:.1f} MB verifying {size / 1e6:.1f} MB"
