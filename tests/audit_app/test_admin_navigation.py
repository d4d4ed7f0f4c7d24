"""What the audit list draws once instead of on every request, and that it stays right: the
sidebar's app list is kept per user and permission state (``FlamingockAdminSite.get_app_list``) and
follows every grant and revocation at once; the sidebar is Django's own markup; the filters drawn in
Python are Django's markup for each filter; the chain status, the head and the date hierarchy's ends
come from one statement and say what the separate reads say."""

import re
from datetime import timedelta

import pytest
from django.contrib import admin as django_admin
from django.contrib.admin.templatetags.admin_list import admin_list_filter
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.template.loader import render_to_string
from django.test.html import parse_html
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from audit_app import admin as audit_admin
from audit_app.integrity import audit_verify, checkpoint_write, verification_record
from audit_app.models import AuditCheckpoint, Verification, VerificationRequest
from audit_app.services import Actor
from audit_app.verify_requests import coverage
from changes_app.admin import site as site_module
from changes_app.governance import permission_version
from changes_app.models import TargetSystem
from tests.support.audit import entry_write

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:audit_app_auditentry_changelist"
VERIFICATIONS = "admin:audit_app_verification_changelist"
TARGETS = "admin:changes_app_targetsystem_changelist"


def permission(codename: str, app_label: str = "audit_app") -> Permission:
    return Permission.objects.get(codename=codename, content_type__app_label=app_label)


@pytest.fixture
def officer(client):
    """Staff who may view the trail and nothing else, to begin with."""
    user = get_user_model().objects.create_user("officer", is_staff=True)
    user.user_permissions.add(permission("view_auditentry"))
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def trail(db):
    entry_write("run.started", actor=Actor(name="bob", via="cli"))
    entry_write("change.applied", change_id="c-users", target="app-db", actor=Actor(name="alice", via="admin"))
    entry_write("change.failed", change_id="c-index", target="ext-pg", environment="staging", actor=Actor(name="bob", via="cli"))


@pytest.fixture
def builds(monkeypatch):
    """How many times Django computed an app list."""
    calls = []
    original = django_admin.AdminSite._build_app_dict

    def counted(self, request, label=None):
        calls.append(label)
        return original(self, request, label)

    monkeypatch.setattr(django_admin.AdminSite, "_build_app_dict", counted)
    return calls


def sidebar(response) -> str:
    found = re.search(r'<nav class="sticky" id="nav-sidebar".*?</nav>', response.content.decode(), re.S)
    assert found, "the page has its sidebar"
    return found.group(0)


def links_to(response, name: str) -> bool:
    return f'href="{reverse(name)}"' in sidebar(response)


# -- the app list, once per user and permission state ------------------------------------------------


def test_the_app_list_and_the_sidebar_are_computed_once_per_user_and_permission_state(officer, trail, builds, monkeypatch):
    drawn = []
    original = site_module.loader.render_to_string
    monkeypatch.setattr(site_module.loader, "render_to_string", lambda name, *args, **kwargs: drawn.append(name) or original(name, *args, **kwargs))
    for _ in range(3):
        assert officer.get(reverse(CHANGELIST)).status_code == 200
    assert builds == [None]
    assert drawn == ["admin/nav_sidebar.html"]


def test_a_user_permission_granted_or_revoked_shows_on_the_next_page(officer, trail):
    assert not links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)

    officer.user.user_permissions.add(permission("view_verification"))
    assert links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)

    officer.user.user_permissions.remove(permission("view_verification"))
    assert not links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)


def test_a_group_membership_and_a_group_permission_show_on_the_next_page(officer, trail):
    reviewers = Group.objects.create(name="reviewers")
    assert not links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)

    officer.user.groups.add(reviewers)
    reviewers.permissions.add(permission("view_verification"))  # a change to the group, not to the user
    assert links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)

    officer.user.groups.remove(reviewers)
    assert not links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)

    officer.user.groups.add(reviewers)
    assert links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)
    reviewers.delete()  # its memberships go with it, without a membership signal
    assert not links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)


