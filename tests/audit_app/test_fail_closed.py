"""Verification fail-closed (docs/semantics.md §13.4, docs/compliance.md "When verification fails:
quarantine"): a row forged right after the chain head (an INSERT, which the append-only triggers let
through on both databases) takes the next sequence number. The verifier still delivers its verdict
(exit code 6 naming the forged row, the log, the mail to the admins) and says it could not record it;
every write is refused with ``TrailClosed`` and writes nothing; ``audit quarantine`` moves the row
aside, audited as ``audit.quarantined``, and writes resume with the chain verifying again."""

import hashlib
import logging

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import transaction

from audit_app.chain import HASHED_FIELDS, canonical_json, entry_hash
from audit_app.integrity import audit_verify
from audit_app.models import AuditEntry, ChainHead, QuarantinedEntry, Verification
from audit_app.services import Actor, ChangeRef, TrailClosed, audit_record
from audit_app.tasks import audit_verify_task
from changes_app.governance.identity import token_create
from tests.support.audit import ENTRY_TABLE, entries_write, entry_write, sql, trigger_names
from tests.support.trails import cli

pytestmark = pytest.mark.django_db

CLOSED = "the audit trail is closed: entry #{seq} is taken by a row the writer did not write"


def forge(seq: int, prev_hash: str, created_at, *, entry_hash: str = "f" * 64) -> int:
    """Insert a row with sequence number ``seq`` around the writer, as the tamper tests do; its id."""
    with transaction.atomic():  # an insert: the triggers let it through
        sql(
            f"INSERT INTO {ENTRY_TABLE} (seq, hash_version, prev_hash, entry_hash, event, created_at, environment, change_id, stage, "
            '"order", target, state, checksum, transaction_strategy, recovery_strategy, actor, host, reason, error, rollback_error, details) '
            "VALUES (%s, 1, %s, %s, 'change.applied', %s, 'dev', 'c-1', '', '', '', '', '', '', '', 'mallory', '', '', '', '', '{}')",
            [seq, prev_hash, entry_hash, created_at],
        )
    return AuditEntry.objects.get(seq=seq).pk


@pytest.fixture
def forged() -> tuple[list[AuditEntry], int]:
    """Three entries by the writer, then a row forged at #4 (the next sequence number)."""
    trail = entries_write(3, change_id="c-1", target="app-db")
    last = trail[-1]
    assert last.seq == ChainHead.objects.get().seq
    return trail, forge(last.seq + 1, last.entry_hash, last.created_at)


def test_verify_delivers_its_verdict_naming_the_forged_row_and_says_it_could_not_record_it(forged, caplog):
    trail, forged_id = forged
    head = trail[-1].seq

    with caplog.at_level(logging.ERROR, logger="flamingock.audit"):
        result = cli("audit", "verify")

    assert result.code == 6
    assert f"BROKEN at entry #{head + 1}: entry #{head + 1} (id {forged_id})" in result.out
    assert "verdict not recorded: " + CLOSED.format(seq=head + 1) in result.err
    assert f"FAILED at entry #{head + 1}" in caplog.text and "verdict not recorded" in caplog.text
    assert not Verification.objects.exists()
    assert not AuditEntry.objects.filter(event="audit.verified").exists()

    data = cli("audit", "verify", "--json")
    assert data.code == 6
    assert (data.json()["first_broken_seq"], data.json()["first_broken_id"]) == (head + 1, forged_id)


def test_verify_and_the_writer_name_a_forged_row_whose_hash_verifies():
    # A careful forger computes a hash that verifies; the chain head still says #3.
    last = entries_write(3)[-1]
    fields = dict.fromkeys(HASHED_FIELDS, "")
    fields.update(event="change.applied", environment="dev", change_id="c-1", actor="mallory", details={})
    fields.update(dict.fromkeys(("run_id", "actor_user_id", "pid", "fencing_token", "duration_ms")))
    forge(last.seq + 1, last.entry_hash, last.created_at, entry_hash=entry_hash(last.seq + 1, last.entry_hash, last.created_at, fields))

    result = cli("audit", "verify")

    assert result.code == 6
    assert f"BROKEN at entry #{last.seq + 1}: the chain head says #{last.seq} but the last entry is #{last.seq + 1}" in result.out
    assert "verdict not recorded: " + CLOSED.format(seq=last.seq + 1) in result.err
    with pytest.raises(TrailClosed), transaction.atomic():
        entry_write()


