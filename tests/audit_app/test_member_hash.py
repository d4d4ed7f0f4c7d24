"""Chain version 2 (fleets, docs/semantics.md "Fleets"): an entry that names a member of a target group
hashes its member after the fields of version 1; an entry without one is version 1, byte for byte as
before. Every verifier (the service on both databases, the export check) accepts both versions in one
chain, and finds a member edited, added to a version 1 entry, or removed."""

import csv
import hashlib
import json

import pytest
from django.conf import settings
from django.db import DataError, connection, transaction

from audit_app.chain import HASHED_FIELDS, ROW_COLUMNS, TEXT_ROW_SQL, entry_hash, entry_hash_of_row, entry_hash_of_text_row
from audit_app.export import COLUMNS, ExportFilters, audit_export, audit_export_verify
from audit_app.integrity import audit_verify
from audit_app.models import AuditEntry, ChangeState, MemberChangeState
from audit_app.services import ChangeRef, StateMoved, audit_record, member_change_states
from tests.audit_app.test_chain import GOLDEN_AT, GOLDEN_FIELDS
from tests.support.audit import ENTRY_TABLE, TEST_ACTOR, chain_rows, entries_write, sql, triggers_dropped

pytestmark = pytest.mark.django_db

MEMBER_FIELDS = {**GOLDEN_FIELDS, "member": "tenant_0042"}


def member_entry(member: str | None, *, change_id: str = "c-1", state: str = "") -> AuditEntry:
    return audit_record(
        event="change.applied" if state else "member.added",
        actor=TEST_ACTOR,
        environment=settings.FLAMINGOCK_ENVIRONMENT,
        change=ChangeRef(id=change_id, target="tenants"),
        state=state,
        member=member,
    )


@pytest.fixture
def mixed() -> list[AuditEntry]:
    """Seven entries: version 1, then members, then version 1 again, interleaved."""
    written = entries_write(2, change_id="c-1", target="app-db")
    written += [member_entry("tenant_a"), member_entry("tenant_b"), member_entry(None)]
    written += entries_write(1, change_id="c-2", target="app-db")
    written.append(member_entry('tenant,with "quotes"'))
    return written


# -- the serialisation --------------------------------------------------------------------------------


def test_version_2_serialisation_is_fixed_forever():
    assert entry_hash(42, "ab" * 32, GOLDEN_AT, MEMBER_FIELDS, version=2) == "de78670d4666dd5548596212e6e626d644213f2672898390be8f7bec98161a4e"


def test_version_2_hashes_the_values_of_version_1_then_the_member():
    values = [2, 42, "ab" * 32, "2024-05-06T07:08:09.123456Z"]
    values += [
        json.dumps(GOLDEN_FIELDS[name], sort_keys=True, separators=(",", ":"), ensure_ascii=False) if name == "details" else GOLDEN_FIELDS[name]
        for name in HASHED_FIELDS
    ]
    values.append("tenant_0042")
    expected = hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()

    assert entry_hash(42, "ab" * 32, GOLDEN_AT, MEMBER_FIELDS, version=2) == expected


def test_version_1_hash_is_unchanged_by_an_absent_member():
    assert entry_hash(42, "ab" * 32, GOLDEN_AT, {**GOLDEN_FIELDS, "member": None}) == entry_hash(42, "ab" * 32, GOLDEN_AT, GOLDEN_FIELDS)
    assert entry_hash(42, "ab" * 32, GOLDEN_AT, GOLDEN_FIELDS) == "f5de875e079c7aa624e5ae9772f5d1f1ec031b77370fd3f9781ff9ff8e0122a7"


def test_version_2_hash_covers_the_member():
    original = entry_hash(42, "ab" * 32, GOLDEN_AT, MEMBER_FIELDS, version=2)
    variants = {entry_hash(42, "ab" * 32, GOLDEN_AT, {**MEMBER_FIELDS, "member": other}, version=2) for other in ("tenant_0043", "", None)}

    assert original not in variants
    assert len(variants) == 3


def test_version_1_with_a_member_is_refused():
    with pytest.raises(ValueError, match="chain version 1 names no member"):
        entry_hash(42, "ab" * 32, GOLDEN_AT, MEMBER_FIELDS, version=1)


# -- the writer ---------------------------------------------------------------------------------------


def test_entry_without_member_is_version_1_and_with_one_version_2(mixed):
    rows = {row[1]: row for row in chain_rows()}
    member_at = ROW_COLUMNS.index("member")

    assert [(rows[entry.seq][2], rows[entry.seq][member_at]) for entry in mixed] == [
        (1, None),
        (1, None),
        (2, "tenant_a"),
        (2, "tenant_b"),
        (1, None),
        (1, None),
        (2, 'tenant,with "quotes"'),
    ]
    assert [entry.hash_version for entry in mixed] == [1, 1, 2, 2, 1, 1, 2]
    assert [entry_hash_of_row(row) for row in chain_rows()] == [entry.entry_hash for entry in mixed]


def test_an_empty_member_is_no_member():
    entry = member_entry("")

    assert (entry.hash_version, AuditEntry.objects.get(pk=entry.pk).member) == (1, None)


def test_member_entry_in_a_larger_transaction_with_a_state_is_version_2():
    with transaction.atomic():
        entry = member_entry("tenant_tx", state="APPLIED")

    stored = AuditEntry.objects.get(pk=entry.pk)
    assert (stored.hash_version, stored.member, stored.entry_hash) == (2, "tenant_tx", entry.entry_hash)
    assert audit_verify().ok


@pytest.mark.postgres
def test_a_too_long_member_is_refused_and_nothing_is_written():
    before = AuditEntry.objects.count()

    with pytest.raises(DataError), transaction.atomic():
        member_entry("m" * 201)

    assert AuditEntry.objects.count() == before