def test_an_object_permission_on_a_target_system_shows_on_the_next_page(officer, trail):
    target = TargetSystem.objects.create(name="nav-db", kind="postgresql")
    assert not links_to(officer.get(reverse(CHANGELIST)), TARGETS)

    assign_perm("changes_app.view_targetsystem", officer.user, target)
    assert links_to(officer.get(reverse(CHANGELIST)), TARGETS)

    remove_perm("changes_app.view_targetsystem", officer.user, target)
    assert not links_to(officer.get(reverse(CHANGELIST)), TARGETS)


def test_the_superuser_flag_shows_on_the_next_page_even_when_saved_without_signals(officer, trail):
    assert not links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)
    # An update that sends no signal: the user's flags are part of what the list is kept under.
    get_user_model().objects.filter(pk=officer.user.pk).update(is_superuser=True)
    assert links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)


def test_a_change_no_signal_reports_shows_once_the_kept_list_expires(officer, trail, monkeypatch):
    assert not links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)
    through = get_user_model().user_permissions.through
    through.objects.bulk_create([through(user_id=officer.user.pk, permission_id=permission("view_verification").pk)])  # no signal
    assert not links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS), "kept for APP_LIST_TTL seconds"

    monkeypatch.setattr(site_module, "APP_LIST_TTL", 0)
    assert links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)


def test_each_user_has_their_own_app_list(officer, trail, admin_client):
    assert links_to(admin_client.get(reverse(CHANGELIST)), VERIFICATIONS)
    assert not links_to(officer.get(reverse(CHANGELIST)), VERIFICATIONS)
    assert links_to(admin_client.get(reverse(CHANGELIST)), VERIFICATIONS)


def test_a_cache_that_does_not_answer_costs_the_kept_list_not_the_page(officer, trail, builds, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(permission_version.cache, "get", down)
    for _ in range(2):
        assert officer.get(reverse(CHANGELIST)).status_code == 200
    assert builds == [None, None], "computed for each page"


def test_a_caller_may_change_the_app_list_it_is_given(officer, trail, rf):
    request = rf.get(reverse(CHANGELIST))
    request.user = officer.user
    first = site_module.site.get_app_list(request)
    first[0]["models"].clear()
    first[0]["name"] = "changed"
    again = site_module.site.get_app_list(request)
    assert again[0]["models"] and again[0]["name"] != "changed"


# -- the sidebar ---------------------------------------------------------------------------------------


def test_the_sidebar_is_djangos_own_markup_for_the_page(admin_client, trail):
    response = admin_client.get(reverse(CHANGELIST))
    expected = render_to_string("admin/nav_sidebar.html", {"available_apps": response.context["available_apps"], "request": response.wsgi_request})
    assert sidebar(response).strip() in expected
    assert parse_html(str(response.context["nav_sidebar_html"])) == parse_html(expected)
    assert 'class="model-auditentry current-model"' in sidebar(response)


def test_the_sidebar_marks_the_page_it_is_drawn_for(admin_client, trail, rf):
    admin_client.get(reverse(CHANGELIST))
    user = get_user_model().objects.get(username="admin")
    drawn = {}
    for name in (CHANGELIST, VERIFICATIONS):
        request = rf.get(reverse(name))
        request.user = user
        drawn[name] = str(site_module.site.nav_sidebar_html(request, site_module.site.get_app_list(request)))
    assert 'class="model-auditentry current-model"' in drawn[CHANGELIST]
    assert 'class="model-verification current-model"' in drawn[VERIFICATIONS]
    assert 'class="model-auditentry current-model"' not in drawn[VERIFICATIONS]


# -- the filters, drawn in Python ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?event=change.failed&state=FAILED",
        "?target=app-db&change_id=c-users&actor=alice",
        "?created_at__gte=2026-01-01&created_at__lt=07/12/2026",  # a bad date: said beside its box
        "?run_id=not-a-uuid&q=c-",
        "?environment=staging&o=-1",
    ],
)
def test_the_filters_are_drawn_as_django_draws_them(admin_client, trail, query):
    response = admin_client.get(reverse(CHANGELIST) + query)
    assert response.status_code == 200
    changelist = response.context["cl"]
    djangos = "".join(admin_list_filter(changelist, spec) for spec in changelist.filter_specs)
    assert parse_html(changelist.filters_html) == parse_html(djangos)
    assert changelist.filters_html in response.content.decode()


