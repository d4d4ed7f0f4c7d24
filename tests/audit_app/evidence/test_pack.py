"""Evidence packs (issue 23): a quarter where every control passes and one with each kind of
exception, written from a trail of past dates and checked offline with the public key alone; one
edited byte in any file, and a forged row in the trail, make the pack fail, naming what failed."""

from __future__ import annotations

import csv
import io
import json
import uuid
import zipfile
from datetime import timedelta

import pytest

from audit_app.evidence import offline
from audit_app.evidence.build import pack_build
from audit_app.evidence.offline import EXCEPTION, NOT_APPLICABLE, PASS, verify_pack
from audit_app.models import AuditEntry
from audit_app.signing import public_key_hex, signing_key
from tests.audit_app.evidence.builder import DRIFT_ACK_HOURS, Q1_END, Q1_START, REVIEW_HOURS, TrailBuilder, quarter_clean, quarter_with_exceptions
from tests.support.audit import ENTRY_TABLE, chain_rewrite, sql, triggers_dropped

pytestmark = pytest.mark.django_db


def build(path, *, since=Q1_START, until=Q1_END, targets=(), members=()):
    return pack_build(
        path=path, since=since, until=until, environment="prod", targets=list(targets), members=list(members),
        protected_environments=["prod"], drift_ack_hours=DRIFT_ACK_HOURS, review_hours=REVIEW_HOURS, requested_by="carla",
    )  # fmt: skip


def results(pack) -> dict[str, str]:
    return {control["id"]: control["result"] for control in pack.controls}


