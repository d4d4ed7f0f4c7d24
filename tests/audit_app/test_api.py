"""The audit trail over the API (docs/api.md, docs/semantics.md §11): newest first with an opaque cursor on seq whose
pages neither overlap nor skip (even while the trail grows), the admin's filters, visibility scoped
to the target systems one may see plus one's own entries, read-only, and the streamed export that
ends with the signed trailer and verifies."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone

from audit_app.export import TRAILER_MARK, audit_export_verify
from audit_app.models import AuditEntry
from audit_app.services import Actor, ChangeRef, audit_record
from changes_app.governance.roles import COMPLIANCE_OFFICER
from tests.changes_app.api.conftest import client_for
from tests.changes_app.api.helpers import refused, state
from tests.support.governance import person

pytestmark = pytest.mark.django_db

ENTRIES = "/api/v1/audit/entries/"
EXPORT = "/api/v1/audit/export/"
RUN = uuid.uuid4()


def _write(
    event: str, *, actor: Actor, target: str = "", stage: str = "", change_id: str = "", state: str = "", environment: str = "dev", run_id=None
):
    change = ChangeRef(id=change_id, stage=stage, target=target) if change_id or target else None
    return audit_record(event=event, actor=actor, environment=environment, change=change, state=state, run_id=run_id)


@pytest.fixture
def people(targets):
    scoped = person("scoped", operate=("journal",))
    return {"compliance": person("compliance", COMPLIANCE_OFFICER), "scoped": scoped, "nobody": person("nobody")}


@pytest.fixture
def trail(people) -> list[AuditEntry]:
    """31 entries over two target systems, two stages, two environments, a run and three actors;
    two of them by the scoped person on a target system it does not see."""
    alice = Actor(name="alice", via="ui")
    scoped = people["scoped"].actor
    written = []
    for index in range(12):
        written.append(_write("change.applied", actor=alice, target="app-db", stage="main", change_id=f"db-{index}", state="APPLIED"))
        written.append(
            _write("change.failed", actor=alice, target="journal", stage="side", change_id=f"note-{index}", state="FAILED", environment="staging")
        )
    written += [_write("run.started", actor=alice, run_id=RUN), _write("run.finished", actor=alice, run_id=RUN)]
    written += [_write("lock.acquired", actor=alice, target="app-db"), _write("lock.released", actor=alice, target="journal")]
    written.append(_write("change.skipped", actor=scoped, target="app-db", stage="main", change_id="db-0", state="SKIPPED"))
    written.append(_write("request.created", actor=scoped, target="app-db", change_id="db-1"))
    written.append(_write("run.started", actor=Actor(name="bob", via="cli")))
    return written


def _walk(client, url: str) -> tuple[list[list[int]], list[str]]:
    """Every page's seqs following ``next`` from ``url``, and the cursors used."""
    pages, cursors = [], []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.json()
        body = response.json()
        assert set(body) == {"next", "previous", "results"}
        pages.append([entry["seq"] for entry in body["results"]])
        url = body["next"]
        if url:
            cursors.append(parse_qs(urlsplit(url).query)["cursor"][0])
    return pages, cursors


def _seqs(queryset) -> list[int]:
    return list(queryset.exclude(seq=None).order_by("-seq").values_list("seq", flat=True))


