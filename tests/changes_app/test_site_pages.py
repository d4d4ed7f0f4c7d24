"""The site around the pages (issue 18, "A branded, finished site" and "Platform screens"): its name
and icon, its error pages, the declared environments and the reason of a policy change, the lock
page's three states, guardian's permission screens with operate and approve first, and the trace a
change to a guarded schedule leaves."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.contrib.staticfiles import finders
from django.db import connection
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from guardian.shortcuts import get_perms

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.admin import site as site_module
from changes_app.conf import environments_declared
from changes_app.governance.roles import ENGINEER, PLATFORM_ADMIN
from changes_app.locks.backends import lock_backend_shared
from changes_app.models import ApprovalPolicy, Finding, LockLease, TargetSystem
from changes_app.services.schedules import schedules_ensure
from tests.support.governance import person, snapshot

pytestmark = pytest.mark.django_db

VERIFY = "flamingock: verify the audit chain"
DRIFT = "flamingock: definition and operational drift"
FLEET_DRIFT = "flamingock: fleet member drift"
EXPIRE = "flamingock: expire requests"


def client_of(who) -> Client:
    client = Client()
    client.force_login(who.user)
    return client


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def platform(targets):
    return person("plat", PLATFORM_ADMIN)


@pytest.fixture
def engineer(targets):
    return person("eng", ENGINEER, operate=("app-db",))


# -- a branded site --------------------------------------------------------------------------------


def test_the_site_is_titled_flamingock_with_its_icon_and_view_site_leads_to_the_dashboard(engineer):
    page = client_of(engineer).get(reverse("admin:index")).content.decode()

    assert "<title>Dashboard | Flamingock</title>" in page
    assert '<div id="site-name"><a href="/admin/">Flamingock</a></div>' in page
    assert "Django administration" not in page and "Django site admin" not in page
    assert f'<a href="{reverse("admin:index")}">View site</a>' in page
    assert 'rel="icon" type="image/svg+xml" href="/static/changes_app/favicon.svg"' in page
    assert 'href="/static/changes_app/admin.css"' in page


def test_the_icon_and_the_stylesheet_are_static_files_of_the_app():
    assert finders.find("changes_app/favicon.svg").endswith("changes_app/static/changes_app/favicon.svg")
    assert finders.find("changes_app/admin.css").endswith("changes_app/static/changes_app/admin.css")


def test_favicon_ico_redirects_to_the_apps_icon(client):
    response = client.get("/favicon.ico")

    assert (response.status_code, response["Location"]) == (302, "/static/changes_app/favicon.svg")


def test_a_missing_page_is_in_the_admins_layout_with_a_way_back_and_the_path_escaped(engineer):
    response = client_of(engineer).get("/admin/changes_app/nothing-here/<script>alert(1)</script>/")
    page = response.content.decode()

    assert response.status_code == 404
    assert 'id="flk-error-404"' in page and '<div id="site-name">' in page
    assert f'<a class="button" href="{reverse("admin:index")}" id="flk-way-back">Back to the dashboard</a>' in page
    assert "<script>alert(1)</script>" not in page and "alert(1)" in page


def test_a_missing_page_answers_an_anonymous_visitor_too(client):
    response = client.get("/no-such-page/")

    assert response.status_code == 404 and 'id="flk-way-back"' in response.content.decode()


def test_a_refused_page_is_in_the_admins_layout_with_a_way_back(engineer):
    response = client_of(engineer).post(reverse("admin:changes_app_run_lock"), {"reason": "stale"})
    page = response.content.decode()

    assert response.status_code == 403
    assert 'id="flk-error-403"' in page and "Nothing was changed." in page
    assert f'href="{reverse("admin:index")}" id="flk-way-back"' in page


def test_the_500_page_needs_no_database_no_session_and_no_context(django_assert_num_queries):
    def refuse(*args, **kwargs):
        raise AssertionError("the 500 page queried the database")

    request = RequestFactory().get("/admin/")  # no user, no session, no messages
    with django_assert_num_queries(0), connection.execute_wrapper(refuse):
        response = site_module.server_error(request)
    page = response.content.decode()

    assert response.status_code == 500
    assert "<h1>Server error</h1>" in page and '<div id="site-name"><a href="/admin/">Flamingock</a></div>' in page
    assert '<a class="button" href="/admin/" id="flk-way-back">Back to the dashboard</a>' in page
    assert "/static/admin/css/base.css" in page and "/static/changes_app/admin.css" in page


def test_a_server_error_in_a_page_answers_the_500_page(engineer, monkeypatch):
    def broken(request):
        raise RuntimeError("the dashboard broke")

    monkeypatch.setattr(site_module, "dashboard_context", broken)
    client = client_of(engineer)
    client.raise_request_exception = False

    response = client.get(reverse("admin:index"))

    assert response.status_code == 500 and 'id="flk-way-back"' in response.content.decode()


def test_the_error_handlers_are_the_sites():
    from flamingock_site import urls

    assert (urls.handler403, urls.handler404, urls.handler500) == (
        "changes_app.admin.site.permission_denied",
        "changes_app.admin.site.page_not_found",
        "changes_app.admin.site.server_error",
    )


# -- declared environments and the reason of a policy change -------------------------------------------


def test_the_declared_environments_default_to_dev_staging_prod_and_the_current_one(settings):
    settings.FLAMINGOCK_ENVIRONMENTS = ["dev", "staging", "prod"]
    settings.FLAMINGOCK_ENVIRONMENT = "eu-prod"
    assert environments_declared() == ["dev", "staging", "prod", "eu-prod"]
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    assert environments_declared() == ["dev", "staging", "prod"]


def test_the_policy_form_offers_a_select_of_the_declared_environments_and_asks_for_a_reason(platform, settings):
    settings.FLAMINGOCK_ENVIRONMENTS = ["dev", "staging", "prod"]
    settings.FLAMINGOCK_ENVIRONMENT = "qa"
    app_db = TargetSystem.objects.get(name="app-db")

    page = client_of(platform).get(reverse("admin:changes_app_targetsystem_change", args=[app_db.pk])).content.decode()
    form = page.split('id="flk-policy-form"')[1].split("</form>")[0]

    assert '<select name="environment"' in form and '<input name="environment"' not in form
    options = [chunk.split('"')[1] for chunk in form.split("<option value=")[1:]]
    assert options == ["dev", "staging", "prod", "qa"]
    assert '<option value="qa" selected>' in form
    assert '<label for="id_reason">Reason (recorded in the audit trail)</label>' in form and 'name="reason"' in form


def test_an_undeclared_environment_is_refused_by_the_form_and_the_service_and_changes_nothing(platform):
    app_db = TargetSystem.objects.get(name="app-db")
    before = snapshot()

    response = client_of(platform).post(
        reverse("admin:changes_app_targetsystem_policy", args=[app_db.pk]), {"environment": "prdo", "required_approvals": "2", "reason": "typo"}
    )
    assert any("prdo is not a declared environment" in m for m in messages_of(response)), messages_of(response)
    with pytest.raises(services.PolicyInvalid, match=r"'prdo' is not a declared environment: choose one of dev, staging, prod"):
        services.policy_set(target_name="app-db", environment="prdo", required_approvals=2, actor=platform.actor, reason="typo")

    assert snapshot() == before and not ApprovalPolicy.objects.filter(environment="prdo").exists()


def test_a_policy_change_without_a_reason_is_refused_and_changes_nothing(platform):
    app_db = TargetSystem.objects.get(name="app-db")
    before = snapshot()

    response = client_of(platform).post(
        reverse("admin:changes_app_targetsystem_policy", args=[app_db.pk]), {"environment": "staging", "required_approvals": "2", "reason": "  "}
    )
    assert any("reason: A reason is required." in m for m in messages_of(response)), messages_of(response)
    with pytest.raises(services.PolicyInvalid, match="a reason is required"):
        services.policy_set(target_name="app-db", environment="staging", required_approvals=2, actor=platform.actor, reason="")

    assert snapshot() == before


def test_a_policy_change_records_its_reason_in_policy_changed(platform):
    app_db = TargetSystem.objects.get(name="app-db")

    response = client_of(platform).post(
        reverse("admin:changes_app_targetsystem_policy", args=[app_db.pk]),
        {"environment": "staging", "required_approvals": "2", "reason": "two eyes after the March incident"},
    )

    assert any("Policy saved" in m for m in messages_of(response))
    entry = AuditEntry.objects.get(event="policy.changed")
    assert (entry.actor, entry.reason, entry.details["environment"], entry.details["required_approvals"]) == (
        "plat",
        "two eyes after the March incident",
        "staging",
        2,
    )


# -- the lock page ---------------------------------------------------------------------------------------


def hold_lock(*, expired: bool) -> uuid.UUID:
    run_id = uuid.uuid4()
    expires = timezone.now() + (timedelta(seconds=-30) if expired else timedelta(seconds=60))
    LockLease.objects.update_or_create(
        name=lock_backend_shared().name,
        defaults={
            "owner": "o1",
            "run_id": run_id,
            "holder": "worker@host-1",
            "host": "host-1",
            "pid": 4242,
            "token": 7,
            "acquired_at": timezone.now() - timedelta(minutes=5),
            "expires_at": expires,
        },
    )
    return run_id


def lock_page(who) -> str:
    return client_of(who).get(reverse("admin:changes_app_run_lock")).content.decode()


def test_a_free_lock_says_so_and_offers_no_release_form(platform, settings):
    settings.FLAMINGOCK_LOCK = {**settings.FLAMINGOCK_LOCK, "backend": "database"}
    page = lock_page(platform)

    assert 'data-state="free"' in page and "<strong>Free.</strong>" in page
    assert 'id="flk-release-form"' not in page and 'name="reason"' not in page


def test_a_held_lock_shows_its_holder_and_a_labelled_reason_for_those_who_may_release_it(platform, engineer, settings):
    settings.FLAMINGOCK_LOCK = {**settings.FLAMINGOCK_LOCK, "backend": "database"}
    run_id = hold_lock(expired=False)

    page = lock_page(platform)
    assert 'data-state="held"' in page and "<strong>Held</strong> by worker@host-1" in page and str(run_id) in page
    assert 'role="alert"' not in page
    assert '<label for="id_reason">Reason (recorded in the audit trail)</label>' in page and 'id="flk-release"' in page
    seen_by_engineer = lock_page(engineer)
    assert 'data-state="held"' in seen_by_engineer and 'id="flk-release-form"' not in seen_by_engineer


def test_a_lock_held_past_its_lease_is_a_warning(platform, settings):
    settings.FLAMINGOCK_LOCK = {**settings.FLAMINGOCK_LOCK, "backend": "database"}
    hold_lock(expired=True)

    page = lock_page(platform)

    assert 'data-state="expired"' in page
    assert 'class="flk-lock-state flk-lock-expired" id="flk-lock-state" role="alert"' in page and "Held past its lease." in page


def test_releasing_a_held_lock_asks_to_confirm_then_releases_it_with_the_reason(platform, settings):
    settings.FLAMINGOCK_LOCK = {**settings.FLAMINGOCK_LOCK, "backend": "database"}
    hold_lock(expired=True)
    client = client_of(platform)
    url = reverse("admin:changes_app_run_lock")

    confirm = client.post(url, {"reason": "worker host-1 is gone"}).content.decode()
    assert 'id="flk-release-confirm"' in confirm and "Release the lock held by <strong>worker@host-1</strong>" in confirm
    assert lock_backend_shared().holder() is not None and not AuditEntry.objects.filter(event="lock.force_released").exists()

    done = client.post(url, {"reason": "worker host-1 is gone", "confirm": "yes"})

    assert lock_backend_shared().holder() is None
    assert AuditEntry.objects.get(event="lock.force_released").reason == "worker host-1 is gone"
    assert any("Lock released (held by worker@host-1" in m for m in messages_of(done))


# -- guardian's object-permission screens ----------------------------------------------------------------


def test_the_permission_screen_lists_operate_and_approve_first_each_with_a_sentence(platform, engineer):
    app_db = TargetSystem.objects.get(name="app-db")
    url = reverse("admin:changes_app_targetsystem_permissions_manage_user", args=[app_db.pk, engineer.user.pk])

    page = client_of(platform).get(url).content.decode()

    values = [chunk.split('"')[1] for chunk in page.split('name="permissions" value=')[1:]]
    assert values[:3] == ["operate_targetsystem", "approve_targetsystem", "break_glass"]
    assert set(values[3:]) == {"add_targetsystem", "change_targetsystem", "delete_targetsystem", "view_targetsystem"}
    assert "Operate: run the pipeline and ask for apply, undo, fix, skip and re-apply" in page
    assert "Approve: approve or reject requests on this target system" in page
    assert page.index("Approve: approve") < page.index("Generic: Can add target system")
    assert 'type="checkbox"' in page


def test_the_permission_screen_still_grants_through_guardian(platform, engineer):
    app_db = TargetSystem.objects.get(name="app-db")
    url = reverse("admin:changes_app_targetsystem_permissions_manage_user", args=[app_db.pk, engineer.user.pk])

    client_of(platform).post(url, {"permissions": ["operate_targetsystem", "approve_targetsystem"]})

    assert set(get_perms(engineer.user, app_db)) >= {"operate_targetsystem", "approve_targetsystem"}


def test_an_engineer_cannot_open_the_permission_screens(engineer):
    app_db = TargetSystem.objects.get(name="app-db")
    url = reverse("admin:changes_app_targetsystem_permissions_manage_user", args=[app_db.pk, engineer.user.pk])

    assert client_of(engineer).get(url).status_code == 403


# -- guarded schedules -----------------------------------------------------------------------------------


@pytest.fixture
def schedules(platform):
    schedules_ensure()
    return {task.name: task for task in PeriodicTask.objects.all()}


def schedule_entries() -> list[dict]:
    return [entry.details | {"actor": entry.actor} for entry in AuditEntry.objects.filter(event="schedule.changed").order_by("id")]


def schedule_findings():
    return list(Finding.objects.filter(kind=Finding.Kind.SCHEDULE_CHANGED).order_by("id"))


def form_data(client, url: str) -> dict:
    """What the admin's change form at ``url`` would post unchanged: its fields and its inlines'."""
    response = client.get(url)
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms += [inline.formset.management_form, *inline.formset.forms]
    data = {}
    for form in forms:
        for name in form.fields:
            value = form[name].value()
            if value is not None and value is not False:
                data[form.add_prefix(name)] = "on" if value is True else value
    return data


def act(client, action: str, *tasks) -> None:
    response = client.post(
        reverse("admin:django_celery_beat_periodictask_changelist"), {"action": action, "_selected_action": [task.pk for task in tasks]}
    )
    assert response.status_code == 302, response.content.decode()[:2000]


def test_disabling_the_chain_verification_writes_schedule_changed_and_raises_a_finding(platform, schedules):
    act(client_of(platform), "disable_tasks", schedules[VERIFY])

    [entry] = schedule_entries()
    assert (entry["actor"], entry["schedule"], entry["task"], entry["change"]) == ("plat", VERIFY, "flamingock.audit_verify", "disabled")
    assert (entry["before"]["enabled"], entry["after"]["enabled"]) == (True, False)
    [finding] = schedule_findings()
    assert (finding.status, finding.check_name) == (Finding.Status.OPEN, Finding.Check.OPERATIONAL)
    assert finding.summary == f"plat disabled the schedule {VERIFY!r} (flamingock.audit_verify)"
    assert finding.last_evidence["before"]["enabled"] is True and finding.last_evidence["after"]["enabled"] is False
    assert AuditEntry.objects.filter(event="drift.detected", details__finding=finding.pk).count() == 1


def test_editing_a_drift_schedule_through_its_form_records_before_and_after(platform, schedules):
    client = client_of(platform)
    url = reverse("admin:django_celery_beat_periodictask_change", args=[schedules[DRIFT].pk])
    hourly, _ = IntervalSchedule.objects.get_or_create(every=3600, period=IntervalSchedule.SECONDS)

    response = client.post(url, {**form_data(client, url), "interval": hourly.pk, "_save": "Save"})

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    [entry] = schedule_entries()
    assert (entry["change"], entry["schedule"]) == ("edited", DRIFT)
    assert (entry["before"]["schedule"], entry["after"]["schedule"]) == ("every 300 seconds", "every 3600 seconds")
    assert len(schedule_findings()) == 1


def test_deleting_a_guarded_schedule_is_recorded_and_a_second_change_updates_the_same_finding(platform, schedules):
    client = client_of(platform)
    act(client, "disable_tasks", schedules[DRIFT])
    client.post(reverse("admin:django_celery_beat_periodictask_delete", args=[schedules[DRIFT].pk]), {"post": "yes"})

    assert not PeriodicTask.objects.filter(name=DRIFT).exists()
    assert [(e["change"], e["after"]) for e in schedule_entries()][1] == ("deleted", None)
    [finding] = schedule_findings()
    assert finding.times_seen == 2 and finding.last_evidence["change"] == "deleted"


def test_editing_the_interval_a_drift_schedule_uses_is_recorded_for_the_guarded_task_only(platform, schedules):
    every_300 = schedules[DRIFT].interval
    url = reverse("admin:django_celery_beat_intervalschedule_change", args=[every_300.pk])

    client = client_of(platform)

    response = client.post(url, {**form_data(client, url), "every": "600", "_save": "Save"})

    assert response.status_code == 302, response.context["adminform"].form.errors
    # The interval is shared with the checkpoint and the request expiry, which are not guarded, and
    # with the fleet members' drift check, which is.
    assert sorted((e["schedule"], e["change"], e["before"]["schedule"], e["after"]["schedule"]) for e in schedule_entries()) == [
        (DRIFT, "edited", "every 300 seconds", "every 600 seconds"),
        (FLEET_DRIFT, "edited", "every 300 seconds", "every 600 seconds"),
    ]


def test_deleting_the_interval_of_the_chain_verification_is_recorded_as_its_deletion(platform, schedules):
    every_day = schedules[VERIFY].interval
    client_of(platform).post(reverse("admin:django_celery_beat_intervalschedule_delete", args=[every_day.pk]), {"post": "yes"})

    assert not PeriodicTask.objects.filter(name=VERIFY).exists()
    assert [(e["schedule"], e["change"]) for e in schedule_entries()] == [(VERIFY, "deleted")]
    assert len(schedule_findings()) == 1


def test_bulk_deleting_guarded_schedules_records_each(platform, schedules):
    client = client_of(platform)
    url = reverse("admin:django_celery_beat_periodictask_changelist")
    selected = {"action": "delete_selected", "_selected_action": [schedules[VERIFY].pk, schedules[DRIFT].pk]}
    # Django's bulk delete asks to confirm first (and records nothing yet); confirming deletes.
    assert "Delete multiple objects" in client.post(url, selected).content.decode() and schedule_entries() == []
    client.post(url, {**selected, "post": "yes"})

    assert sorted((e["schedule"], e["change"]) for e in schedule_entries()) == [(DRIFT, "deleted"), (VERIFY, "deleted")]
    assert len(schedule_findings()) == 2


def test_changing_another_schedule_leaves_no_trace(platform, schedules):
    act(client_of(platform), "disable_tasks", schedules[EXPIRE])

    assert not PeriodicTask.objects.get(name=EXPIRE).enabled
    assert schedule_entries() == [] and schedule_findings() == []


def test_re_enabling_an_enabled_schedule_changes_nothing_and_records_nothing(platform, schedules):
    act(client_of(platform), "enable_tasks", schedules[VERIFY])

    assert schedule_entries() == [] and schedule_findings() == []


def test_the_schedule_finding_kind_has_a_label():
    from changes_app.admin.labels import label

    assert label("finding_kind", Finding.Kind.SCHEDULE_CHANGED) == "A verification or drift schedule was changed"


def test_a_target_groups_policy_form_offers_the_fresh_approval_after_the_canary_and_it_is_saved_and_audited(platform, settings):
    settings.FLAMINGOCK_TARGET_SYSTEMS = {
        **settings.FLAMINGOCK_TARGET_SYSTEMS,
        "tenants": {"kind": "postgres", "dsn_env": "FLAMINGOCK_TEST_TARGET_DSN", "group": {"schemas": ["t_00"]}},
    }
    services.target_systems_sync()
    tenants, app_db = TargetSystem.objects.get(name="tenants"), TargetSystem.objects.get(name="app-db")
    client = client_of(platform)

    group_form = client.get(reverse("admin:changes_app_targetsystem_change", args=[tenants.pk])).content.decode().split('id="flk-policy-form"')[1]
    plain_form = client.get(reverse("admin:changes_app_targetsystem_change", args=[app_db.pk])).content.decode().split('id="flk-policy-form"')[1]
    assert 'name="fleet_canary_approval"' in group_form.split("</form>")[0]
    assert 'name="fleet_canary_approval"' not in plain_form.split("</form>")[0]

    response = client.post(
        reverse("admin:changes_app_targetsystem_policy", args=[tenants.pk]),
        {"environment": "staging", "required_approvals": "1", "fleet_canary_approval": "on", "reason": "canary first, then a look"},
    )
    assert any("Policy saved" in m for m in messages_of(response)), messages_of(response)
    assert ApprovalPolicy.objects.get(target_system=tenants, environment="staging").fleet_canary_approval is True
    assert AuditEntry.objects.filter(event="policy.changed", reason="canary first, then a look").exists()

    # The same field posted for a target that is not a group is left as it is.
    client.post(
        reverse("admin:changes_app_targetsystem_policy", args=[app_db.pk]),
        {"environment": "staging", "required_approvals": "1", "fleet_canary_approval": "on", "reason": "not a group"},
    )
    assert ApprovalPolicy.objects.get(target_system=app_db, environment="staging").fleet_canary_approval is False
