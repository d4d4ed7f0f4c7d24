"""The audit list stays fast at millions of entries: no request reads the whole trail (no DISTINCT, no
unbounded COUNT, no case-insensitive match that defeats the indexes), the number of queries does not
grow with the trail, and on PostgreSQL every query on the trail can be answered from an index. The
cheap counting, the filter choices, the typed filters, the date range and the date hierarchy still
select and say the right things. ``bench/suites/audit_admin.py`` measures it at a million entries."""

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit_app import admin as audit_admin
from audit_app.models import AuditEntry, ChainHead
from audit_app.services import Actor, audit_record
from tests.support.audit import ENTRY_TABLE, entry_write

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:audit_app_auditentry_changelist"
EXPORT = "admin:audit_app_auditentry_export"
RUN = "6f1c1f86-3c2e-4b55-9d55-0a4f1e0e9c11"
ALICE, BOB = Actor(name="alice", via="admin"), Actor(name="bob", via="cli")


@pytest.fixture
def officer(client):
    """A compliance officer: may view the trail, nothing else."""
    user = get_user_model().objects.create_user("officer", is_staff=True)
    for codename in ("view_auditentry", "view_auditcheckpoint", "view_verification"):
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="audit_app"))
    client.force_login(user)
    return client


@pytest.fixture
def entries() -> list[AuditEntry]:
    return [
        audit_record(event="run.started", actor=BOB, environment="dev", run_id=RUN),
        entry_write("change.applied", change_id="c-users", target="app-db", actor=ALICE),
        entry_write("change.failed", change_id="c-index", target="ext-pg", actor=BOB, environment="staging"),
        entry_write("lock.acquired", target="app-db", actor=ALICE),
        entry_write("change.applied", change_id="c-index", target="ext-pg", actor=BOB),
        audit_record(event="run.finished", actor=BOB, environment="dev", run_id=RUN),
    ]


def listed(response) -> list[int]:
    assert response.status_code == 200
    return [entry.seq for entry in response.context["cl"].result_list]


def seqs(queryset) -> list[int]:
    return list(queryset.order_by("-seq").values_list("seq", flat=True))


def page_text(response) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


TODAY = timezone.now().date().isoformat()
#: What a compliance officer does with the list, each a query string of the changelist.
VIEWS = {
    "first page": {},
    "second page": {"p": "2"},
    "event": {"event": "change.applied"},
    "state": {"state__exact": "FAILED"},
    "environment": {"environment": "staging"},
    "target": {"target": "ext-pg"},
    "stage": {"stage": "default"},
    "change": {"change_id": "c-index"},
    "run": {"run_id": RUN},
    "actor": {"actor": "alice"},
    "search by change": {"q": "c-index"},
    "search by run": {"q": RUN},
    "two filters": {"event": "change.applied", "target": "ext-pg"},
    "date range": {"created_at__gte": TODAY},
    "year": {"created_at__year": str(timezone.now().year)},
    "day": {"created_at__year": str(timezone.now().year), "created_at__month": str(timezone.now().month), "created_at__day": str(timezone.now().day)},
}


def trail_queries(captured) -> list[str]:
    return [query["sql"] for query in captured.captured_queries if ENTRY_TABLE in query["sql"]]


# -- no request reads the whole trail -----------------------------------------------------------------


@pytest.mark.parametrize("query", VIEWS.values(), ids=VIEWS.keys())
def test_no_changelist_view_reads_the_whole_trail(officer, entries, monkeypatch, query):
    monkeypatch.setattr(audit_admin.AuditEntryAdmin, "list_per_page", 2)  # so that every view has pages

    with CaptureQueriesContext(connection) as captured:
        response = officer.get(reverse(CHANGELIST), query)

    assert response.status_code == 200
    queries = trail_queries(captured)
    assert queries, "the list reads the trail"
    for sql in queries:
        assert "DISTINCT" not in sql.upper(), sql
        assert "UPPER(" not in sql.upper(), sql
        assert "COUNT(" not in sql.upper() or "LIMIT" in sql.upper(), f"an unbounded count: {sql}"


