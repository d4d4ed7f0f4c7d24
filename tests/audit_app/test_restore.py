"""What ``audit verify`` says after a point-in-time restore of the database (docs/operators.md, "A trail of
ten million entries: backup and restore").

A restore to an earlier point brings back the trail, its chain head and its checkpoints as they were
at that point: the entries written after it are gone. Simulated here as a superuser would see it:
the newest entries (and, for a consistent restore, the checkpoints signed after the point) deleted
with the append-only triggers dropped, the chain head set back to the last entry kept.

What the code does, and the operator's guide says:

- a consistent restore verifies: the chain that is left is whole, its head and checkpoints agree
  with it. The database alone cannot tell that entries are missing; a record kept outside it can
  (an export or evidence pack taken before: ``audit verify-export`` names the first missing row);
- a restore that kept a checkpoint signed after the restore point (the checkpoint table restored
  from a later backup than the trail, for example) fails: the checkpoint names the entry the trail
  no longer reaches;
- once new entries are written past such a checkpoint, it fails as "rewritten": the sequence
  numbers after the restore point were used again for other entries.
"""

import pytest

from audit_app.export import ExportFilters, audit_export, audit_export_verify
from audit_app.integrity import audit_verify, checkpoint_write
from audit_app.models import AuditCheckpoint, AuditEntry, ChainHead
from tests.support.audit import CHECKPOINT_TABLE, ENTRY_TABLE, entries_write, head_rewind, sql, triggers_dropped
from tests.support.trails import cli

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail() -> list[AuditEntry]:
    """Twelve entries, numbered 1 to 12 in a fresh database, with a signed checkpoint at #8 and one at #12."""
    written = entries_write(8, change_id="c-1", target="app-db")
    checkpoint_write(reason="test")
    written += entries_write(4, change_id="c-2", target="app-db")
    checkpoint_write(reason="test")
    assert [entry.seq for entry in written] == list(range(1, 13))
    assert list(AuditCheckpoint.objects.order_by("seq").values_list("seq", flat=True)) == [8, 12]
    return written


def restore_to(seq: int, *, checkpoints_too: bool = True) -> None:
    """The database as a point-in-time restore to just after entry ``seq`` leaves it: later entries
    gone, the chain head at ``seq``, and (``checkpoints_too``) the checkpoints signed later gone as well."""
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq > %s OR seq IS NULL", [seq])
        if checkpoints_too:
            sql(f"DELETE FROM {CHECKPOINT_TABLE} WHERE seq > %s", [seq])
    head_rewind(seq)


def export_to(path):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for line in audit_export(fmt="jsonl", filters=ExportFilters()):
            handle.write(line)
    return path


def test_a_consistent_restore_verifies_and_reports_the_restored_head(trail):
    restore_to(8)

    report = audit_verify()
    assert report.ok, report.problem
    assert (report.head_seq, report.entries_checked) == (8, 8)
    from_checkpoint = audit_verify(from_checkpoint=True)
    assert from_checkpoint.ok
    assert (from_checkpoint.checkpoint_seq, from_checkpoint.entries_checked) == (8, 0)
    result = cli("audit", "verify", "--json")
    assert result.code == 0, result.out + result.err
    assert result.json()["head_seq"] == 8


def test_after_a_consistent_restore_the_writer_goes_on_from_the_restored_head(trail):
    restore_to(8)

    written = entries_write(2)
    assert [entry.seq for entry in written] == [9, 10]
    assert ChainHead.objects.get(id=1).seq == 10
    report = audit_verify()
    assert report.ok, report.problem
    assert report.head_seq == 10


def test_an_export_taken_before_the_restore_names_the_first_lost_entry(trail, tmp_path):
    before = export_to(tmp_path / "before.jsonl")  # signs the head: a checkpoint at #12 (and the export's own)
    restore_to(8)

    assert audit_verify().ok  # the database alone cannot tell
    check = audit_export_verify(before)
    assert not check.ok
    assert "row #9 differs from the live trail" in check.problems
    assert audit_export_verify(before, against_trail=False).ok  # the file itself is intact


def test_a_checkpoint_ahead_of_the_restored_head_fails_and_names_the_first_lost_entry(trail):
    latest = AuditCheckpoint.objects.get(seq=12)
    restore_to(8, checkpoints_too=False)

    report = audit_verify()
    assert not report.ok
    assert report.problem.seq == 9
    assert report.problem.message == f"checkpoint {latest.pk} signed entry #12, but the trail ends at #8: the last entries were removed"
    assert report.entries_checked == 0
    from_checkpoint = audit_verify(from_checkpoint=True)
    assert not from_checkpoint.ok
    assert from_checkpoint.problem.seq == 9
    result = cli("audit", "verify", "--json")
    assert result.code == 6, result.out + result.err
    assert result.json()["first_broken_seq"] == 9


def test_entries_written_past_a_checkpoint_ahead_of_the_restored_head_fail_as_rewritten(trail):
    latest = AuditCheckpoint.objects.get(seq=12)
    restore_to(8, checkpoints_too=False)
    entries_write(5)  # #9..#13: other entries under the numbers the checkpoint signed

    report = audit_verify()
    assert not report.ok
    assert report.problem.seq == 12
    assert report.problem.message == f"checkpoint {latest.pk} no longer matches entry #12: the trail was rewritten"


def test_a_restore_that_left_the_chain_head_ahead_fails_through_the_head(trail):
    # The head row restored from a later point than the entries (not one consistent restore).
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq > 8")
        sql(f"DELETE FROM {CHECKPOINT_TABLE} WHERE seq > 8")

    report = audit_verify()
    assert not report.ok
    assert report.problem.seq == 9
    assert report.problem.message.startswith("the chain head says #12 but the last entry is #8")


def test_a_restore_removing_every_checkpoint_still_checks_the_whole_chain(trail):
    restore_to(10)
    with triggers_dropped():
        sql(f"DELETE FROM {CHECKPOINT_TABLE}")

    report = audit_verify(from_checkpoint=True)
    assert report.ok
    assert (report.checkpoint_seq, report.entries_checked, report.head_seq) == (None, 10, 10)


def test_deleting_the_oldest_entries_as_a_retention_purge_would_breaks_the_chain_at_its_start(trail):
    # docs/operators.md, "Retention: the trail is never shortened": an archived period removed from the
    # trail cannot be told from removed entries.
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq <= 4")

    report = audit_verify()
    assert not report.ok
    assert report.problem.seq == 1
    assert audit_verify(from_checkpoint=True).ok  # only what follows the last checkpoint (#12): nothing
