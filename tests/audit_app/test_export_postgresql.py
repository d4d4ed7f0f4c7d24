"""On PostgreSQL the CSV export is written mostly by the server, a keyset page at a time: the file
is byte for byte the one the generic writer gives (the same rows, quoting, timestamps, floats and
canonical details, the same trailer), whatever the page size, the filters or the admin list's
queryset, and it verifies."""

import pytest

from audit_app import export
from audit_app.export import TRAILER_MARK, ExportFilters, audit_export, audit_export_verify
from audit_app.models import AuditEntry
from tests.support.audit import entries_write, entry_write
from tests.support.awkward import AWKWARD_TEXT, awkward_entries_write

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture
def trail():
    entries_write(5, change_id="c-users", target="app-db")
    awkward = awkward_entries_write()
    entries_write(4, change_id="c-index", target="ext-pg")
    return awkward


@pytest.fixture
def generic(monkeypatch):
    """Switch the export to the generic writer (what SQLite uses) for the rest of the test."""

    def use_generic():
        monkeypatch.setattr(export, "_csv_lines_postgresql", lambda rows: export._lines(rows, "csv"))

    return use_generic


def export_text(filters: ExportFilters | None = None, entries=None) -> tuple[str, str]:
    """The export's rows (header included) and its trailer line."""
    text = "".join(audit_export(fmt="csv", filters=filters or ExportFilters(), entries=entries))
    body, _, trailer = text.rpartition(TRAILER_MARK)
    return body, trailer


def same_rows(trailer: str, other: str) -> bool:
    """Two trailers of the same rows: the count and digest agree (the checkpoints differ)."""
    import json

    first, second = json.loads(trailer), json.loads(other)
    return (first["count"], first["rows_digest"], first["filters"]) == (second["count"], second["rows_digest"], second["filters"])


def test_csv_export_is_byte_for_byte_the_generic_one(trail, generic):
    fast, fast_trailer = export_text()
    generic()
    slow, slow_trailer = export_text()

    assert fast == slow
    assert same_rows(fast_trailer, slow_trailer)
    assert fast.count("\n") > AuditEntry.objects.count()  # quoted line breaks inside rows


@pytest.mark.parametrize("rows, size", [(1, 10**9), (3, 10**9), (1000, 1)], ids=["one row a page", "three rows a page", "by size"])
def test_pages_of_any_size_give_the_same_export(trail, generic, monkeypatch, rows, size):
    generic_body, generic_trailer = None, None
    monkeypatch.setattr(export, "POSTGRES_BATCH_ROWS", rows)
    monkeypatch.setattr(export, "BATCH_BYTES", size)
    pieces = list(audit_export(fmt="csv", filters=ExportFilters()))
    generic()
    generic_body, generic_trailer = export_text()

    assert "".join(pieces[:-1]) == generic_body
    assert same_rows(pieces[-1][len(TRAILER_MARK) :], generic_trailer)
    assert len(pieces) >= AuditEntry.objects.count() // max(rows, 100) + 2  # the header, the pages, the trailer


@pytest.mark.parametrize(
    "filters",
    [
        ExportFilters(change_id="c,comma"),
        ExportFilters(events=["change.failed"], target="app-db"),
        ExportFilters(actor="Doe, John"),
        ExportFilters(change_id="'; DROP TABLE audit_app_auditentry; --"),
    ],
    ids=["change with a comma", "event and target", "actor with a comma", "quote in a filter"],
)
def test_filtered_export_is_the_generic_one(trail, generic, filters):
    fast, fast_trailer = export_text(filters)
    generic()
    slow, slow_trailer = export_text(filters)

    assert fast == slow
    assert same_rows(fast_trailer, slow_trailer)


def test_export_of_a_queryset_is_the_generic_one(trail, generic):
    entries = AuditEntry.objects.filter(actor__in=["Doe, John", "plain"]).order_by("-seq")

    fast, fast_trailer = export_text(entries=entries)
    generic()
    slow, slow_trailer = export_text(entries=entries)

    assert fast == slow
    assert same_rows(fast_trailer, slow_trailer)
    assert fast.count("\n") >= 3


def test_names_that_need_quoting_are_quoted(trail, tmp_path):
    body, _ = export_text(ExportFilters(change_id="c,comma"))

    assert '"c,comma","st""age",0001,"t\rcr"' in body
    assert '"Doe, John",7,"h""ost",1' in body
    assert ",100.0," in body  # Python's repr of the duration, not PostgreSQL's 100


def test_export_of_awkward_values_verifies_and_reads_back_as_stored(trail, tmp_path):
    path = tmp_path / "trail.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for piece in audit_export(fmt="csv", filters=ExportFilters()):
            handle.write(piece)

    check = audit_export_verify(path)
    reader = export._ExportReader(path)
    records, unreadable = list(reader), reader.unreadable

    assert (check.ok, check.problems, unreadable) == (True, [], 0)
    by_seq = {record["seq"]: record for record in records}
    for entry in trail:
        record = by_seq[entry.seq]
        assert (record["reason"], record["error"], record["details"]) == (entry.reason, entry.error, entry.details)
        assert record["duration_ms"] == entry.duration_ms
    assert by_seq[trail[1].seq]["reason"] == AWKWARD_TEXT


def test_connection_is_free_between_pieces(trail):
    pieces = audit_export(fmt="csv", filters=ExportFilters())
    next(pieces)
    next(pieces)

    written = entry_write("run.finished")  # the same connection, in the middle of the export

    rest = "".join(pieces)
    assert f"\n{written.seq}," not in rest  # signed before it was written