def test_the_unfiltered_list_is_counted_by_the_chain_head_without_a_count_query(officer, entries):
    with CaptureQueriesContext(connection) as captured:
        response = officer.get(reverse(CHANGELIST))

    assert response.context["cl"].result_count == AuditEntry.objects.count() == ChainHead.objects.get().seq
    assert not [sql for sql in trail_queries(captured) if "COUNT(" in sql.upper()]
    assert f"{AuditEntry.objects.count()} audit entries" in page_text(response)


@pytest.mark.parametrize("query", VIEWS.values(), ids=VIEWS.keys())
def test_the_number_of_queries_does_not_grow_with_the_trail(officer, entries, monkeypatch, query):
    monkeypatch.setattr(audit_admin.AuditEntryAdmin, "list_per_page", 2)
    # The first page a user opens computes the sidebar's app list (kept per user and permission state).
    assert officer.get(reverse(CHANGELIST), query).status_code == 200
    with CaptureQueriesContext(connection) as small:
        assert officer.get(reverse(CHANGELIST), query).status_code == 200
    for index in range(30):
        entry_write("change.applied", change_id=f"c-more-{index}", target="app-db", actor=ALICE)
        entry_write("change.applied", change_id="c-index", target="ext-pg", actor=BOB)

    with CaptureQueriesContext(connection) as large:
        response = officer.get(reverse(CHANGELIST), query)

    assert response.status_code == 200
    assert len(large.captured_queries) == len(small.captured_queries)
    # At most: the filters' values (one statement), the count, the page, the first and last dates.
    assert len(trail_queries(large)) == len(trail_queries(small)) <= 4


@pytest.mark.postgres
@pytest.mark.parametrize("query", VIEWS.values(), ids=VIEWS.keys())
def test_every_query_on_the_trail_can_be_answered_from_an_index(officer, entries, query):
    """With sequential scans priced out, PostgreSQL still plans one only where no index serves."""
    sent = []

    def record(execute, sql, params, many, context):
        if ENTRY_TABLE in sql:
            sent.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        assert officer.get(reverse(CHANGELIST), query).status_code == 200

    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        try:
            plans = {}
            for sql, params in sent:
                cursor.execute(f"EXPLAIN {sql}", params)
                plans[sql] = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")
    assert sent
    scans = {sql: plan for sql, plan in plans.items() if f"Seq Scan on {ENTRY_TABLE}" in plan}
    assert not scans, scans


# -- counting -----------------------------------------------------------------------------------------


def test_a_filtered_count_is_exact_below_its_cap(officer, entries):
    response = officer.get(reverse(CHANGELIST), {"actor": "bob"})

    cl = response.context["cl"]
    assert (cl.result_count, cl.paginator.capped) == (4, False)
    assert "4 audit entries" in page_text(response)


def test_a_filtered_count_stops_at_its_cap_and_says_more_than(officer, entries, monkeypatch):
    monkeypatch.setattr(audit_admin.TrailPaginator, "cap", 3)
    monkeypatch.setattr(audit_admin.AuditEntryAdmin, "list_per_page", 2)
    by_bob = seqs(AuditEntry.objects.filter(actor="bob"))

    first = officer.get(reverse(CHANGELIST), {"actor": "bob"})
    second = officer.get(reverse(CHANGELIST), {"actor": "bob", "p": "2"})

    cl = first.context["cl"]
    assert (cl.result_count, cl.paginator.capped, cl.paginator.num_pages) == (3, True, 2)
    assert "more than 3 audit entries" in page_text(first)
    assert listed(first) == by_bob[:2]
    assert listed(second) == by_bob[2:3]
    assert "more than 3 results" in page_text(officer.get(reverse(CHANGELIST), {"q": "bob"}))


# -- filters ------------------------------------------------------------------------------------------


def test_filters_offer_the_values_present_in_the_trail(officer, entries):
    response = officer.get(reverse(CHANGELIST))

    specs = {spec.title: spec for spec in response.context["cl"].filter_specs}
    for column in ("event", "environment", "target", "stage"):
        assert specs[column].lookup_choices == sorted(set(AuditEntry.objects.values_list(column, flat=True))), column
    assert {"", "app-db", "ext-pg"} <= set(specs["target"].lookup_choices)
    # An empty value is shown as the admin shows empty values, and still selects its entries.
    blank = next(choice for choice in specs["target"].choices(response.context["cl"]) if choice["query_string"] == "?target=")
    assert blank["display"] == "-"
    assert listed(officer.get(reverse(CHANGELIST), {"target": ""})) == seqs(AuditEntry.objects.filter(target=""))


