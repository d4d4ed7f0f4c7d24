"""``audit verify`` (docs/semantics.md §11): with the triggers dropped by a superuser, every kind of tampering is
found and named (an edited row, a row removed in the middle, the last rows removed, a swapped pair,
a forged checkpoint), by the service and by the command (exit code 6); ``--from-checkpoint`` checks
what follows the last signed checkpoint; each verification is stored, audited and, from the daily
task, mailed to the admins when the chain is broken."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection, transaction
from hypothesis import given
from hypothesis import strategies as st

from audit_app.chain import TEXT_ROW_SQL, canonical_json, entry_hash_of_row, entry_hash_of_text_row, json_text_canonical
from audit_app.integrity import audit_verify, checkpoint_write
from audit_app.models import AuditCheckpoint, AuditEntry, Verification
from audit_app.signing import checkpoint_message, key_id, public_key_hex, sign, signing_key
from audit_app.tasks import audit_verify_task
from tests.support.audit import (
    CHECKPOINT_TABLE,
    ENTRY_TABLE,
    chain_rewrite,
    chain_rows,
    entries_write,
    head_rewind,
    rows_bulk_insert,
    sql,
    triggers_dropped,
)
from tests.support.awkward import awkward_entries_write
from tests.support.trails import cli

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail() -> list[AuditEntry]:
    """Ten entries, numbered 1 to 10 in a fresh database."""
    written = entries_write(10, change_id="c-1", target="app-db")
    assert [entry.seq for entry in written] == list(range(1, 11))
    return written


def broken(report) -> tuple[int, int | None]:
    assert not report.ok
    return report.problem.seq, report.problem.entry_id


def cli_broken(*args: str) -> dict:
    result = cli("audit", "verify", "--json", *args)
    assert result.code == 6, result.out + result.err
    return result.json()


# -- an intact chain ----------------------------------------------------------------------------------


def test_intact_chain_verifies(trail):
    report = audit_verify()

    assert report.ok
    assert (report.entries_checked, report.head_seq, report.problem) == (10, 10, None)


def test_verify_command_exits_0_on_an_intact_chain(trail):
    result = cli("audit", "verify")

    assert result.code == 0
    assert "the chain is intact: 10 entries checked up to #10" in result.out


def test_empty_trail_verifies():
    report = audit_verify()

    assert report.ok
    assert report.head_seq == 0


# -- tampering with the triggers dropped --------------------------------------------------------------


def test_raw_update_of_one_row_is_found_and_named(trail):
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET reason = 'nothing to see' WHERE seq = 5")

    assert broken(audit_verify()) == (5, trail[4].pk)
    assert audit_verify().problem.message == f"entry #5 (id {trail[4].pk}) was altered: its content does not match its hash"
    data = cli_broken()
    assert (data["first_broken_seq"], data["first_broken_id"]) == (5, trail[4].pk)
    text = cli("audit", "verify")
    assert text.code == 6
    assert f"BROKEN at entry #5: entry #5 (id {trail[4].pk}) was altered" in text.out


@pytest.mark.parametrize(
    "column, value", [("event", "run.finished"), ("actor", "mallory"), ("details", '{"os_user": "mallory"}'), ("created_at", None)]
)
def test_raw_update_of_any_hashed_column_is_found(trail, column, value):
    with triggers_dropped():
        if column == "created_at":
            sql(f"UPDATE {ENTRY_TABLE} SET created_at = %s WHERE seq = 3", [trail[1].created_at])
        else:
            sql(f"UPDATE {ENTRY_TABLE} SET {column} = %s WHERE seq = 3", [value])

    assert broken(audit_verify()) == (3, trail[2].pk)


def test_deleted_row_in_the_middle_is_found_and_named(trail):
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq = 5")

    report = audit_verify()
    assert broken(report) == (5, None)
    assert report.problem.message == f"entry #5 is missing: the next entry present is #6 (id {trail[5].pk})"
    assert cli_broken()["first_broken_seq"] == 5


def test_deleted_row_renumbered_and_relinked_is_found(trail):
    # The attacker closes the gap: every later entry moves down one place and is relinked.
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq = 5")
        sql(f"UPDATE {ENTRY_TABLE} SET seq = -seq WHERE seq > 5")
        sql(f"UPDATE {ENTRY_TABLE} SET seq = -seq - 1 WHERE seq < 0")
        sql(f"UPDATE {ENTRY_TABLE} SET prev_hash = %s WHERE seq = 5", [trail[3].entry_hash])

    assert broken(audit_verify()) == (5, trail[5].pk)


def test_last_rows_removed_are_found_through_the_chain_head(trail):
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq > 8")

    report = audit_verify()
    assert broken(report) == (9, None)
    assert report.problem.message.startswith("the chain head says #10 but the last entry is #8")
    assert cli_broken()["first_broken_seq"] == 9


def test_last_rows_removed_are_found_through_the_signed_checkpoint(trail):
    checkpoint = checkpoint_write(reason="test")
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq > 8")

    report = audit_verify()
    assert broken(report) == (9, None)
    assert report.problem.message == f"checkpoint {checkpoint.pk} signed entry #10, but the trail ends at #8: the last entries were removed"


def test_last_rows_removed_and_chain_head_rewound_are_still_found_by_the_checkpoint(trail):
    checkpoint = checkpoint_write(reason="test")
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq > 8")
    head_rewind(8)

    report = audit_verify()
    assert broken(report) == (9, None)
    assert f"checkpoint {checkpoint.pk} signed entry #10" in report.problem.message
    data = cli_broken()
    assert data["first_broken_seq"] == 9
    assert "the last entries were removed" in data["message"]


def test_tail_replaced_after_the_head_was_rewound_is_found_by_the_checkpoint(trail):
    checkpoint = checkpoint_write(reason="test")
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq > 8")
    head_rewind(8)
    entries_write(4)  # the writer goes on from the rewound head: #9..#12 are new entries

    report = audit_verify()
    assert broken(report) == (10, None)
    assert report.problem.message == f"checkpoint {checkpoint.pk} no longer matches entry #10: the trail was rewritten"


def test_rewritten_tail_with_recomputed_hashes_is_found_only_by_a_signed_checkpoint(trail):
    # The limit of a chain alone: rewriting an entry and every hash after it, head included, leaves a
    # consistent chain. Only a signed checkpoint of the head, whose key is not in the database, sees it.
    checkpoint = checkpoint_write(reason="test")
    with triggers_dropped():
        chain_rewrite(5, reason="nothing to see")

    report = audit_verify()
    assert broken(report) == (10, None)
    assert report.problem.message == f"checkpoint {checkpoint.pk} no longer matches entry #10: the trail was rewritten"
    with triggers_dropped():
        sql(f"DELETE FROM {CHECKPOINT_TABLE}")
    assert audit_verify().ok


def test_swapped_pair_of_payloads_is_found_and_the_first_named(trail):
    first, second = trail[4], trail[5]
    with triggers_dropped():
        sql(
            f"UPDATE {ENTRY_TABLE} SET reason = CASE id WHEN %s THEN %s ELSE %s END WHERE id IN (%s, %s)",
            [first.pk, second.reason, first.reason, first.pk, second.pk],
        )

    assert AuditEntry.objects.get(pk=first.pk).reason == second.reason
    assert AuditEntry.objects.get(pk=second.pk).reason == first.reason
    assert broken(audit_verify()) == (5, first.pk)
    data = cli_broken()
    assert (data["first_broken_seq"], data["first_broken_id"]) == (5, first.pk)


def test_swapped_pair_of_whole_rows_is_found(trail):
    # Exchanging the rows' identities reorders what was inserted: the later row now comes first.
    first, second = trail[4], trail[5]
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET id = -id WHERE id = %s", [first.pk])
        sql(f"UPDATE {ENTRY_TABLE} SET id = %s WHERE id = %s", [first.pk, second.pk])
        sql(f"UPDATE {ENTRY_TABLE} SET id = %s WHERE id = %s", [second.pk, -first.pk])

    report = audit_verify()
    assert broken(report) == (6, first.pk)
    assert "out of insertion order" in report.problem.message


def test_entry_saved_outside_the_writer_is_found(trail):
    # Inserting is what the triggers allow: a row the writer never chained is named by its id.
    forged = AuditEntry.objects.create(event="change.applied", environment="dev", change_id="c-1", actor="mallory")

    report = audit_verify()
    assert not report.ok
    assert report.problem.entry_id == forged.pk
    assert "outside the chain" in report.problem.message
    assert cli_broken()["first_broken_id"] == forged.pk


def test_entry_inserted_after_the_last_one_without_the_writer_is_found_through_the_head(trail):
    with transaction.atomic():  # an insert: the triggers let it through
        sql(
            f"INSERT INTO {ENTRY_TABLE} (seq, hash_version, prev_hash, entry_hash, event, created_at, environment, change_id, stage, "
            '"order", target, state, checksum, transaction_strategy, recovery_strategy, actor, host, reason, error, rollback_error, details) '
            "VALUES (11, 1, %s, %s, 'change.applied', %s, 'dev', 'c-1', '', '', '', '', '', '', '', 'mallory', '', '', '', '', '{}')",
            [trail[9].entry_hash, "f" * 64, trail[9].created_at],
        )

    report = audit_verify()
    assert broken(report)[0] == 11
    assert "was altered" in report.problem.message


# -- the signed checkpoints ---------------------------------------------------------------------------


def test_forged_checkpoint_signature_is_found(trail):
    checkpoint = checkpoint_write(reason="test")
    with triggers_dropped():
        sql(f"UPDATE {CHECKPOINT_TABLE} SET signature = %s WHERE id = %s", ["00" * 64, checkpoint.pk])

    report = audit_verify()
    assert broken(report) == (10, None)
    assert report.problem.message == f"checkpoint {checkpoint.pk} (at #10) has an invalid signature"
    assert "has an invalid signature" in cli_broken()["message"]


def test_checkpoint_moved_to_another_entry_breaks_its_signature(trail):
    checkpoint = checkpoint_write(reason="test")
    with triggers_dropped():
        sql(f"UPDATE {CHECKPOINT_TABLE} SET seq = 8, entry_hash = %s WHERE id = %s", [trail[7].entry_hash, checkpoint.pk])

    assert "has an invalid signature" in audit_verify().problem.message


def test_appended_checkpoint_with_a_bad_signature_is_found_without_dropping_a_trigger(trail):
    # Inserting is the one thing the triggers allow.
    forged = AuditCheckpoint.objects.create(
        seq=10,
        entry_hash=trail[9].entry_hash,
        created_at=trail[9].created_at,
        key_id="x",
        public_key=public_key_hex(signing_key()),
        signature="ab" * 64,
    )

    report = audit_verify()
    assert report.problem.message == f"checkpoint {forged.pk} (at #10) has an invalid signature"


def test_checkpoint_signed_with_another_key_is_found(trail):
    # An attacker who removed the tail and the genuine checkpoints signs the new tail with a key of
    # their own: a signature that verifies under the key stored beside it proves nothing.
    checkpoint_write(reason="test")
    intruder = Ed25519PrivateKey.generate()
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq > 8")
        sql(f"DELETE FROM {CHECKPOINT_TABLE}")
    head_rewind(8)
    at = trail[7].created_at
    signature, public = sign(checkpoint_message(8, trail[7].entry_hash, at), intruder)
    forged = AuditCheckpoint.objects.create(
        seq=8, entry_hash=trail[7].entry_hash, created_at=at, key_id=key_id(public), public_key=public, signature=signature
    )

    report = audit_verify()
    assert not report.ok
    assert report.problem.seq == 8
    assert f"checkpoint {forged.pk}" in report.problem.message
    assert public_key_hex(intruder) != public_key_hex(signing_key())


def test_verifier_without_the_signing_key_still_checks_the_chain_and_the_signature(trail, settings, monkeypatch):
    checkpoint = checkpoint_write(reason="test")
    monkeypatch.delenv("FLAMINGOCK_AUDIT_SIGNING_KEY", raising=False)
    monkeypatch.delenv("FLAMINGOCK_AUDIT_SIGNING_KEY_FILE", raising=False)
    settings.FLAMINGOCK_ENVIRONMENT = settings.FLAMINGOCK_PROTECTED_ENVIRONMENTS[0]  # no key here

    assert audit_verify().ok
    with triggers_dropped():
        sql(f"UPDATE {CHECKPOINT_TABLE} SET signature = %s WHERE id = %s", ["00" * 64, checkpoint.pk])
    assert "has an invalid signature" in audit_verify().problem.message


def test_every_earlier_checkpoint_must_still_match_its_entry(trail):
    early = checkpoint_write(reason="test")  # at #10
    entries_write(3)
    checkpoint_write(reason="test")  # at #13
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET entry_hash = %s WHERE seq = 10", ["e" * 64])

    report = audit_verify()
    assert broken(report) == (10, None)
    assert report.problem.message == f"checkpoint {early.pk} no longer matches entry #10: the trail was rewritten"


# -- verifying from the last checkpoint ---------------------------------------------------------------


def test_from_checkpoint_checks_only_what_follows_the_last_checkpoint(trail):
    checkpoint_write(reason="test")
    entries_write(5)

    report = audit_verify(from_checkpoint=True)

    assert report.ok
    assert (report.mode, report.checkpoint_seq, report.entries_checked, report.head_seq) == ("checkpoint", 10, 5, 15)


def test_from_checkpoint_catches_an_entry_tampered_after_the_checkpoint(trail):
    checkpoint_write(reason="test")
    later = entries_write(5)
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET reason = 'rewritten' WHERE seq = 13")

    assert broken(audit_verify(from_checkpoint=True)) == (13, later[2].pk)
    data = cli_broken("--from-checkpoint")
    assert (data["mode"], data["first_broken_seq"]) == ("checkpoint", 13)


def test_from_checkpoint_catches_a_deleted_first_entry_after_the_checkpoint(trail):
    checkpoint_write(reason="test")
    entries_write(3)
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq = 11")

    assert broken(audit_verify(from_checkpoint=True)) == (11, None)


def test_from_checkpoint_leaves_earlier_entries_to_the_full_verification(trail):
    checkpoint_write(reason="test")
    entries_write(2)
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET reason = 'rewritten' WHERE seq = 3")

    assert audit_verify(from_checkpoint=True).ok
    assert broken(audit_verify()) == (3, trail[2].pk)


def test_from_checkpoint_without_a_checkpoint_checks_the_whole_chain(trail):
    report = audit_verify(from_checkpoint=True)

    assert report.ok
    assert (report.checkpoint_seq, report.entries_checked) == (None, 10)


# -- the verification record --------------------------------------------------------------------------


def test_verify_command_stores_the_verification_and_audits_it(trail):
    result = cli("audit", "verify", "--json")

    verification = Verification.objects.get()
    audited = AuditEntry.objects.filter(event="audit.verified").get()
    assert result.code == 0
    assert (verification.ok, verification.mode, verification.entries_checked, verification.head_seq) == (True, "full", 10, 10)
    assert (verification.first_broken_seq, verification.problem) == (None, "")
    assert audited.seq == 11
    assert audited.details["ok"] is True
    assert audited.details["entries_checked"] == 10
    assert audited.actor == verification.actor != ""
    assert audit_verify().ok


def test_failed_verification_is_stored_and_audited_with_the_broken_entry(trail):
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET reason = 'rewritten' WHERE seq = 4")

    cli_broken()

    verification = Verification.objects.get()
    audited = AuditEntry.objects.get(event="audit.verified")
    assert (verification.ok, verification.first_broken_seq, verification.first_broken_id) == (False, 4, trail[3].pk)
    assert "entry #4" in verification.problem
    assert (audited.details["ok"], audited.details["first_broken_seq"]) == (False, 4)
    assert (audited.seq, audited.prev_hash) == (11, trail[9].entry_hash)  # the trail goes on from the head


def test_daily_task_stores_and_audits_an_intact_verification_without_alerting(trail, settings, mailoutbox):
    settings.ADMINS = [("Ops", "ops@example.com")]

    assert audit_verify_task() is True

    verification = Verification.objects.get()
    audited = AuditEntry.objects.get(event="audit.verified")
    assert (verification.ok, verification.actor) == (True, "service:audit-verifier")
    assert (audited.actor, audited.details["ok"]) == ("service:audit-verifier", True)
    assert mailoutbox == []


def test_daily_task_mails_the_admins_when_the_chain_is_broken(trail, settings, mailoutbox):
    settings.ADMINS = [("Ops", "ops@example.com")]
    with triggers_dropped():
        sql(f"DELETE FROM {ENTRY_TABLE} WHERE seq = 7")

    assert audit_verify_task() is False

    verification = Verification.objects.get()
    assert (verification.ok, verification.first_broken_seq) == (False, 7)
    assert AuditEntry.objects.get(event="audit.verified").details["ok"] is False
    [alert] = mailoutbox
    assert alert.to == ["ops@example.com"]
    assert "audit trail does not verify" in alert.subject
    assert "First broken entry: #7" in alert.body
    assert "entry #7 is missing" in alert.body


# -- verification split across processes --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_parallel_verification_agrees_and_names_the_first_broken_entry():
    entries_write(30)

    intact = audit_verify(workers=3)
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET reason = 'rewritten' WHERE seq IN (17, 25)")
    tampered = audit_verify(workers=3)

    assert intact.ok
    assert intact.entries_checked == 30
    assert not tampered.ok
    assert tampered.problem.seq == 17
    assert audit_verify(workers=1).problem.seq == 17


@pytest.mark.django_db(transaction=True)
def test_parallel_verification_finds_a_broken_link_between_two_ranges():
    entries_write(30)
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET prev_hash = %s WHERE seq = 16", ["f" * 64])  # the first entry of the second range

    report = audit_verify(workers=2)

    assert (report.ok, report.problem.seq) == (False, 16)
    assert "does not link to entry #15" in report.problem.message


# -- values a serialisation can get wrong -------------------------------------------------------------


def test_awkward_values_verify_and_an_edit_among_them_is_found():
    written = awkward_entries_write()

    assert audit_verify().ok
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET details = %s WHERE id = %s", ['{"s": "other"}', written[5].pk])
    assert broken(audit_verify()) == (written[5].seq, written[5].pk)


@pytest.mark.postgres
def test_rows_read_as_text_hash_as_the_rows_django_reads():
    # The verifier reads PostgreSQL's text of the timestamp, the run id and the details instead of
    # Django's datetime, UUID and dict: the hash must come out the same for every kind of value.
    awkward_entries_write()
    entries_write(3, change_id="c-1", target="app-db")
    columns = ", ".join(expression for expression, _ in TEXT_ROW_SQL)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {ENTRY_TABLE} WHERE seq IS NOT NULL ORDER BY seq")
        text_rows = cursor.fetchall()

    rows = chain_rows()

    assert len(text_rows) == len(rows) == 10
    assert [entry_hash_of_text_row(row) for row in text_rows] == [entry_hash_of_row(row) for row in rows] == [row[4] for row in rows]


@pytest.mark.postgres
def test_verification_stopped_at_a_problem_leaves_the_transaction_usable(trail):
    # Megabytes of rows after the first broken one: the server is still sending them when the
    # verifier stops. Cancelling the statement would abort the transaction the verifier runs in.
    rows_bulk_insert(30_000)  # rows that do not link to the trail

    assert broken(audit_verify(workers=1)) == (11, AuditEntry.objects.get(seq=11).pk)
    assert AuditEntry.objects.count() == 30_010
    assert audit_verify(workers=1).problem.seq == 11


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@given(JSON_VALUES)
def test_canonical_text_of_json_text_is_the_canonical_json_of_its_value(value):
    text = json.dumps(value, ensure_ascii=False)
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    assert canonical_json(value) == expected
    assert json_text_canonical(text) == (None if value is None else canonical_json(json.loads(text)))
    assert json_text_canonical(f" {text} ") == json_text_canonical(text)
