"""The audit trail in the admin for compliance officers: the list and its filters, each entry's place in
the chain, the last verification and checkpoint, and the evidence export of what the list shows,
streamed, for those who may view the trail."""

import json
import re
from html import unescape
from urllib.parse import urlencode

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.http import StreamingHttpResponse
from django.urls import reverse

from audit_app.export import TRAILER_MARK, audit_export_verify
from audit_app.integrity import audit_verify, checkpoint_write, verification_record
from audit_app.models import AuditEntry
from audit_app.services import Actor, audit_record
from tests.support.audit import ENTRY_TABLE, TEST_ACTOR, entry_write, sql, triggers_dropped

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:audit_app_auditentry_changelist"
EXPORT = "admin:audit_app_auditentry_export"


@pytest.fixture
def entries() -> list[AuditEntry]:
    """Six entries, written after the users the other fixtures create (and the grants those write)."""
    alice, bob = Actor(name="alice", via="admin"), Actor(name="bob", via="cli")
    return [
        entry_write("run.started", actor=bob),
        entry_write("change.applied", change_id="c-users", target="app-db", actor=alice),
        entry_write("change.failed", change_id="c-index", target="ext-pg", actor=bob, environment="staging"),
        entry_write("lock.acquired", target="app-db", actor=alice),
        entry_write("change.applied", change_id="c-index", target="ext-pg", actor=bob),
        entry_write("run.finished", actor=bob),
    ]


@pytest.fixture
def earlier(entries) -> list[int]:
    """The seqs already in the trail when ``entries`` were written: the permission grants audited when
    the fixtures created their users (the trail is append-only, so nothing was put before them later)."""
    return list(AuditEntry.objects.filter(seq__lt=entries[0].seq).order_by("seq").values_list("seq", flat=True))


def staff_client(client, *permissions: str):
    user = get_user_model().objects.create_user("officer", is_staff=True)  # no password: force_login, no hashing
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="audit_app"))
    client.force_login(user)
    return client


OFFICER_PERMISSIONS = ("view_auditentry", "view_auditcheckpoint", "view_verification")


@pytest.fixture
def officer(client):
    """A compliance officer: may view the trail, nothing else."""
    return staff_client(client, *OFFICER_PERMISSIONS)


def listed(response) -> list[int]:
    assert response.status_code == 200
    return [entry.seq for entry in response.context["cl"].result_list]


def exported(content: str) -> tuple[list[dict], dict]:
    """The rows and the trailer of a JSON Lines export."""
    lines = content.splitlines()
    assert lines[-1].startswith(TRAILER_MARK)
    return [json.loads(line) for line in lines[:-1]], json.loads(lines[-1][len(TRAILER_MARK) :])


def export_content(response) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content).decode()


# -- the list -----------------------------------------------------------------------------------------


def test_changelist_lists_the_newest_entries_first(officer, entries, earlier):
    response = officer.get(reverse(CHANGELIST))

    grants = AuditEntry.objects.filter(seq__in=earlier).order_by("seq")
    assert [(grant.event, grant.details) for grant in grants] == [
        ("permission.granted", {"kind": "permission", "user": "officer", "permission": f"audit_app.{codename}"}) for codename in OFFICER_PERMISSIONS
    ]
    assert listed(response) == [entry.seq for entry in reversed(entries)] + list(reversed(earlier))
    assert b"c-users" in response.content
    assert b"addlink" not in response.content
    assert not response.context["has_add_permission"]


@pytest.mark.parametrize(
    "query, positions",
    [
        ({"event__exact": "change.applied"}, [4, 1]),
        ({"environment__exact": "staging"}, [2]),
        ({"target__exact": "app-db"}, [3, 1]),
        ({"target__exact": "ext-pg", "event__exact": "change.failed"}, [2]),
        ({"q": "c-index"}, [4, 2]),
        ({"q": "alice"}, [3, 1]),
    ],
    ids=["event", "environment", "target", "target and event", "search by change", "search by actor"],
)
def test_changelist_filters_select_the_right_entries(officer, entries, query, positions):
    """``positions`` index ``entries``: the officer's permission grants match none of the filters."""
    assert listed(officer.get(reverse(CHANGELIST), query)) == [entries[position].seq for position in positions]