def member(path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


@pytest.fixture
def key() -> str:
    return public_key_hex(signing_key())


@pytest.fixture
def clean_pack(tmp_path):
    quarter_clean(TrailBuilder())
    return build(tmp_path / "q1.zip")


def test_a_quarter_with_every_control_passing_gives_pass_for_each_and_verifies_offline(clean_pack, key):
    assert results(clean_pack) == dict.fromkeys(offline.CONTROL_TITLES, PASS)
    assert clean_pack.entries == AuditEntry.objects.filter(created_at__gte=Q1_START, created_at__lt=Q1_END).count()
    verdict = verify_pack(clean_pack.path, public_key=key)
    assert verdict.problems == []
    assert {control["id"]: control["result"] for control in verdict.controls} == results(clean_pack)


def test_the_pack_holds_every_file_and_a_manifest_of_their_sha256(clean_pack):
    with zipfile.ZipFile(clean_pack.path) as archive:
        assert set(archive.namelist()) == {*offline.PACK_FILES, offline.MANIFEST, offline.SIGNATURE}
        assert archive.getinfo(offline.AUDIT).compress_type == zipfile.ZIP_STORED
        manifest = json.loads(archive.read(offline.MANIFEST))
    assert set(manifest["files"]) == set(offline.PACK_FILES)
    assert manifest["scope"]["environment"] == "prod" and manifest["scope"]["from"].startswith("2026-01-01")
    assert member(clean_pack.path, offline.SUMMARY).startswith(b"%PDF")


def test_changes_csv_has_one_row_per_execution_in_scope_with_approver_roles_and_the_audit_range(clean_pack):
    rows = list(csv.DictReader(io.StringIO(member(clean_pack.path, offline.CHANGES).decode())))
    executed = AuditEntry.objects.filter(created_at__gte=Q1_START, created_at__lt=Q1_END, environment="prod", event="change.applied")
    assert len(rows) == executed.count() == 14  # 13 Tuesdays and the break-glass change; staging is out of scope
    first = rows[0]
    assert (first["change_id"], first["requester"], first["approvers"], first["separation_of_duties"], first["result"]) == (
        "c-001", "alice", "bob (Approver)", PASS, "APPLIED",
    )  # fmt: skip
    assert int(first["audit_seq_first"]) < int(first["audit_seq_last"])
    assert next(row for row in rows if row["change_id"] == "c-emergency")["separation_of_duties"] == "BREAK_GLASS"


def test_controls_json_names_the_entries_each_result_rests_on(clean_pack):
    controls = {c["id"]: c for c in json.loads(member(clean_pack.path, offline.CONTROLS))["controls"]}
    verified_seqs = set(AuditEntry.objects.filter(event="audit.verified", created_at__lt=Q1_END).values_list("seq", flat=True))
    assert set(controls["chain_verified_daily"]["entries"]) == verified_seqs and controls["chain_verified_daily"]["checked"] == 1
    assert controls["drift_acknowledged_in_time"]["checked"] == 1
    assert controls["approved_by_another"]["entries"]


def test_a_quarter_with_each_kind_of_exception_gives_exception_for_each_and_names_them(tmp_path, key):
    quarter_with_exceptions(TrailBuilder())
    pack = build(tmp_path / "q1.zip")
    assert results(pack) == dict.fromkeys(offline.CONTROL_TITLES, EXCEPTION)
    reasons = {control["id"]: [item["reason"] for item in control["exceptions"]] for control in pack.controls}
    assert reasons["approved_by_another"] == ["c-self: approved by its requester", "c-unrequested: executed without an approved request"]
    assert reasons["nothing_outside_governance"][0].startswith("drift applied_outside_governance")
    assert reasons["chain_verified_daily"] == ["2026-01-31: no verification (a gap)", "2026-02-10: the verification found the chain broken"]
    assert reasons["drift_acknowledged_in_time"] == ["finding 8 (CHECKSUM_MISMATCH): handled after 3 days, 0:00:00"]
    assert reasons["emergency_reviewed_in_time"] == [
        "break-glass #" + str(AuditEntry.objects.get(event="break_glass.used", change_id="c-late-review").seq) + " (c-late-review): reviewed late",
        "break-glass #"
        + str(AuditEntry.objects.get(event="break_glass.used", change_id="c-self-review").seq)
        + " (c-self-review): reviewed by the person who used it",
    ]
    # An honest pack of a bad quarter still verifies: the exceptions are the finding, not a fault.
    assert verify_pack(pack.path, public_key=key).problems == []


def test_a_period_with_nothing_to_judge_is_not_applicable_but_the_chain_control_still_applies(tmp_path, key):
    builder = TrailBuilder()
    builder.add("run.started", Q1_START - timedelta(days=3))
    builder.save()
    builder.checkpoint(Q1_START - timedelta(days=2))
    day = Q1_START
    while day < Q1_START + timedelta(days=7):
        builder.verified(day)
        day += timedelta(days=1)
    builder.save()
    pack = build(tmp_path / "week.zip", until=Q1_START + timedelta(days=7))
    assert results(pack) == {
        "approved_by_another": NOT_APPLICABLE, "nothing_outside_governance": PASS, "chain_verified_daily": PASS,
        "drift_acknowledged_in_time": NOT_APPLICABLE, "emergency_reviewed_in_time": NOT_APPLICABLE,
    }  # fmt: skip
    assert verify_pack(pack.path, public_key=key).ok  # the checkpoint after was signed when the pack was made


def test_scope_by_target_leaves_other_targets_changes_out(tmp_path):
    quarter_clean(TrailBuilder())
    pack = build(tmp_path / "other.zip", targets=["billing-db"])
    assert member(pack.path, offline.CHANGES).decode().count("\n") == 1  # the header alone
    assert results(pack)["approved_by_another"] == NOT_APPLICABLE


@pytest.mark.parametrize("name", [*offline.PACK_FILES, offline.MANIFEST, offline.SIGNATURE])
def test_one_edited_byte_in_any_file_fails_the_offline_check_naming_it(clean_pack, key, tmp_path, name):
    edited = tmp_path / "edited.zip"
    with zipfile.ZipFile(clean_pack.path) as source, zipfile.ZipFile(edited, "w") as target:
        for info in source.infolist():
            data = bytearray(source.read(info))
            if info.filename == name:
                middle = len(data) // 2
                data[middle] = (data[middle] + 1) % 256 if data[middle] not in (0x0A,) else 0x20
            target.writestr(info, bytes(data))
    verdict = verify_pack(edited, public_key=key)
    assert not verdict.ok
    named = offline.MANIFEST if name == offline.SIGNATURE else name
    assert any(problem.startswith(named) for problem in verdict.problems), verdict.problems


def test_another_public_key_fails(clean_pack):
    other = "ab" * 32
    verdict = verify_pack(clean_pack.path, public_key=other)
    assert not verdict.ok and "manifest.json: its signature is not valid" in verdict.problems[0]


def test_a_pack_made_from_a_trail_with_a_forged_row_fails(tmp_path, key):
    quarter_clean(TrailBuilder())
    target = AuditEntry.objects.get(event="change.applied", change_id="c-003")
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET actor = %s WHERE seq = %s", ["mallory", target.seq])
    verdict = verify_pack(build(tmp_path / "forged.zip").path, public_key=key)
    assert f"{offline.AUDIT}: entry #{target.seq}: its content does not match its hash (edited or forged)" in verdict.problems


def test_a_pack_made_from_a_trail_rewritten_to_hide_a_forged_row_fails_at_the_signed_checkpoint(tmp_path, key):
    quarter_clean(TrailBuilder())
    target = AuditEntry.objects.get(event="request.approved", change_id="c-004")
    with triggers_dropped():
        chain_rewrite(target.seq, actor="alice")  # the requester approving her own change, every later hash recomputed
    verdict = verify_pack(build(tmp_path / "rewritten.zip").path, public_key=key)
    assert any("does not link to the signed checkpoint after the period" in problem for problem in verdict.problems), verdict.problems


def test_a_period_whose_end_is_not_after_its_start_is_refused(tmp_path):
    with pytest.raises(ValueError, match="after its start"):
        build(tmp_path / "x.zip", since=Q1_END, until=Q1_START)
    assert not (tmp_path / "x.zip").exists()


def test_an_approvers_role_is_the_one_recorded_at_decision_time_and_inferred_for_older_entries(tmp_path, key):
    builder = TrailBuilder()
    builder.grant(Q1_START - timedelta(days=5), "bob", "Approver")
    builder.grant(Q1_START - timedelta(days=5), "dana", "Approver")
    at = Q1_START + timedelta(days=3)
    builder.change(at, "c-older", approver="bob")  # written before decisions recorded roles: inferred
    builder.add("request.created", at, actor="alice", details={"request_id": 900, "kind": "APPLY"}, change_id="c-recorded", target="app-db")
    recorded = {"request_id": 900, "kind": "APPLY", "approvals": 1, "required": 1, "final": True, "roles": ["Approver", "Platform admin"]}
    builder.add("request.approved", at + timedelta(hours=1), actor="dana", details=recorded, change_id="c-recorded", target="app-db")
    builder.add("run.queued", at + timedelta(hours=2), actor="alice", run_id=str(uuid.UUID(int=900)), details={"request_id": 900})
    builder.add("change.applied", at + timedelta(hours=3), run_id=str(uuid.UUID(int=900)), state="APPLIED", change_id="c-recorded", target="app-db")
    # Dana's grants say only "Approver": the recorded roles win, as they were when she decided.
    builder.add("request.created", at, actor="alice", details={"request_id": 901, "kind": "APPLY"}, change_id="c-none", target="app-db")
    nothing = {"request_id": 901, "kind": "APPLY", "approvals": 1, "required": 1, "final": True, "roles": []}
    builder.add("request.approved", at + timedelta(hours=1), actor="dana", details=nothing, change_id="c-none", target="app-db")
    builder.add("run.queued", at + timedelta(hours=2), actor="alice", run_id=str(uuid.UUID(int=901)), details={"request_id": 901})
    builder.add("change.applied", at + timedelta(hours=3), run_id=str(uuid.UUID(int=901)), state="APPLIED", change_id="c-none", target="app-db")
    builder.save()
    pack = build(tmp_path / "q1.zip")
    rows = {row["change_id"]: row for row in csv.DictReader(io.StringIO(member(pack.path, offline.CHANGES).decode()))}
    assert rows["c-older"]["approvers"] == "bob (Approver)"
    assert rows["c-recorded"]["approvers"] == "dana (Approver, Platform admin)"
    assert rows["c-none"]["approvers"] == "dana (-)"
    assert verify_pack(pack.path, public_key=key).problems == []  # the verifier recomputes the same rows


def test_a_review_approved_within_the_packs_window_but_recorded_overdue_by_the_product_is_late(tmp_path, key):
    """The product's deadline at the time of use (its ``review.overdue`` entry) counts even when the
    pack's window (``review_hours``) would call the approval in time: the two settings may differ."""
    builder = TrailBuilder()
    builder.grant(Q1_START - timedelta(days=20), "bob", "Approver")
    builder.save()
    builder.checkpoint(Q1_START - timedelta(days=9))
    use_at = Q1_START + timedelta(days=3)
    builder.break_glass(use_at, "c-short-window", review_after=timedelta(hours=5))
    review_id = builder.requests
    builder.add("review.overdue", use_at + timedelta(hours=4), details={"request_id": review_id, "review_request_id": review_id, "kind": "REVIEW"})
    builder.add("run.started", Q1_END + timedelta(hours=1))
    builder.save()
    builder.checkpoint(Q1_END + timedelta(days=1))
    assert REVIEW_HOURS > 5  # by the pack's own window alone, the review was in time

    pack = build(tmp_path / "late.zip")

    [control] = [control for control in pack.controls if control["id"] == "emergency_reviewed_in_time"]
    assert control["result"] == EXCEPTION
    use = AuditEntry.objects.get(event="break_glass.used", change_id="c-short-window").seq
    assert [e["reason"] for e in control["exceptions"]] == [f"break-glass #{use} (c-short-window): reviewed late"]
    assert verify_pack(pack.path, public_key=key).problems == []