def test_daily_task_mails_the_verdict_although_it_cannot_record_it(forged, settings, mailoutbox, caplog):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.ADMINS = [("Ops", "ops@example.com")]
    trail, forged_id = forged

    with caplog.at_level(logging.ERROR, logger="flamingock.audit"):
        assert audit_verify_task() is False

    subjects = [message.subject for message in mailoutbox]
    assert any("the audit trail does not verify" in subject for subject in subjects), subjects
    verdict = next(message for message in mailoutbox if "does not verify" in message.subject)
    assert f"First broken entry: #{trail[-1].seq + 1}" in verdict.body and f"id {forged_id}" in verdict.body
    not_recorded = next(message for message in mailoutbox if "could not be recorded" in message.subject)
    assert "verdict not recorded: " + CLOSED.format(seq=trail[-1].seq + 1) in not_recorded.body
    assert "FAILED at entry" in caplog.text
    assert not Verification.objects.exists()


def test_a_write_after_the_forgery_is_refused_and_writes_nothing_every_time(forged):
    trail, _ = forged
    before = list(AuditEntry.objects.order_by("id").values_list("id", "seq", "entry_hash"))

    for _ in range(2):  # refused the same way until the quarantine
        # (each in a block of its own: the test runs in a transaction, which a refusal would end)
        with pytest.raises(TrailClosed, match=CLOSED.format(seq=trail[-1].seq + 1)) as refused, transaction.atomic():
            entry_write("run.started")
        assert "flamingock audit quarantine --reason TEXT" in str(refused.value)
        assert "When verification fails: quarantine" in str(refused.value)
    # A state-projected entry at the end of a larger transaction too (the shared-transaction apply).
    with pytest.raises(TrailClosed):
        with transaction.atomic():
            audit_record(
                event="change.applied", actor=Actor(name="tester"), environment="dev", change=ChangeRef(id="c-2"), state="APPLIED",
                expected_entry_id=None,
            )  # fmt: skip

    assert list(AuditEntry.objects.order_by("id").values_list("id", "seq", "entry_hash")) == before
    assert ChainHead.objects.get().seq == trail[-1].seq
    assert not AuditEntry.objects.filter(change_id="c-2").exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_entry_sent_with_its_commit_is_refused_and_its_transaction_rolled_back():
    """PostgreSQL: the entry that ends its transaction goes with the COMMIT in one round trip; the
    conflict skips the COMMIT, and the transaction (the change's own rows with it) is rolled back."""
    last = entries_write(3)[-1]
    forge(last.seq + 1, last.entry_hash, last.created_at)
    before = AuditEntry.objects.count()
    with pytest.raises(TrailClosed, match=CLOSED.format(seq=last.seq + 1)):
        entry_write()  # an entry of its own: one statement in autocommit

    with pytest.raises(TrailClosed, match=CLOSED.format(seq=last.seq + 1)):
        with transaction.atomic():
            Verification.objects.create(mode="full", ok=True)  # the change's own write
            audit_record(event="change.applied", actor=Actor(name="tester"), environment="dev", before_commit=lambda: None)

    assert not Verification.objects.exists()
    assert AuditEntry.objects.count() == before
    assert cli("audit", "quarantine", "--reason", "forged").code == 0
    entry_write()
    assert audit_verify().ok