def test_changelist_filters_by_run_through_the_search(officer, entries):
    run = "6f1c1f86-3c2e-4b55-9d55-0a4f1e0e9c11"
    in_run = audit_record(event="run.finished", actor=TEST_ACTOR, environment="dev", run_id=run)

    assert listed(officer.get(reverse(CHANGELIST), {"q": run})) == [in_run.seq]


def test_changelist_date_hierarchy_filters_by_day(officer, entries, earlier):
    day = entries[0].created_at
    query = {"created_at__year": day.year, "created_at__month": day.month, "created_at__day": day.day}

    assert listed(officer.get(reverse(CHANGELIST), query)) == [entry.seq for entry in reversed(entries)] + list(reversed(earlier))
    assert listed(officer.get(reverse(CHANGELIST), {**query, "created_at__year": day.year - 1})) == []


def test_changelist_renders_every_filter_with_its_choices(officer, entries):
    response = officer.get(reverse(CHANGELIST))

    content = response.content.decode()
    for choice in ("change.applied", "change.failed", "lock.acquired", "staging", "ext-pg"):
        assert choice in content
    assert [spec.title for spec in response.context["cl"].filter_specs] == [
        "event", "state", "environment", "target", "stage", "change id", "run id", "actor", "created at",
    ]  # fmt: skip
    assert 'id="searchbar"' in content


# -- an entry -----------------------------------------------------------------------------------------


def chain_links(content: str) -> dict[str, str]:
    return {label: unescape(href) for href, label in re.findall(r'<a href="([^"]+)">(previous|next) #\d+</a>', content)}


def test_entry_page_shows_its_place_in_the_chain_with_links_to_its_neighbours(officer, entries):
    middle = entries[2]

    response = officer.get(reverse("admin:audit_app_auditentry_change", args=[middle.pk]))

    content = response.content.decode()
    assert response.status_code == 200
    assert f"entry #{middle.seq} follows #{entries[1].seq} (whose hash is {entries[1].entry_hash[:16]}" in content
    assert chain_links(content) == {
        "previous": reverse("admin:audit_app_auditentry_change", args=[entries[1].pk]),
        "next": reverse("admin:audit_app_auditentry_change", args=[entries[3].pk]),
    }
    assert middle.entry_hash in content
    assert middle.prev_hash in content


def test_first_and_last_entries_link_only_to_the_neighbour_they_have(officer, entries):
    # The first entry of the chain is the officer's first permission grant, written before ``entries``.
    first = officer.get(reverse("admin:audit_app_auditentry_change", args=[AuditEntry.objects.get(seq=1).pk])).content.decode()
    last = officer.get(reverse("admin:audit_app_auditentry_change", args=[entries[-1].pk])).content.decode()

    assert set(chain_links(first)) == {"next"}
    assert set(chain_links(last)) == {"previous"}


# -- the last verification and checkpoint -------------------------------------------------------------


def chain_status(response) -> str:
    match = re.search(r'<p class="help" id="chain-status">(.*?)</p>', response.content.decode(), re.S)
    assert match, "the chain status is shown above the list"
    return " ".join(unescape(re.sub(r"<[^>]+>", "", match.group(1))).split())


def test_changelist_says_when_the_chain_was_never_verified(officer, entries):
    assert "The chain has not been verified yet" in chain_status(officer.get(reverse(CHANGELIST)))


def test_changelist_shows_the_last_verification_and_checkpoint(officer, entries, earlier):
    verification_record(audit_verify(), actor=TEST_ACTOR)
    checkpoint = checkpoint_write(reason="test")

    status = chain_status(officer.get(reverse(CHANGELIST)))

    head = entries[-1].seq
    assert f"(full): intact, {len(earlier) + len(entries)} entries up to #{head}" in status
    # The checkpoint covers the entry that audited the verification, the one after the head.
    assert f"Last signed checkpoint: #{head + 1} at {checkpoint.created_at:%Y-%m-%d %H:%M} UTC, key {checkpoint.key_id}." in status


def test_changelist_shows_a_broken_chain(officer, entries):
    verification_record(audit_verify(), actor=TEST_ACTOR)
    with triggers_dropped():
        sql(f"UPDATE {ENTRY_TABLE} SET reason = 'rewritten' WHERE seq = %s", [entries[3].seq])
    verification_record(audit_verify(), actor=TEST_ACTOR)

    status = chain_status(officer.get(reverse(CHANGELIST)))

    seq = entries[3].seq
    assert f"BROKEN at #{seq}: entry #{seq} (id {entries[3].pk}) was altered" in status