# -- verification -------------------------------------------------------------------------------------


def test_chain_of_both_versions_verifies(mixed):
    report = audit_verify()

    assert report.ok, report.problem
    assert report.entries_checked == 7


@pytest.mark.parametrize(
    ("seq", "member"),
    [(3, "tenant_x"), (3, None), (4, ""), (1, "tenant_a")],
    ids=["member edited", "member removed", "member emptied", "member added to a version 1 entry"],
)
def test_tampered_member_is_found(mixed, seq, member):
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET member = %s WHERE seq = %s", [member, seq])

    report = audit_verify()

    assert not report.ok
    assert report.problem.seq == seq
    assert "was altered" in report.problem.message


def test_entry_moved_to_version_1_with_its_member_removed_is_found(mixed):
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET member = NULL, hash_version = 1 WHERE seq = 3")

    report = audit_verify()

    assert (report.ok, report.problem.seq) == (False, 3)


def test_unknown_hash_version_is_an_alteration_not_a_crash(mixed):
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET hash_version = 7 WHERE seq = 2")

    report = audit_verify()

    assert (report.ok, report.problem.seq) == (False, 2)
    assert "was altered" in report.problem.message


@pytest.mark.postgres
def test_rows_read_as_text_hash_as_the_rows_django_reads_for_both_versions(mixed):
    columns = ", ".join(expression for expression, _ in TEXT_ROW_SQL)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {ENTRY_TABLE} WHERE seq IS NOT NULL ORDER BY seq")
        text_rows = cursor.fetchall()

    assert [entry_hash_of_text_row(row) for row in text_rows] == [entry_hash_of_row(row) for row in chain_rows()] == [e.entry_hash for e in mixed]


# -- the export ---------------------------------------------------------------------------------------


def export_to(path, fmt):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for piece in audit_export(fmt=fmt, filters=ExportFilters()):
            handle.write(piece)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_of_both_versions_verifies_and_carries_the_member(mixed, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)

    check = audit_export_verify(path)

    assert check.ok, check.problems
    text = path.read_text(encoding="utf-8")
    assert "tenant_a" in text and "tenant_b" in text


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_member_edited_in_an_export_is_found(mixed, tmp_path, fmt):
    path = export_to(tmp_path / f"trail.{fmt}", fmt)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("tenant_b", "tenant_c"), encoding="utf-8")

    check = audit_export_verify(path, against_trail=False)

    assert not check.ok
    assert f"row #{mixed[3].seq}: its content does not match its hash (edited)" in check.problems


def test_member_added_to_a_version_1_row_of_an_export_is_found(mixed, tmp_path):
    path = export_to(tmp_path / "trail.jsonl", "jsonl")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[0])
    record["member"] = "tenant_a"
    lines[0] = json.dumps(record) + "\n"
    path.write_text("".join(lines), encoding="utf-8")

    check = audit_export_verify(path, against_trail=False)

    assert f"row #{record['seq']}: its content does not match its hash (edited)" in check.problems


def test_csv_export_from_before_fleets_without_a_member_column_still_verifies_its_rows(tmp_path):
    entries_write(3, change_id="c-1", target="app-db")
    path = export_to(tmp_path / "trail.csv", "csv")
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().splitlines(keepends=True)
    rows = list(csv.DictReader(lines[:-1]))
    old = tmp_path / "old.csv"
    with open(old, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        old_columns = [name for name in COLUMNS if name != "member"]
        writer.writerow(old_columns)
        writer.writerows([row[name] for name in old_columns] for row in rows)
        handle.write(lines[-1])

    check = audit_export_verify(old)

    assert check.rows == 3
    assert not [problem for problem in check.problems if "does not match its hash" in problem or "could not be read" in problem]


# -- the state projection per (member, change) --------------------------------------------------------


def test_member_state_is_projected_per_member_and_not_into_the_single_target_state():
    first = member_entry("tenant_a", state="APPLIED")
    member_entry("tenant_b", state="FAILED")

    states = {(row.member, row.change_id): (row.state, row.entry_id, row.applied_count) for row in MemberChangeState.objects.all()}
    assert states == {("tenant_a", "c-1"): ("APPLIED", first.pk, 1), ("tenant_b", "c-1"): ("FAILED", first.pk + 1, 0)}
    assert not ChangeState.objects.filter(change_id="c-1").exists()
    assert member_change_states(member="tenant_a")["c-1"].state == "APPLIED"
    assert member_change_states(member="tenant_c") == {}


def test_member_state_check_is_against_the_members_own_latest_entry():
    first = audit_record(
        event="change.started", actor=TEST_ACTOR, environment=settings.FLAMINGOCK_ENVIRONMENT,
        change=ChangeRef(id="c-1", target="tenants"), state="STARTED", member="tenant_a", expected_entry_id=None,
    )  # fmt: skip
    # tenant_b has no entry of c-1 yet: None is its expected entry, whatever tenant_a's is.
    audit_record(
        event="change.started", actor=TEST_ACTOR, environment=settings.FLAMINGOCK_ENVIRONMENT,
        change=ChangeRef(id="c-1", target="tenants"), state="STARTED", member="tenant_b", expected_entry_id=None,
    )  # fmt: skip
    before = AuditEntry.objects.count()

    with pytest.raises(StateMoved), transaction.atomic():
        audit_record(
            event="change.applied", actor=TEST_ACTOR, environment=settings.FLAMINGOCK_ENVIRONMENT,
            change=ChangeRef(id="c-1", target="tenants"), state="APPLIED", member="tenant_a", expected_entry_id=None,
        )  # fmt: skip

    assert AuditEntry.objects.count() == before
    assert MemberChangeState.objects.get(member="tenant_a", change_id="c-1").entry_id == first.pk
