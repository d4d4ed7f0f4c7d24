"""Operator actions (docs/semantics.md §5 undo, §9 governance): undo, re-apply, fix, skip, accept-checksum, who
may do them, and the CLI's proof of identity in a protected environment."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone
from guardian.shortcuts import assign_perm

from audit_app.models import AuditEntry
from audit_app.services import Actor
from changes_app import services
from changes_app.governance.identity import token_create
from changes_app.governance.permissions import PermissionRefused
from changes_app.models import ApiToken, Run, TargetSystem
from tests.support.trails import (
    cli,
    crash_run,
    entries,
    external_table_exists,
    journal_change,
    ledger,
    local_operator,
    markers,
    next_action,
    python_sql_change,
    results,
    run_events,
    run_pipeline,
    sql_change,
    table_exists,
    written,
)

pytestmark = pytest.mark.django_db(transaction=True)
CLI = Run.Source.CLI


def undo(change_id, reason="rolled back by the test", actor=None):
    return services.change_undo(change_id=change_id, actor=actor or local_operator(), reason=reason, source=CLI)


def reapply(change_id, reason="release it", actor=None):
    return services.change_reapply(change_id=change_id, actor=actor or local_operator(), reason=reason, source=CLI)


def fix(change_id, resolution, reason="checked by hand", actor=None):
    return services.change_fix(change_id=change_id, resolution=resolution, actor=actor or local_operator(), reason=reason, source=CLI)


def skip(change_id, reason="not here", actor=None):
    return services.change_skip(change_id=change_id, actor=actor or local_operator(), reason=reason, source=CLI)


def accept(change_id, reason="intended edit", actor=None):
    return services.change_accept_checksum(change_id=change_id, actor=actor or local_operator(), reason=reason, source=CLI)


def user_actor(username):
    user = get_user_model().objects.create_user(username)
    return user, Actor(name=username, user_id=user.pk, via="cli")


@pytest.fixture
def three_strategies(make_pipeline, unique, journal):
    """One stage, one change per strategy, all applied: app-db, then the journal, then ext-pg."""
    ids = (f"shared-{unique}", f"note-{unique}", f"marker-{unique}")
    files = {
        "0001_shared.yaml": sql_change(ids[0], f"CREATE TABLE u_{unique} (id integer)", f"DROP TABLE u_{unique}"),
        "0002_note.py": journal_change(ids[1], rollback="ok"),
        "0003_marker.py": python_sql_change(ids[2], f"CREATE TABLE um_{unique} (id integer)", f"DROP TABLE um_{unique}", target="ext-pg"),
    }
    make_pipeline({"main": files})
    run = run_pipeline()
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    return ids


# -- undo ----------------------------------------------------------------------------------------------


def test_undo_rolls_back_the_change_and_every_later_one_newest_first_then_holds_them(three_strategies, unique, journal, external_pg):
    shared, note, marker = three_strategies

    run = undo(shared, reason="bad release 42")

    assert run.kind == Run.Kind.UNDO and run.status == Run.Status.SUCCEEDED, run.status_reason
    assert list(AuditEntry.objects.filter(run_id=run.id).exclude(change_id="").order_by("id").values_list("change_id", "state")) == [
        (marker, "ROLLBACK_STARTED"),
        (marker, "ROLLED_BACK"),
        (marker, "SKIPPED"),
        (note, "ROLLBACK_STARTED"),
        (note, "ROLLED_BACK"),
        (note, "SKIPPED"),
        (shared, "ROLLED_BACK"),
        (shared, "SKIPPED"),
    ]
    assert ledger(shared) == [(shared, "APPLIED"), (shared, "ROLLED_BACK"), (shared, "SKIPPED")]
    assert ledger(note) == [(note, "STARTED"), (note, "APPLIED"), (note, "ROLLBACK_STARTED"), (note, "ROLLED_BACK"), (note, "SKIPPED")]
    hold = f"held after undo of {shared} (run {run.id}): bad release 42"
    assert {entry.reason for change in three_strategies for entry in entries(change, "SKIPPED")} == {hold}
    assert not table_exists(f"u_{unique}")
    assert not external_table_exists(external_pg, f"um_{unique}")
    assert [entry["op"] for entry in journal.entries()] == ["apply", "rollback"]
    assert [next_action(change) for change in three_strategies] == ["SKIP", "SKIP", "SKIP"]
    assert run_pipeline().status == Run.Status.NO_CHANGES
    assert not table_exists(f"u_{unique}")


def test_undo_of_a_later_change_leaves_earlier_ones_applied(three_strategies, unique):
    shared, note, marker = three_strategies

    undo(note)

    assert [r["change_id"] for r in Run.objects.get(kind=Run.Kind.UNDO).results] == [marker, note]
    assert ledger(shared) == [(shared, "APPLIED")]
    assert table_exists(f"u_{unique}")


def test_undo_is_refused_when_a_later_change_has_no_rollback(make_pipeline, unique, journal):
    first, second = f"first-{unique}", f"second-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(first, rollback="ok"), "0002_b.py": journal_change(second)}})
    run_pipeline()
    before = written()

    with pytest.raises(services.ActionRefused, match=f"{second} has no rollback"):
        undo(first)

    assert written() == before
    assert [next_action(first), next_action(second)] == ["SKIP", "SKIP"]


def test_undo_is_refused_while_the_checksum_has_drifted(make_pipeline, unique):
    change = f"edited-{unique}"
    make_pipeline({"main": {"0001_t.yaml": sql_change(change, f"CREATE TABLE e_{unique} (id integer)", f"DROP TABLE e_{unique}")}})
    run_pipeline()
    make_pipeline({"main": {"0001_t.yaml": sql_change(change, f"CREATE TABLE e_{unique} (id bigint)", f"DROP TABLE e_{unique}")}})
    before = written()

    with pytest.raises(services.ActionRefused, match="checksum has drifted"):
        undo(change)

    assert written() == before
    assert table_exists(f"e_{unique}")


def test_undo_is_refused_for_a_change_that_is_not_applied(make_pipeline, unique):
    change = f"never-{unique}"
    make_pipeline({"main": {"0001_t.yaml": sql_change(change, f"CREATE TABLE n_{unique} (id integer)", f"DROP TABLE n_{unique}")}})
    before = written()

    with pytest.raises(services.ActionRefused, match="is not applied"):
        undo(change)

    assert written() == before


@pytest.mark.parametrize("reason", ["", "   "])
def test_undo_is_refused_without_a_reason(three_strategies, reason):
    before = written()

    with pytest.raises(services.ActionRefused, match="a reason is required"):
        undo(three_strategies[0], reason=reason)

    assert written() == before


# -- reapply ---------------------------------------------------------------------------------------------


def test_reapply_releases_a_held_change_and_the_next_run_applies_it(three_strategies, unique, external_pg):
    shared, note, marker = three_strategies
    undo(shared)

    released = reapply(shared, reason="fixed the data, go again")

    assert released.status == Run.Status.SUCCEEDED
    assert ledger(shared) == [(shared, "APPLIED"), (shared, "ROLLED_BACK"), (shared, "SKIPPED"), (shared, "MANUAL_MARKED_AS_ROLLED_BACK")]
    assert entries(shared, "MANUAL_MARKED_AS_ROLLED_BACK")[0].reason == "fixed the data, go again"
    assert [next_action(change) for change in three_strategies] == ["APPLY", "SKIP", "SKIP"]

    run = run_pipeline()

    assert results(run) == {shared: "APPLIED", note: "SKIPPED", marker: "SKIPPED"}
    assert ledger(shared)[-1] == (shared, "APPLIED")
    assert table_exists(f"u_{unique}")
    assert not external_table_exists(external_pg, f"um_{unique}")

    reapply(marker)
    again = run_pipeline()
    assert results(again)[marker] == "APPLIED"
    assert ledger(marker)[-3:] == [(marker, "MANUAL_MARKED_AS_ROLLED_BACK"), (marker, "STARTED"), (marker, "APPLIED")]
    # A second apply generation: its own marker row.
    assert [generation for generation, _, _ in markers(external_pg, marker)] == [0, 1]
    assert external_table_exists(external_pg, f"um_{unique}")


def test_reapply_is_refused_for_a_change_that_is_not_held(three_strategies):
    before = written()

    with pytest.raises(services.ActionRefused, match="is not held"):
        reapply(three_strategies[0])

    assert written() == before


# -- fix -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resolution", "state", "action_after"),
    [("applied", "MANUAL_MARKED_AS_APPLIED", "SKIP"), ("rolled-back", "MANUAL_MARKED_AS_ROLLED_BACK", "APPLY")],
)
def test_fix_resolves_a_started_non_transactional_change(make_pipeline, unique, journal, subprocess_env, resolution, state, action_after):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change)}})
    crash_run(subprocess_env, "after_started", change)
    assert next_action(change) == "MANUAL_INTERVENTION"

    run = fix(change, resolution, reason="looked at the journal")

    assert run.kind == Run.Kind.FIX and run.status == Run.Status.SUCCEEDED, run.status_reason
    assert ledger(change) == [(change, "STARTED"), (change, state)]
    entry = entries(change, state)[0]
    assert (entry.reason, entry.details["resolution"], entry.run_id) == ("looked at the journal", resolution, run.id)
    assert next_action(change) == action_after
    after = run_pipeline()
    assert journal.count(change=change) == (1 if resolution == "rolled-back" else 0)
    assert results(after) == {change: "APPLIED" if resolution == "rolled-back" else "ALREADY_APPLIED"}


def test_fix_is_refused_for_a_change_that_needs_none(make_pipeline, unique, journal):
    applied, failed_shared = f"applied-{unique}", f"failed-{unique}"
    make_pipeline(
        {
            "one": {"0001_a.py": journal_change(applied)},
            "two": {"0001_b.py": python_sql_change(failed_shared, f"CREATE TABLE z_{unique} (id integer)", raise_after="transient")},
        }
    )
    run_pipeline()
    before = written()

    for change in (applied, failed_shared):
        for resolution in ("applied", "rolled-back"):
            with pytest.raises(services.ActionRefused, match="needs no manual fix"):
                fix(change, resolution)

    assert written() == before


# -- skip ------------------------------------------------------------------------------------------------


def test_skip_holds_a_pending_change_so_the_run_does_not_apply_it(make_pipeline, unique, journal):
    change = f"note-{unique}"
    make_pipeline({"main": {"0001_note.py": journal_change(change)}})

    run = skip(change, reason="not in this region")

    assert run.status == Run.Status.SUCCEEDED
    assert ledger(change) == [(change, "SKIPPED")]
    assert entries(change)[0].reason == "not in this region"
    assert results(run_pipeline()) == {change: "SKIPPED"}
    assert journal.count(change=change) == 0


def test_skip_is_refused_for_applied_and_uncertain_changes(make_pipeline, unique, journal):
    applied, uncertain = f"applied-{unique}", f"uncertain-{unique}"
    make_pipeline({"one": {"0001_a.py": journal_change(applied)}, "two": {"0001_b.py": journal_change(uncertain, fail="half way")}})
    run_pipeline()
    assert next_action(uncertain) == "MANUAL_INTERVENTION"
    before = written()

    with pytest.raises(services.ActionRefused, match="is applied; undo it instead"):
        skip(applied)
    with pytest.raises(services.ActionRefused, match="uncertain state"):
        skip(uncertain)

    assert written() == before


# -- accept-checksum ---------------------------------------------------------------------------------------


def test_accept_checksum_rebaselines_a_drifted_change(make_pipeline, unique):
    change = f"edited-{unique}"
    make_pipeline({"main": {"0001_t.yaml": sql_change(change, f"CREATE TABLE e_{unique} (id integer)")}})
    run_pipeline()
    old = entries(change)[0].checksum
    new_pipeline = make_pipeline(
        {"main": {"0001_t.yaml": sql_change(change, f"CREATE TABLE e_{unique} (id integer)", extra="description: now documented\n")}}
    )
    new = new_pipeline.by_id[change].checksum
    assert next_action(change) == "MANUAL_INTERVENTION"

    run = accept(change, reason="description only")

    assert run.kind == Run.Kind.ACCEPT_CHECKSUM and run.status == Run.Status.SUCCEEDED, run.status_reason
    assert ledger(change) == [(change, "APPLIED"), (change, "change.checksum_accepted")]
    accepted = entries(change)[-1]
    assert (accepted.reason, accepted.checksum) == ("description only", new)
    assert accepted.details["previous_checksum"] == old and accepted.details["new_checksum"] == new
    assert next_action(change) == "SKIP"
    assert results(run_pipeline()) == {change: "ALREADY_APPLIED"}


def test_accept_checksum_is_refused_without_drift(make_pipeline, unique):
    change = f"same-{unique}"
    make_pipeline({"main": {"0001_t.yaml": sql_change(change, f"CREATE TABLE e_{unique} (id integer)")}})
    run_pipeline()
    before = written()

    with pytest.raises(services.ActionRefused, match="no checksum drift"):
        accept(change)

    assert written() == before


# -- permissions -------------------------------------------------------------------------------------------


def test_user_without_operate_permission_is_refused_every_action(make_pipeline, unique, journal):
    applied, uncertain, pending, held, drifted = (f"{name}-{unique}" for name in ("applied", "uncertain", "pending", "held", "drifted"))
    stages = {
        "one": {"0001_a.yaml": sql_change(applied, f"CREATE TABLE p_{unique} (id integer)", f"DROP TABLE p_{unique}")},
        "two": {"0001_b.py": journal_change(uncertain, fail="half way"), "0002_c.py": journal_change(pending), "0003_d.py": journal_change(held)},
        "three": {"0001_e.yaml": sql_change(drifted, f"CREATE TABLE q_{unique} (id integer)")},
    }
    make_pipeline(stages)
    run_pipeline()
    skip(held)
    stages["three"]["0001_e.yaml"] = sql_change(drifted, f"CREATE TABLE q_{unique} (id integer)", extra="description: edited\n")
    make_pipeline(stages)
    services.catalogue_sync()
    _, mallory = user_actor("mallory")
    before = written()

    attempts = {
        "undo": lambda: undo(applied, actor=mallory),
        "fix": lambda: fix(uncertain, "rolled-back", actor=mallory),
        "skip": lambda: skip(pending, actor=mallory),
        "reapply": lambda: reapply(held, actor=mallory),
        "accept-checksum": lambda: accept(drifted, actor=mallory),
    }
    refusals = {}
    for name, attempt in attempts.items():
        with pytest.raises(PermissionRefused) as refused:
            attempt()
        refusals[name] = str(refused.value)
    assert all(message.startswith("mallory may not operate target system") for message in refusals.values()), refusals

    assert written() == before, "a refused action wrote something"


def test_run_by_a_user_without_operate_permission_stops_the_stage_at_not_permitted(make_pipeline, unique, journal):
    first, second = f"first-{unique}", f"second-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(first), "0002_b.py": journal_change(second)}})
    services.catalogue_sync()
    _, mallory = user_actor("mallory")

    run = run_pipeline(actor=mallory)

    assert run.status == Run.Status.BLOCKED
    assert results(run) == {first: "NOT_PERMITTED", second: "NOT_REACHED"}
    assert "mallory may not operate target system 'journal'" in run.results[0]["reason"]
    assert ledger(first, second) == []
    assert journal.entries() == []


def test_object_permission_on_a_target_system_allows_that_target_only(make_pipeline, unique, journal):
    note, table, later = f"note-{unique}", f"table-{unique}", f"later-{unique}"
    make_pipeline(
        {
            "journal-stage": {"0001_note.py": journal_change(note)},
            "db-stage": {"0001_t.yaml": sql_change(table, f"CREATE TABLE o_{unique} (id integer)"), "0002_l.py": journal_change(later)},
        }
    )
    services.catalogue_sync()
    user, alice = user_actor("alice")
    assign_perm("changes_app.operate_targetsystem", user, TargetSystem.objects.get(name="journal"))

    run = run_pipeline(actor=alice)

    assert results(run) == {note: "APPLIED", table: "NOT_PERMITTED", later: "NOT_REACHED"}
    assert ledger(note, table, later) == [(note, "STARTED"), (note, "APPLIED")]
    assert not table_exists(f"o_{unique}")
    assert skip(later, actor=alice).status == Run.Status.SUCCEEDED
    with pytest.raises(PermissionRefused, match="alice may not operate target system 'app-db'"):
        skip(table, actor=alice)
    assert ledger(table, later) == [(later, "SKIPPED")]


# -- the CLI in a protected environment -------------------------------------------------------------------------


def test_protected_environment_cli_needs_a_valid_unrevoked_token(make_pipeline, unique, settings, monkeypatch):
    make_pipeline({"main": {}})
    settings.FLAMINGOCK_ENVIRONMENT = "prod"
    monkeypatch.delenv("FLAMINGOCK_TOKEN", raising=False)
    user = get_user_model().objects.create_user("bob")
    user.user_permissions.add(Permission.objects.get(codename="operate_targetsystem"))
    token, key = token_create(user=user, name="laptop", created_by="test")

    refused = cli("run", "--json")
    assert refused.code == 2
    assert "this environment is protected: set FLAMINGOCK_TOKEN" in refused.json()["error"]
    assert not Run.objects.exists()

    monkeypatch.setenv("FLAMINGOCK_TOKEN", key)
    accepted = cli("run", "--json")
    assert accepted.code == 0, accepted.out
    run = Run.objects.get(pk=accepted.json()["run_id"])
    assert (run.actor, run.started_by_id, run.environment) == ("bob", user.pk, "prod")
    assert set(AuditEntry.objects.filter(run_id=run.id).values_list("actor", "actor_user_id")) == {("bob", user.pk)}

    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    revoked = cli("run", "--json")
    assert revoked.code == 2
    assert "FLAMINGOCK_TOKEN is not a valid, active token" in revoked.json()["error"]
    assert Run.objects.count() == 1
    assert run_events(run) == ["run.queued", "run.started", "lock.acquired", "lock.released", "run.finished"]