def test_a_filter_lists_at_most_its_maximum_of_values(officer, entries, monkeypatch):
    monkeypatch.setattr(audit_admin, "FILTER_CHOICES_MAX", 2)

    response = officer.get(reverse(CHANGELIST))

    specs = {spec.title: spec for spec in response.context["cl"].filter_specs}
    assert specs["event"].lookup_choices == sorted(set(AuditEntry.objects.values_list("event", flat=True)))[:2]


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"change_id": "c-index"}, lambda: AuditEntry.objects.filter(change_id="c-index")),
        ({"change_id": "c-ind"}, lambda: AuditEntry.objects.none()),
        ({"run_id": RUN}, lambda: AuditEntry.objects.filter(run_id=RUN)),
        ({"actor": "alice"}, lambda: AuditEntry.objects.filter(actor="alice")),
        ({"actor": "bob", "event": "change.applied"}, lambda: AuditEntry.objects.filter(actor="bob", event="change.applied")),
        ({"change_id": ""}, lambda: AuditEntry.objects.all()),
        ({"state__exact": "FAILED"}, lambda: AuditEntry.objects.filter(state="FAILED")),
    ],
    ids=["change", "part of a change id", "run", "actor", "actor and event", "empty box", "state"],
)
def test_typed_filters_select_the_entries_with_exactly_that_value(officer, entries, query, expected):
    assert listed(officer.get(reverse(CHANGELIST), query)) == seqs(expected())


def test_a_malformed_run_id_is_reported_and_lists_nothing(officer, entries):
    response = officer.get(reverse(CHANGELIST), {"run_id": "not-a-run"})

    assert listed(response) == []
    assert "“not-a-run” is not a valid run id." in page_text(response)


def test_a_typed_filter_keeps_the_other_parameters_and_can_be_cleared(officer, entries):
    content = officer.get(reverse(CHANGELIST), {"actor": "bob", "event": "change.applied", "q": "c-index"}).content.decode()

    forms = re.findall(r'<form method="get" class="audit-input-filter".*?</form>', content, re.S)
    form = next(form for form in forms if 'id="filter-actor"' in form)
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
    assert hidden == {"event": "change.applied", "q": "c-index"}
    assert 'value="bob"' in form
    assert re.search(r'href="\?event=change.applied&amp;q=c-index" class="audit-filter-clear"', form)


# -- search -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "term, expected",
    [
        ("c-index", lambda: AuditEntry.objects.filter(change_id="c-index")),
        ("alice", lambda: AuditEntry.objects.filter(actor="alice")),
        (RUN, lambda: AuditEntry.objects.filter(run_id=RUN)),
        ("C-INDEX", lambda: AuditEntry.objects.none()),
        ("c-ind", lambda: AuditEntry.objects.filter(change_id="c-index")),
        ("c-", lambda: AuditEntry.objects.filter(change_id__startswith="c-")),
        ("ali", lambda: AuditEntry.objects.filter(actor="alice")),
        ("index", lambda: AuditEntry.objects.none()),
        (RUN[:8], lambda: AuditEntry.objects.none()),
        ("c-index bob", lambda: AuditEntry.objects.filter(change_id="c-index", actor="bob")),
        ('"c-index"', lambda: AuditEntry.objects.filter(change_id="c-index")),
    ],
    ids=[
        "change",
        "actor",
        "run",
        "other case",
        "start of a change id",
        "shared start",
        "start of an actor",
        "middle of a word",
        "part of a run id",
        "every word",
        "quoted",
    ],
)
def test_search_matches_the_start_of_change_ids_and_actors_and_whole_run_ids(officer, entries, term, expected):
    assert listed(officer.get(reverse(CHANGELIST), {"q": term})) == seqs(expected())


# -- dates --------------------------------------------------------------------------------------------


