"""Refusals are evidence (docs/governance.md, "Refusals"; docs/semantics.md §13.3): a refused governed action,
decision or force-release writes one ``access.refused`` entry per (actor, reason) and window; later
refusals are counted in the cache, and an entry with ``folded: n`` closes the window."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.governance import refusals
from changes_app.governance.permissions import PermissionRefused
from changes_app.governance.roles import APPROVER, COMPLIANCE_OFFICER, ENGINEER
from changes_app.models import ChangeRequest, Run
from tests.support.governance import person, policy, snapshot
from tests.support.trails import run_pipeline, sql_change

pytestmark = pytest.mark.django_db(transaction=True)

Kind = ChangeRequest.Kind


@pytest.fixture(autouse=True)
def fresh_counters():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def staging(settings):
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    settings.FLAMINGOCK_REFUSAL_WINDOW = 60
    return "staging"


@pytest.fixture
def clock(monkeypatch):
    """The refusals' clock, moved by the test: starts at the beginning of a window."""
    now = [6_000_000.0]
    monkeypatch.setattr(refusals, "_now", lambda: now[0])
    return now


def refused(**filters) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(event="access.refused", **filters).order_by("id"))


def table_change(change_id: str, table: str, **kwargs) -> str:
    return sql_change(change_id, f"CREATE TABLE {table} (id integer)", f"DROP TABLE {table}", **kwargs)


def lock_release(who):
    return services.lock_force_release(actor=who.actor, reason="stuck")


def test_a_self_approval_is_refused_and_leaves_one_access_refused_entry_and_nothing_else(make_pipeline, unique, staging, clock):
    dora = person("dora", ENGINEER, APPROVER, operate=("app-db",), approve=("app-db",))
    change, table = f"self-{unique}", f"self_{unique}"
    make_pipeline({"main": {"0001_t.yaml": table_change(change, table)}})
    policy("app-db", "staging", 1)
    request = services.request_submit(kind=Kind.APPLY, change_id=change, actor=dora.actor, reason="mine", source=Run.Source.UI).request
    before = snapshot()

    with pytest.raises(services.SelfDecisionRefused):
        services.request_approve(request_id=request.pk, actor=dora.actor)

    assert snapshot() == before
    [entry] = refused()
    assert (entry.actor, entry.actor_user_id) == ("dora", dora.user.pk)
    assert entry.details == {"reason": "self_decision", "action": "request.approve", "object": f"request #{request.pk}"}
    assert "nobody decides their own request" in entry.reason


def test_an_action_without_permission_is_recorded_with_reason_permission(make_pipeline, unique, staging, clock):
    eng = person("eng", ENGINEER, operate=("app-db",))
    carol = person("carol", COMPLIANCE_OFFICER)
    change, table = f"perm-{unique}", f"perm_{unique}"
    make_pipeline({"main": {"0001_t.yaml": table_change(change, table)}})
    assert run_pipeline(actor=eng.actor).status == Run.Status.SUCCEEDED

    with pytest.raises(PermissionRefused):
        services.change_undo(change_id=change, actor=carol.actor, reason="not mine", source=Run.Source.UI)

    [entry] = refused()
    assert entry.actor == "carol"
    assert entry.details == {"reason": "permission", "action": "UNDO", "object": f"change {change}"}


def test_an_approval_of_an_edited_change_is_recorded_with_reason_stale_checksum(make_pipeline, unique, staging, clock):
    eng = person("eng", ENGINEER, operate=("app-db",))
    alice = person("alice", APPROVER, approve=("app-db",))
    change, table = f"stale-{unique}", f"stale_{unique}"
    make_pipeline({"main": {"0001_t.yaml": table_change(change, table)}})
    policy("app-db", "staging", 1)
    request = services.request_submit(kind=Kind.APPLY, change_id=change, actor=eng.actor, reason="please", source=Run.Source.UI).request
    make_pipeline({"main": {"0001_t.yaml": table_change(change, table, extra="description: edited\n")}})

    with pytest.raises(services.RequestStale):
        services.request_approve(request_id=request.pk, actor=alice.actor)

    [entry] = refused()
    assert (entry.actor, entry.details["reason"], entry.details["object"]) == ("alice", "stale_checksum", f"request #{request.pk}")


def test_a_flood_of_refusals_writes_one_entry_per_window_and_a_folded_count_closes_it(staging, clock):
    mallory = person("mallory", ENGINEER)

    for _ in range(50):
        with pytest.raises(PermissionRefused):
            lock_release(mallory)
    assert len(refused()) == 1
    assert refusals.refusals_counted(who="mallory", reason="permission") == 50

    clock[0] += 60  # the next window
    with pytest.raises(PermissionRefused):
        lock_release(mallory)

    first, closing, second = refused()
    assert first.details == {"reason": "permission", "action": "lock.force_release", "object": "pipeline lock"}
    assert closing.details == {"reason": "permission", "folded": 49, "window_start": 6_000_000, "window_end": 6_000_060}
    assert closing.actor == "mallory"
    assert second.details == first.details


def test_a_window_without_later_refusals_closes_with_no_folded_entry(staging, clock):
    mallory = person("mallory", ENGINEER)
    with pytest.raises(PermissionRefused):
        lock_release(mallory)
    clock[0] += 600

    with pytest.raises(PermissionRefused):
        lock_release(mallory)

    assert [entry.details.get("folded") for entry in refused()] == [None, None]


def test_refusals_fold_per_actor_and_per_reason(make_pipeline, unique, staging, clock):
    mallory, trudy = person("mallory", ENGINEER), person("trudy", ENGINEER)
    for who in (mallory, trudy, mallory, trudy):
        with pytest.raises(PermissionRefused):
            lock_release(who)
    refusals.refusal_record(reason="not_visible", action="view", object="request #1", actor=mallory.actor)

    assert [(entry.actor, entry.details["reason"]) for entry in refused()] == [
        ("mallory", "permission"),
        ("trudy", "permission"),
        ("mallory", "not_visible"),
    ]


def test_the_window_length_is_a_setting(staging, clock, settings):
    settings.FLAMINGOCK_REFUSAL_WINDOW = 3600
    mallory = person("mallory", ENGINEER)
    with pytest.raises(PermissionRefused):
        lock_release(mallory)
    clock[0] += 600  # a window of the default length, not of this one

    with pytest.raises(PermissionRefused):
        lock_release(mallory)

    assert len(refused()) == 1


def test_an_unknown_reason_code_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown refusal reason"):
        refusals.refusal_record(reason="because", action="x")


def test_a_refusal_that_cannot_be_recorded_is_still_raised(staging, clock, monkeypatch):
    def closed(**kwargs):
        raise RuntimeError("the trail refuses writes")

    monkeypatch.setattr(refusals, "audit_record", closed)
    mallory = person("mallory", ENGINEER)

    with pytest.raises(PermissionRefused, match="may not release the pipeline lock"):
        lock_release(mallory)
    assert refused() == []