def test_quarantine_moves_the_forged_row_aside_audits_it_and_writes_resume(forged):
    trail, forged_id = forged
    head = trail[-1].seq
    triggers = trigger_names()
    stored = AuditEntry.objects.filter(pk=forged_id).values().get()

    result = cli("audit", "quarantine", "--reason", "row #4 inserted around the writer (incident 42)")

    assert result.code == 0, result.out + result.err
    assert "moved aside 1 row(s)" in result.out and f"id {forged_id} #{head + 1} change.applied by mallory" in result.out
    assert "the chain is intact" in result.out
    assert not AuditEntry.objects.filter(pk=forged_id).exists()
    kept = QuarantinedEntry.objects.get()
    assert (kept.original_id, kept.seq, kept.entry_hash, kept.row["actor"]) == (forged_id, head + 1, "f" * 64, "mallory")
    assert kept.row["id"] == stored["id"] and kept.reason == "row #4 inserted around the writer (incident 42)"
    quarantined = AuditEntry.objects.get(event="audit.quarantined")
    assert quarantined.seq == head + 1 and quarantined.prev_hash == trail[-1].entry_hash  # the trail goes on from the head
    assert quarantined.pk == kept.quarantine_entry_id
    (moved,) = quarantined.details["rows"]
    assert (moved["id"], moved["seq"], moved["entry_hash"]) == (forged_id, head + 1, "f" * 64)
    assert moved["row_digest"] == kept.row_digest == hashlib.sha256(canonical_json(kept.row).encode()).hexdigest()
    assert quarantined.reason == kept.reason
    # The append-only triggers are back, and writes resume.
    assert trigger_names() == triggers and len(triggers) == 4
    written = entry_write("run.started")
    assert written.seq == ChainHead.objects.get().seq
    verified = cli("audit", "verify")
    assert verified.code == 0, verified.out + verified.err
    assert "verdict not recorded" not in verified.err
    assert audit_verify().ok


def test_quarantine_after_a_verify_that_could_not_be_recorded_then_verify_records_again(forged):
    assert cli("audit", "verify").code == 6

    assert cli("audit", "quarantine", "--reason", "forged").code == 0
    result = cli("audit", "verify", "--json")

    assert result.code == 0
    assert Verification.objects.filter(ok=True).exists()
    assert AuditEntry.objects.filter(event="audit.verified", details__ok=True).exists()


def test_quarantine_moves_rows_outside_the_chain_too():
    entries_write(2)
    outside = AuditEntry.objects.create(event="change.applied", environment="dev", change_id="c-1", actor="mallory")
    assert not audit_verify().ok

    result = cli("audit", "quarantine", "--reason", "row without a sequence number")

    assert result.code == 0, result.out + result.err
    assert QuarantinedEntry.objects.get().original_id == outside.pk
    assert audit_verify().ok


def test_quarantine_with_nothing_foreign_writes_nothing():
    entries_write(2)
    before = AuditEntry.objects.count()

    result = cli("audit", "quarantine", "--reason", "just checking")

    assert result.code == 0
    assert "nothing to quarantine" in result.out
    assert AuditEntry.objects.count() == before and not QuarantinedEntry.objects.exists()


def test_quarantine_needs_a_reason(forged):
    result = cli("audit", "quarantine")

    assert result.code == 2
    assert "needs --reason" in result.out + result.err
    assert not QuarantinedEntry.objects.exists()


def test_quarantine_needs_the_permission_for_a_token_user(monkeypatch):
    User = get_user_model()
    engineer = User.objects.create_user("eng")
    admin = User.objects.create_user("platform")
    admin.user_permissions.add(Permission.objects.get(codename="add_quarantinedentry"))
    _, engineer_key = token_create(user=engineer, name="cli", created_by="root")
    _, admin_key = token_create(user=admin, name="cli", created_by="root")
    last = AuditEntry.objects.exclude(seq=None).order_by("-seq").first()
    forged_id = forge(last.seq + 1, last.entry_hash, last.created_at)

    monkeypatch.setenv("FLAMINGOCK_TOKEN", engineer_key)
    refused = cli("audit", "quarantine", "--reason", "forged")
    assert refused.code == 2
    assert "may not quarantine" in refused.out + refused.err
    assert AuditEntry.objects.filter(pk=forged_id).exists()

    monkeypatch.setenv("FLAMINGOCK_TOKEN", admin_key)
    assert cli("audit", "quarantine", "--reason", "forged").code == 0
    assert AuditEntry.objects.get(event="audit.quarantined").actor == "platform"