def test_date_range_selects_from_a_day_inclusive_to_another_exclusive(officer, entries):
    today = timezone.now().date()
    tomorrow = (today + timedelta(days=1)).isoformat()

    assert listed(officer.get(reverse(CHANGELIST), {"created_at__gte": today.isoformat()})) == seqs(AuditEntry.objects.all())
    assert listed(officer.get(reverse(CHANGELIST), {"created_at__gte": today.isoformat(), "created_at__lt": tomorrow})) == seqs(
        AuditEntry.objects.all()
    )
    assert listed(officer.get(reverse(CHANGELIST), {"created_at__lt": today.isoformat()})) == []
    assert listed(officer.get(reverse(CHANGELIST), {"created_at__gte": tomorrow})) == []


def test_a_date_range_is_read_newest_first_by_time(officer, entries):
    earlier = AuditEntry.objects.create(
        event="run.started", environment="dev", actor="import", created_at=datetime(2026, 1, 5, 12, tzinfo=UTC)
    )  # an entry outside the chain, old

    response = officer.get(reverse(CHANGELIST), {"created_at__gte": "2026-01-01"})

    expected = list(AuditEntry.objects.order_by("-created_at", "-seq", "-id").values_list("pk", flat=True))
    assert [entry.pk for entry in response.context["cl"].result_list] == expected
    assert expected[-1] == earlier.pk


@pytest.mark.parametrize("value", ["2026-02-31", "yesterday", "2026-13-01"])
def test_a_malformed_date_is_reported_and_lists_nothing(officer, entries, value):
    response = officer.get(reverse(CHANGELIST), {"created_at__gte": value})

    assert listed(response) == []
    assert f"“{value}” is not a date" in page_text(response)


def test_export_of_a_date_range_holds_the_listed_entries_and_says_since_when(officer, entries):
    from audit_app.export import TRAILER_MARK

    today = timezone.now().date().isoformat()
    response = officer.get(reverse(EXPORT), {"format": "jsonl", "created_at__gte": today})

    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines[-1].startswith(TRAILER_MARK)
    assert len(lines) - 1 == AuditEntry.objects.count()
    assert today in lines[-1]


def hierarchy(response) -> list[str]:
    match = re.search(r'<nav class="toplinks">(.*?)</nav>', response.content.decode(), re.S)
    assert match, "the date hierarchy is shown"
    return [unescape(text) for text in re.findall(r">([^<>]+)</a>", match.group(1))]


def test_date_hierarchy_offers_every_period_between_the_first_and_last_entries(officer, entries):
    now = timezone.now()
    for moment in (datetime(2024, 5, 3, 9, tzinfo=UTC), datetime(2025, 11, 20, 9, tzinfo=UTC)):
        AuditEntry.objects.create(event="run.started", environment="dev", actor="import", created_at=moment)

    with CaptureQueriesContext(connection) as captured:
        years = hierarchy(officer.get(reverse(CHANGELIST)))
    months_2024 = hierarchy(officer.get(reverse(CHANGELIST), {"created_at__year": "2024"}))
    days = officer.get(reverse(CHANGELIST), {"created_at__year": "2024", "created_at__month": "5"})
    may_3 = officer.get(reverse(CHANGELIST), {"created_at__year": "2024", "created_at__month": "5", "created_at__day": "3"})
    may_4 = officer.get(reverse(CHANGELIST), {"created_at__year": "2024", "created_at__month": "5", "created_at__day": "4"})

    assert years == [str(year) for year in range(2024, now.year + 1)]
    assert months_2024 == ["‹ All dates"] + [
        f"{month} 2024" for month in ("May", "June", "July", "August", "September", "October", "November", "December")
    ]
    assert hierarchy(days) == ["‹ 2024"] + [f"May {day}" for day in range(3, 32)]
    assert len(listed(may_3)) == 1
    assert listed(may_4) == []
    assert not [sql for sql in trail_queries(captured) if "DISTINCT" in sql.upper()]


def test_date_hierarchy_starts_at_the_month_when_the_trail_spans_one(officer, entries):
    now = timezone.localtime()

    links = hierarchy(officer.get(reverse(CHANGELIST)))

    assert links == [f"‹ {now.year}", now.strftime("%B ") + str(now.day)]


def test_a_malformed_date_hierarchy_is_refused_like_django_does(officer, entries):
    response = officer.get(reverse(CHANGELIST), {"created_at__year": "2026", "created_at__month": "13"})

    assert response.status_code == 302
    assert "e=1" in response["Location"]