# -- the export ---------------------------------------------------------------------------------------


def test_changelist_offers_an_export_of_what_it_lists(officer, entries):
    content = officer.get(reverse(CHANGELIST), {"event__exact": "change.applied"}).content.decode()

    links = [unescape(href) for href in re.findall(r'href="([^"]*/export/[^"]*)"', content)]
    assert links == [f"{reverse(EXPORT)}?format=csv&event__exact=change.applied", f"{reverse(EXPORT)}?format=jsonl&event__exact=change.applied"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_view_streams_an_export_that_verifies(officer, entries, earlier, tmp_path, fmt):
    response = officer.get(reverse(EXPORT), {"format": fmt})

    content = export_content(response)
    path = tmp_path / f"admin.{fmt}"
    path.write_text(content, encoding="utf-8")
    check = audit_export_verify(path)
    assert response.status_code == 200
    assert response["Content-Type"] == ("text/csv" if fmt == "csv" else "application/x-ndjson")
    assert re.fullmatch(rf'attachment; filename="flamingock-audit-\d{{8}}T\d{{6}}Z\.{fmt}"', response["Content-Disposition"])
    assert content.splitlines()[-1].startswith(TRAILER_MARK)
    assert (check.ok, check.rows, check.problems) == (True, len(earlier) + len(entries), [])


@pytest.mark.parametrize(
    "query, positions",
    [
        ({"event__exact": "change.applied"}, [1, 4]),
        ({"target__exact": "ext-pg"}, [2, 4]),
        ({"environment__exact": "staging"}, [2]),
        ({"q": "alice"}, [1, 3]),
        ({"change_id": "c-index"}, [2, 4]),
        ({"event": "run.finished"}, [5]),
    ],
    ids=["event filter", "target filter", "environment filter", "search", "change", "event"],
)
def test_export_of_a_filtered_list_holds_exactly_the_listed_entries(officer, entries, query, positions):
    """``positions`` index ``entries``: the officer's permission grants match none of the filters."""
    expected = [entries[position].seq for position in positions]
    listed_seqs = listed(officer.get(reverse(CHANGELIST), query))

    content = export_content(officer.get(reverse(EXPORT), {"format": "jsonl", **query}))

    rows, trailer = exported(content)
    assert sorted(listed_seqs) == expected
    assert [row["seq"] for row in rows] == expected
    assert trailer["count"] == len(expected)
    assert trailer["filters"]["query"] == urlencode(query)


def test_export_of_a_list_narrowed_by_date_holds_that_day(officer, entries, earlier):
    day = entries[0].created_at
    query = {"created_at__year": day.year, "created_at__month": day.month, "created_at__day": day.day}

    this_day, _ = exported(export_content(officer.get(reverse(EXPORT), {"format": "jsonl", **query})))
    last_year, _ = exported(export_content(officer.get(reverse(EXPORT), {"format": "jsonl", **query, "created_at__year": day.year - 1})))

    assert [row["seq"] for row in this_day] == earlier + [entry.seq for entry in entries]
    assert last_year == []


def test_export_with_an_unknown_filter_is_refused(officer, entries):
    assert officer.get(reverse(EXPORT), {"format": "csv", "no_such_field": "x"}).status_code == 400


def test_export_view_refuses_staff_without_the_view_permission(client, entries):
    staff = staff_client(client, "view_verification")

    response = staff.get(reverse(EXPORT), {"format": "csv"})

    assert response.status_code == 403
    assert staff.get(reverse(CHANGELIST)).status_code == 403


def test_export_view_sends_anonymous_visitors_to_the_login(client, entries):
    response = client.get(reverse(EXPORT), {"format": "csv"})

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_officer_may_view_but_not_add_change_or_delete(officer, entries):
    entry = entries[1]

    assert officer.get(reverse("admin:audit_app_auditentry_change", args=[entry.pk])).status_code == 200
    assert officer.get(reverse("admin:audit_app_auditentry_add")).status_code == 403
    assert officer.post(reverse("admin:audit_app_auditentry_change", args=[entry.pk]), {"reason": "x"}).status_code == 403
    assert officer.post(reverse("admin:audit_app_auditentry_delete", args=[entry.pk]), {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.get(pk=entry.pk).reason == ""