def test_a_filter_of_another_kind_is_rendered_by_its_own_template(admin_client, trail, monkeypatch):
    monkeypatch.setattr(audit_admin, "_FILTER_DRAWINGS", {})
    response = admin_client.get(reverse(CHANGELIST) + "?event=change.failed")
    changelist = response.context["cl"]
    assert changelist.filters_html == "".join(admin_list_filter(changelist, spec) for spec in changelist.filter_specs)


# -- the trail's facts, in one statement ---------------------------------------------------------------


def test_the_chain_status_is_what_the_separate_reads_say(admin_client, trail):
    verification_record(audit_verify(), actor=Actor(name="verifier", via="cli"))
    checkpoint_write(reason="test", force=True)
    VerificationRequest.objects.create(requested_by="carol", status=VerificationRequest.Status.RUNNING)

    response = admin_client.get(reverse(CHANGELIST))

    context = response.context
    for shown, read in (
        (context["last_verification"], Verification.objects.order_by("-performed_at").first()),
        (context["last_checkpoint"], AuditCheckpoint.objects.order_by("-seq", "-id").first()),
        (context["pending_verification"], VerificationRequest.objects.filter(status="RUNNING").first()),
    ):
        assert shown is not None and shown.pk == read.pk
        for field in type(read)._meta.concrete_fields:
            assert getattr(shown, field.attname) == getattr(read, field.attname), field.name
    assert timezone.is_aware(context["last_verification"].performed_at)
    assert "A verification requested by carol is running." in response.content.decode()


def test_without_a_verification_or_checkpoint_the_list_says_so(admin_client, trail):
    response = admin_client.get(reverse(CHANGELIST))
    assert response.context["last_verification"] is None and response.context["last_checkpoint"] is None
    assert "The chain has not been verified yet" in response.content.decode()


def test_the_trail_facts_are_one_statement(admin_client, trail):
    admin_client.get(reverse(CHANGELIST))  # the app list, computed once
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    status = [q["sql"] for q in captured.captured_queries if "audit_app_verification" in q["sql"] and "audit_app_chainhead" in q["sql"]]
    assert len(status) == 1, "head, dates, verification, checkpoint and request read together"
    # The user, the facts, the filter values, the page, and what covers the page (two).
    assert len(captured.captured_queries) <= 6


def test_the_date_hierarchy_spans_the_first_and_last_entries(admin_client, trail):
    response = admin_client.get(reverse(CHANGELIST))
    facts = audit_admin.trail_facts(response.wsgi_request, response.context["cl"].model_admin)
    first, last = facts["first"], facts["last"]
    assert first <= last and last - first < timedelta(minutes=5)
    periods = response.context["cl"].date_periods()
    assert periods["show"] and periods["choices"]


@pytest.mark.parametrize("per_page", [2, 100], ids=["newer than any verification or checkpoint", "some covered"])
def test_each_entry_shows_what_covers_it_read_only_when_something_may(admin_client, trail, monkeypatch, per_page):
    verification_record(audit_verify(), actor=Actor(name="verifier", via="cli"))
    checkpoint_write(reason="test", force=True)
    for index in range(3):
        entry_write("change.applied", change_id=f"c-later-{index}", target="app-db", actor=Actor(name="alice", via="admin"))
    monkeypatch.setattr(audit_admin.AuditEntryAdmin, "list_per_page", per_page)
    admin_client.get(reverse(CHANGELIST))  # the app list, computed once

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(reverse(CHANGELIST))

    entries = response.context["cl"].result_list
    expected = coverage([entry.seq for entry in entries])
    for entry in entries:
        assert entry.coverage == expected[entry.seq]
        assert entry.evidence_marks == audit_admin._coverage_marks(expected[entry.seq], entry.seq, short=True)
    covered = any(marks["verification"] or marks["checkpoint"] for marks in expected.values())
    assert covered == (per_page == 100)
    checkpoint_reads = [q for q in captured.captured_queries if "audit_app_auditcheckpoint" in q["sql"] and "audit_app_chainhead" not in q["sql"]]
    assert bool(checkpoint_reads) == covered, "the page's coverage is read only when something may cover it"