def test_pages_follow_seq_newest_first_without_overlap_or_gap(trail, people):
    client = client_for(people["compliance"])
    pages, cursors = _walk(client, f"{ENTRIES}?page_size=7")
    seqs = [seq for page in pages for seq in page]
    assert seqs == _seqs(AuditEntry.objects.all())  # every entry once, newest first
    assert len(seqs) == len(set(seqs)) >= len(trail)
    assert all(len(page) == 7 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 7
    # The cursor is opaque: no seq, id or ordering readable in it.
    for cursor in cursors:
        assert re.fullmatch(r"[A-Za-z0-9_\-=%]+", cursor)
        assert not cursor.isdigit() and not any(str(seq) == cursor for seq in seqs)
    # ``previous`` leads back to the same pages.
    second = client.get(f"{ENTRIES}?page_size=7&cursor={cursors[0]}").json()
    back = client.get(second["previous"]).json()
    assert [entry["seq"] for entry in back["results"]] == pages[0]


def test_entries_written_while_paging_do_not_shift_the_pages(trail, people):
    client = client_for(people["compliance"])
    before = _seqs(AuditEntry.objects.all())
    first = client.get(f"{ENTRIES}?page_size=10").json()
    for index in range(5):
        _write("run.started", actor=Actor(name="late", via="ui"), target="app-db", change_id=f"late-{index}")
    seqs = [entry["seq"] for entry in first["results"]]
    url = first["next"]
    while url:
        page = client.get(url).json()
        seqs += [entry["seq"] for entry in page["results"]]
        url = page["next"]
    assert seqs == before  # the newer entries are on a fresh first page, not pushed into the walk
    assert client.get(f"{ENTRIES}?page_size=5").json()["results"][0]["seq"] == before[0] + 5


def test_an_invalid_cursor_is_404_not_found_and_the_page_size_is_capped(trail, people):
    client = client_for(people["compliance"])
    # Not base64, not a cursor, and cursors whose position is not a seq (p=abc, o=1&p=abc, p=10**23, p=1.5).
    for cursor in ("garbage", "cD1hYmM%3D", "bz0xJnA9YWJj", "cD05OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ%3D%3D", "cD0xLjU%3D"):
        assert refused(client.get(f"{ENTRIES}?cursor={cursor}"), 404, "not_found") == {}, cursor
    # A well-formed cursor past the oldest entry (p=-1) is an empty last page, not an error.
    past = client.get(f"{ENTRIES}?cursor=cD0tMQ%3D%3D").json()
    assert (past["next"], past["results"]) == (None, [])
    total = AuditEntry.objects.exclude(seq=None).count()
    assert len(client.get(f"{ENTRIES}?page_size=100000").json()["results"]) == min(500, total)
    assert len(client.get(ENTRIES).json()["results"]) == min(50, total)


def test_the_admin_filters_select_exactly_the_matching_entries(trail, people):
    client = client_for(people["compliance"])
    now = timezone.now()
    cases = {
        "event=change.failed": {"event": "change.failed"},
        "state=APPLIED": {"state": "APPLIED"},
        "environment=staging": {"environment": "staging"},
        # Target and change through the side index: the permission entries that name a target too.
        "target=journal": {"subject__target": "journal"},
        "stage=main": {"stage": "main"},
        "change_id=db-1": {"subject__change_id": "db-1"},
        "actor=scoped": {"actor": "scoped"},
        f"run_id={RUN}": {"run_id": RUN},
        "target=app-db&state=SKIPPED": {"subject__target": "app-db", "state": "SKIPPED"},
        "created_at__gte=" + (now - timedelta(hours=1)).isoformat().replace("+", "%2B"): {"created_at__gte": now - timedelta(hours=1)},
        "created_at__lt=" + (now - timedelta(hours=1)).isoformat().replace("+", "%2B"): {"created_at__lt": now - timedelta(hours=1)},
    }
    for query, lookup in cases.items():
        pages, _ = _walk(client, f"{ENTRIES}?page_size=500&{query}")
        got = [seq for page in pages for seq in page]
        assert got == _seqs(AuditEntry.objects.filter(**lookup)), query
    assert _walk(client, f"{ENTRIES}?event=change.failed")[0][0]  # not empty
    for query, field in (
        ("state=BOGUS", "state"),
        ("run_id=not-a-uuid", "run_id"),
        ("created_at__gte=yesterday", "created_at__gte"),
        ("created_at__lt=0001-01-01T00:00:00%2B01:00", "created_at__lt"),  # before year 1 in UTC
    ):
        assert field in refused(client.get(f"{ENTRIES}?{query}"), 400, "invalid"), query
        assert field in refused(client.get(f"{EXPORT}?{query}"), 400, "invalid"), query
    # An offset PostgreSQL would refuse (beyond ±15:59) is read as the same instant in UTC.
    assert client.get(f"{ENTRIES}?created_at__lt=0127-12-27T17:39:46-23:35").json()["results"] == []
    assert len(client.get(f"{ENTRIES}?created_at__gte=0127-12-27T17:39:46-23:35&page_size=500").json()["results"]) == len(_seqs(AuditEntry.objects))


def test_a_scoped_person_sees_the_entries_of_its_target_systems_and_its_own(trail, people):
    scoped = people["scoped"]
    client = client_for(scoped)
    pages, _ = _walk(client, f"{ENTRIES}?page_size=9")
    seen = [seq for page in pages for seq in page]
    expected = [e.seq for e in sorted(trail, key=lambda e: -e.seq) if e.target == "journal" or e.actor_user_id == scoped.user.pk]
    assert [seq for seq in seen if seq in {e.seq for e in trail}] == expected
    assert set(AuditEntry.objects.filter(seq__in=seen).values_list("target", flat=True)) <= {"journal", "app-db"}
    assert all(e.target == "journal" or e.actor_user_id == scoped.user.pk for e in AuditEntry.objects.filter(seq__in=seen))
    # Filters narrow what one sees, never widen it; a hidden entry reads like a missing one.
    hidden = next(e for e in trail if e.target == "app-db" and e.actor_user_id != scoped.user.pk)
    assert [e["seq"] for e in client.get(f"{ENTRIES}?target=app-db").json()["results"]] == sorted(
        (e.seq for e in trail if e.target == "app-db" and e.actor_user_id == scoped.user.pk), reverse=True
    )
    assert refused(client.get(f"{ENTRIES}{hidden.pk}/"), 404, "not_found") == refused(client.get(f"{ENTRIES}99999999/"), 404, "not_found")
    assert client.get(f"{ENTRIES}{trail[1].pk}/").json()["seq"] == trail[1].seq
    # Someone without any role or permission sees only their own (none here).
    assert client_for(people["nobody"]).get(ENTRIES).json()["results"] == []


def test_the_trail_is_read_only_over_the_api(trail, people):
    client = client_for(people["compliance"])
    entry = trail[0]
    before = state()
    for method in ("post", "put", "patch", "delete"):
        refused(getattr(client, method)(ENTRIES, {"event": "x"}, format="json"), 405, "method_not_allowed")
        refused(getattr(client, method)(f"{ENTRIES}{entry.pk}/", {"reason": "edited"}, format="json"), 405, "method_not_allowed")
    assert state() == before


def _export(client, tmp_path, query: str, name: str):
    response = client.get(f"{EXPORT}?{query}")
    assert response.status_code == 200, response.content[:300]
    assert response.streaming
    path = tmp_path / name
    path.write_bytes(b"".join(response.streaming_content))
    return response, path


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_streamed_export_ends_with_the_signed_trailer_and_verifies(trail, people, tmp_path, fmt):
    compliance = client_for(people["compliance"])
    response, path = _export(compliance, tmp_path, f"format={fmt}", f"all.{fmt}")
    assert response["Content-Type"].startswith("application/x-ndjson" if fmt == "jsonl" else "text/csv")
    assert "attachment" in response["Content-Disposition"]
    last = path.read_text(encoding="utf-8").splitlines()[-1]
    assert last.startswith(TRAILER_MARK)
    trailer = json.loads(last[len(TRAILER_MARK) :])
    assert trailer["count"] == AuditEntry.objects.exclude(seq=None).count()
    assert trailer["signature"] and trailer["public_key"] and trailer["checkpoint"]["seq"] >= max(e.seq for e in trail)
    check = audit_export_verify(path)
    assert check.ok, check.problems
    assert check.rows == trailer["count"]

    # A filtered export of the scoped person: only what it sees, still signed and verifiable.
    scoped = people["scoped"]
    _, path = _export(client_for(scoped), tmp_path, f"format={fmt}&target=journal", f"scoped.{fmt}")
    check = audit_export_verify(path)
    assert check.ok, check.problems
    assert check.rows == sum(1 for e in trail if e.target == "journal")

    # An edited export no longer verifies.
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("note-3", "note-X", 1), encoding="utf-8")
    assert not audit_export_verify(path).ok


def test_the_export_refuses_an_unknown_format_or_filter_in_the_error_format(trail, people):
    client = client_for(people["compliance"])
    before = state()
    assert "format" in refused(client.get(f"{EXPORT}?format=xml"), 400, "invalid")
    assert "state" in refused(client.get(f"{EXPORT}?state=BOGUS"), 400, "invalid")
    refused(client_for().get(EXPORT), 401, "not_authenticated")
    assert state() == before
