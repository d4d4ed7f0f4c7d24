"""Governance (docs/semantics.md §9): the roles and their permissions, object permissions with one meaning
everywhere, approval policies, and a permission matrix of every acting service and CLI subcommand
for every role and for users whose object permissions cover one target system only.

The expected outcomes are written out below as literal tables, not derived from the code."""

from __future__ import annotations

import importlib
import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.db.migrations.loader import MigrationLoader
from guardian.shortcuts import assign_perm

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.governance.permissions import APPROVE, OPERATE, PermissionRefused, target_systems_for, users_with
from changes_app.governance.roles import APPROVER, COMPLIANCE_OFFICER, ENGINEER, PLATFORM_ADMIN, ROLES, roles_ensure
from changes_app.management.commands.demo_setup import DEMO_USERS
from changes_app.models import ApprovalPolicy, ChangeRequest, Run, TargetSystem
from tests.support.governance import Person, person, policy, snapshot
from tests.support.trails import cli, journal_change, run_pipeline, sql_change

pytestmark = pytest.mark.django_db(transaction=True)

Kind = ChangeRequest.Kind

# -- roles -------------------------------------------------------------------------------------------

#: What each role may do by its model permissions alone (no object permission given).
ROLE_PERMISSIONS = {
    #  permission                                 compliance engineer approver platform
    "audit_app.view_auditentry":                  (True,      True,    True,    True),
    "changes_app.view_changerecord":              (True,      True,    True,    True),
    "changes_app.view_run":                       (True,      True,    True,    True),
    "changes_app.view_changerequest":             (True,      True,    True,    True),
    "changes_app.view_apitoken":                  (True,      False,   False,   True),
    "django_celery_beat.view_periodictask":       (True,      False,   False,   True),
    "changes_app.add_run":                        (False,     True,    False,   False),
    "changes_app.add_changerequest":              (False,     True,    False,   False),
    "changes_app.add_approval":                   (False,     False,   True,    False),
    "changes_app.add_requestcomment":             (False,     True,    True,    False),
    "changes_app.change_targetsystem":            (False,     False,   False,   True),
    "changes_app.change_approvalpolicy":          (False,     False,   False,   True),
    "changes_app.change_locklease":               (False,     False,   False,   True),
    "django_celery_beat.change_periodictask":     (False,     False,   False,   True),
    "auth.change_user":                           (False,     False,   False,   True),
    "guardian.add_userobjectpermission":          (False,     False,   False,   True),
    "changes_app.delete_changerequest":           (False,     False,   False,   False),
    "audit_app.change_auditentry":                (False,     False,   False,   False),
    # Acting on or deciding for a target system is an object permission, never a role's default.
    "changes_app.operate_targetsystem":           (False,     False,   False,   False),
    "changes_app.approve_targetsystem":           (False,     False,   False,   False),
}  # fmt: skip
ROLE_ORDER = (COMPLIANCE_OFFICER, ENGINEER, APPROVER, PLATFORM_ADMIN)


def test_the_data_migration_creates_the_four_roles_as_groups():
    Group.objects.all().delete()
    migration = importlib.import_module("changes_app.migrations.0003_create_role_groups")
    state = MigrationLoader(connection).project_state(("changes_app", "0003_create_role_groups"))

    with connection.schema_editor() as editor:
        migration.create_role_groups(state.apps, editor)

    assert sorted(Group.objects.values_list("name", flat=True)) == ["Approver", "Compliance officer", "Engineer", "Platform admin"]
    assert sorted(ROLES) == ["Approver", "Compliance officer", "Engineer", "Platform admin"]
    engineer = Group.objects.get(name="Engineer").permissions.values_list("content_type__app_label", "codename")
    assert {("changes_app", "add_changerequest"), ("changes_app", "view_run"), ("audit_app", "view_auditentry")} <= set(engineer)


@pytest.mark.parametrize("role", ROLE_ORDER)
def test_each_role_holds_exactly_its_model_permissions(role, targets):
    member = person(f"member-{role.split()[0].lower()}", role).user
    column = ROLE_ORDER.index(role)

    held = {permission: get_user_model().objects.get(pk=member.pk).has_perm(permission) for permission in ROLE_PERMISSIONS}

    assert held == {permission: row[column] for permission, row in ROLE_PERMISSIONS.items()}


def test_roles_ensure_leaves_an_edited_role_as_its_administrators_made_it():
    roles_ensure()
    engineer = Group.objects.get(name=ENGINEER)
    engineer.permissions.clear()

    created = roles_ensure()

    assert created == []
    assert engineer.permissions.count() == 0


# -- object permissions: one meaning everywhere ------------------------------------------------------


def test_a_global_permission_means_every_target_and_an_object_permission_that_target(targets):
    everywhere = person("everywhere")
    everywhere.user.user_permissions.add(*_permissions("operate_targetsystem"))
    journal_only = person("journal-only", operate=("journal",))
    group_member = person("group-member")
    group = Group.objects.create(name="journal operators")
    assign_perm("changes_app.operate_targetsystem", group, TargetSystem.objects.get(name="journal"))
    group_member.user.groups.add(group)
    nobody = person("nobody")
    root = person("root", superuser=True)

    names = {
        who.actor.name: sorted(target_systems_for(user=who.user, permission=OPERATE).values_list("name", flat=True))
        for who in (everywhere, journal_only, group_member, nobody, root)
    }

    assert names == {
        "everywhere": ["app-db", "ext-pg", "journal"],
        "journal-only": ["journal"],
        "group-member": ["journal"],
        "nobody": [],
        "root": ["app-db", "ext-pg", "journal"],
    }
    journal, app_db = TargetSystem.objects.get(name="journal"), TargetSystem.objects.get(name="app-db")
    assert sorted(users_with(permission=OPERATE, target=journal).values_list("username", flat=True)) == [
        "everywhere",
        "group-member",
        "journal-only",
        "root",
    ]
    assert sorted(users_with(permission=OPERATE, target=app_db).values_list("username", flat=True)) == ["everywhere", "root"]
    assert list(users_with(permission=APPROVE, target=app_db).values_list("username", flat=True)) == ["root"]


def _permissions(codename: str):
    from django.contrib.auth.models import Permission

    return Permission.objects.filter(codename=codename)


# -- policies ------------------------------------------------------------------------------------------


def test_policy_set_by_a_platform_admin_is_audited(targets, settings):
    admin = person("plat", PLATFORM_ADMIN)

    row = services.policy_set(target_name="app-db", environment="staging", required_approvals=2, actor=admin.actor, reason="two eyes")
    services.policy_set(target_name="app-db", environment="staging", required_approvals=1, actor=admin.actor, reason="one is enough")

    row.refresh_from_db()
    assert (row.required_approvals, row.updated_by) == (1, "plat")
    entries = AuditEntry.objects.filter(event="policy.changed").order_by("id")
    assert [(e.actor, e.details["target"], e.details["environment"], e.details["previous"], e.details["required_approvals"]) for e in entries] == [
        ("plat", "app-db", "staging", None, 2),
        ("plat", "app-db", "staging", 2, 1),
    ]


@pytest.mark.parametrize(
    ("environment", "required", "error"),
    [
        ("prod", 0, "protected environment: every action there needs at least 1 approval"),
        ("staging", -1, "must be a whole number, 0 or more"),
        ("", 1, "an environment is required"),
    ],
)
def test_policy_set_refuses_bad_values_and_changes_nothing(targets, environment, required, error):
    admin = person("plat", PLATFORM_ADMIN)
    before = snapshot()

    with pytest.raises(services.PolicyInvalid, match=error):
        services.policy_set(target_name="app-db", environment=environment, required_approvals=required, actor=admin.actor, reason="bad values")

    assert snapshot() == before


def test_the_database_refuses_a_second_policy_for_the_same_target_and_environment_and_a_negative_count(targets):
    policy("app-db", "staging", 1)
    target = TargetSystem.objects.get(name="app-db")

    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalPolicy.objects.create(target_system=target, environment="staging", required_approvals=3)
    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalPolicy.objects.create(target_system=target, environment="qa", required_approvals=-1)


def test_a_protected_environment_needs_one_approval_whatever_its_policy_row_says(targets, settings):
    policy("app-db", "prod", 0)  # saved before prod was protected, say
    policy("journal", "dev", 0)

    assert services.approvals_required(target_name="app-db", environment="prod") == 1
    assert services.approvals_required(target_name="ext-pg", environment="prod") == 1
    assert services.approvals_required(target_name="journal", environment="dev") == 0
    assert services.approvals_required(target_name="app-db", environment="dev") is None


# -- the permission matrix -----------------------------------------------------------------------------

#: Outcomes: "performed" (done now), "requested" (a request awaits approval), "approved",
#: "rejected", "cancelled", "allowed" (the permission check passed), "refused" (nothing changed).
#: In 'staging' the journal's policy requires 0 approvals and app-db's 1.
ACTIONS = ("undo-j", "fix-j", "skip-j", "reapply-j", "accept-j", "undo-a", "skip-a", "approve", "reject", "cancel", "policy", "lock", "run")
MATRIX = {
    #                    undo-j       fix-j        skip-j       reapply-j    accept-j     undo-a       skip-a       approve     reject      cancel     policy     lock       run
    "compliance":       ("refused",   "refused",   "refused",   "refused",   "refused",   "refused",   "refused",   "refused",  "refused",  "refused", "refused", "refused", "refused"),
    "engineer":         ("performed", "performed", "performed", "performed", "performed", "requested", "requested", "refused",  "refused",  "refused", "refused", "refused", "performed"),
    "engineer-journal": ("performed", "performed", "performed", "performed", "performed", "refused",   "refused",   "refused",  "refused",  "refused", "refused", "refused", "performed"),
    "approver":         ("refused",   "refused",   "refused",   "refused",   "refused",   "refused",   "refused",   "approved", "rejected", "refused", "refused", "refused", "refused"),
    "approver-journal": ("refused",   "refused",   "refused",   "refused",   "refused",   "refused",   "refused",   "refused",  "refused",  "refused", "refused", "refused", "refused"),
    "platform":         ("refused",   "refused",   "refused",   "refused",   "refused",   "refused",   "refused",   "refused",  "refused",  "refused", "allowed", "allowed", "refused"),
    "superuser":        ("performed", "performed", "performed", "performed", "performed", "requested", "requested", "approved", "rejected", "refused", "allowed", "allowed", "performed"),
    "no-role":          ("refused",   "refused",   "refused",   "refused",   "refused",   "refused",   "refused",   "refused",  "refused",  "refused", "refused", "refused", "refused"),
}  # fmt: skip
#: How each user of the matrix is made: roles, then object permissions.
USERS = {
    "compliance": dict(groups=(COMPLIANCE_OFFICER,)),
    "engineer": dict(groups=(ENGINEER,), operate=("journal", "app-db")),
    "engineer-journal": dict(groups=(ENGINEER,), operate=("journal",)),
    "approver": dict(groups=(APPROVER,), approve=("app-db", "journal")),
    "approver-journal": dict(groups=(APPROVER,), approve=("journal",)),
    "platform": dict(groups=(PLATFORM_ADMIN,)),
    "superuser": dict(superuser=True),
    "no-role": dict(),
}


def _matrix_person(username: str) -> Person:
    spec = dict(USERS[username])
    return person(username, *spec.pop("groups", ()), **spec)


class Scenario:
    """One change (or request) per action, each in its own stage, so that the actions never meet."""

    def __init__(self, make_pipeline, unique: str, settings):
        u = unique
        self.ids = {
            "undo-j": f"j-applied-{u}",
            "fix-j": f"j-failed-{u}",
            "skip-j": f"j-skipme-{u}",
            "reapply-j": f"j-held-{u}",
            "accept-j": f"j-drifted-{u}",
            "run": f"j-runme-{u}",
            "undo-a": f"a-applied-{u}",
            "skip-a": f"a-skipme-{u}",
            "approve": f"a-approveme-{u}",
            "reject": f"a-rejectme-{u}",
            "cancel": f"a-cancelme-{u}",
        }
        ids = self.ids
        stages = {
            "ja": {"0001_a.py": journal_change(ids["undo-j"], rollback="ok")},
            "jf": {"0001_a.py": journal_change(ids["fix-j"], fail="half way")},
            "jd": {"0001_a.py": journal_change(ids["accept-j"])},
            "aa": {"0001_a.yaml": sql_change(ids["undo-a"], f"CREATE TABLE gov_{u} (id integer)", f"DROP TABLE gov_{u}")},
        }
        settings.FLAMINGOCK_ENVIRONMENT = "staging"
        make_pipeline(stages)
        self.root = person("setup-root", superuser=True)
        assert run_pipeline(actor=self.root.actor).status == Run.Status.FAILED
        # Edited after apply; and new changes that are still pending.
        stages["jd"] = {"0001_a.py": journal_change(ids["accept-j"], apply_extra="pass  # edited")}
        stages["js"] = {"0001_a.py": journal_change(ids["skip-j"])}
        stages["jh"] = {"0001_a.py": journal_change(ids["reapply-j"])}
        stages["jr"] = {"0001_a.py": journal_change(ids["run"])}
        stages["as"] = {"0001_a.yaml": sql_change(ids["skip-a"], f"CREATE TABLE gov_s_{u} (id integer)")}
        for name in ("approve", "reject", "cancel"):
            stages[f"a-{name}"] = {"0001_a.yaml": sql_change(ids[name], f"CREATE TABLE gov_{name}_{u} (id integer)")}
        make_pipeline(stages)
        services.catalogue_sync()
        assert services.change_skip(change_id=ids["reapply-j"], actor=self.root.actor, reason="held", source=Run.Source.CLI).status == "SUCCEEDED"
        policy("journal", "staging", 0)
        policy("app-db", "staging", 1)
        self.requester = person("eve", ENGINEER, operate=("app-db",))
        self.requests = {
            name: services.request_create(kind=Kind.SKIP, change_id=ids[name], actor=self.requester.actor, reason=f"{name} it").pk
            for name in ("approve", "reject", "cancel")
        }


def _attempt(action: str, who: Person, scenario: Scenario) -> str:
    """Try one action as ``who`` through the services; returns its outcome."""
    ids, actor = scenario.ids, who.actor
    kinds = {
        "undo-j": Kind.UNDO,
        "fix-j": Kind.MARK_ROLLED_BACK,
        "skip-j": Kind.SKIP,
        "reapply-j": Kind.REAPPLY,
        "accept-j": Kind.ACCEPT_CHECKSUM,
        "undo-a": Kind.UNDO,
        "skip-a": Kind.SKIP,
    }
    try:
        if action in kinds:
            submitted = services.request_submit(kind=kinds[action], change_id=ids[action], actor=actor, reason="matrix", source=Run.Source.UI)
            if submitted.run is not None:
                assert submitted.run.status == Run.Status.SUCCEEDED, submitted.run.status_reason
                assert submitted.request.status == ChangeRequest.Status.EXECUTED
                return "performed"
            assert submitted.request.status == ChangeRequest.Status.PENDING
            return "requested"
        if action == "approve":
            request = services.request_approve(request_id=scenario.requests["approve"], actor=actor, inline=True)
            assert request.status == ChangeRequest.Status.EXECUTED, request.status_reason
            return "approved"
        if action == "reject":
            return {"REJECTED": "rejected"}[services.request_reject(request_id=scenario.requests["reject"], actor=actor).status]
        if action == "cancel":
            return {"CANCELLED": "cancelled"}[services.request_cancel(request_id=scenario.requests["cancel"], actor=actor).status]
        if action == "policy":
            services.policy_set(target_name="app-db", environment="staging", required_approvals=1, actor=actor, reason="matrix")
            return "allowed"
        if action == "lock":
            with pytest.raises(services.ActionRefused, match="the lock is not held"):
                services.lock_force_release(actor=actor, reason="matrix")
            return "allowed"
        if action == "run":
            run = services.run_start(actor=actor, source=Run.Source.UI)
            outcome = {row["change_id"]: row["result"] for row in run.results}[ids["run"]]
            return {"APPLIED": "performed", "NOT_PERMITTED": "refused"}[outcome]
    except PermissionRefused:
        return "refused"
    raise AssertionError(f"unknown action {action}")


@pytest.mark.parametrize("username", list(MATRIX))
def test_permission_matrix_of_the_services(username, make_pipeline, unique, journal, settings):
    scenario = Scenario(make_pipeline, unique, settings)
    who = _matrix_person(username)
    outcomes = {}
    for action in ACTIONS:
        before = snapshot()
        outcomes[action] = _attempt(action, who, scenario)
        if action == "run":
            # A run by someone who may not operate is recorded (BLOCKED), and applies nothing.
            assert outcomes[action] == "performed" or AuditEntry.objects.filter(change_id=scenario.ids["run"]).count() == 0
        elif outcomes[action] in ("refused", "allowed") and action != "policy":
            assert snapshot() == before, f"{username} {action}: a refused action changed something"

    assert outcomes == dict(zip(ACTIONS, MATRIX[username], strict=True))


#: The command line answers as the services do: the exit code, and what it says.
CLI_OUTCOMES = {"performed": 0, "requested": 4, "approved": 0, "rejected": 0, "cancelled": 0, "refused": 2, "allowed": 2}


def _cli_attempt(action: str, scenario: Scenario) -> tuple[str, object]:
    ids = scenario.ids
    commands = {
        "undo-j": ["undo", ids["undo-j"], "--reason", "matrix"],
        "fix-j": ["fix", ids["fix-j"], "--resolution", "rolled-back", "--reason", "matrix"],
        "skip-j": ["skip", ids["skip-j"], "--reason", "matrix"],
        "reapply-j": ["reapply", ids["reapply-j"], "--reason", "matrix"],
        "accept-j": ["accept-checksum", ids["accept-j"], "--reason", "matrix"],
        "undo-a": ["undo", ids["undo-a"], "--reason", "matrix"],
        "skip-a": ["skip", ids["skip-a"], "--reason", "matrix"],
        "approve": ["approve", str(scenario.requests["approve"]), "--comment", "ok"],
        "reject": ["reject", str(scenario.requests["reject"]), "--comment", "no"],
        "cancel": ["cancel", str(scenario.requests["cancel"])],
        "lock": ["lock", "release", "--reason", "matrix"],
        "run": ["run"],
    }
    result = cli(*commands[action], "--json")
    return action, result


@pytest.mark.parametrize("username", list(MATRIX))
def test_permission_matrix_of_the_command_line(username, make_pipeline, unique, journal, settings, monkeypatch):
    scenario = Scenario(make_pipeline, unique, settings)
    who = _matrix_person(username)
    monkeypatch.setenv("FLAMINGOCK_TOKEN", who.token)
    expected = dict(zip(ACTIONS, MATRIX[username], strict=True))
    expected.pop("policy")  # configured in the admin, not on the command line

    for action, outcome in expected.items():
        before = snapshot()
        _, result = _cli_attempt(action, scenario)
        data = result.json()
        if action == "run":
            by_change = {row["change_id"]: row["result"] for row in data["results"]}
            if username == "no-role":  # sees no target system: its run's results are hidden, and counted
                assert scenario.ids["run"] not in by_change and data["hidden_results"] >= 1, data
                continue
            assert by_change[scenario.ids["run"]] == {"performed": "APPLIED", "refused": "NOT_PERMITTED"}[outcome], (username, data)
            continue
        assert result.code == CLI_OUTCOMES[outcome], (username, action, outcome, result.out, result.err)
        if outcome == "refused":
            assert data["error"].startswith("refused:"), (username, action, data)
            assert snapshot() == before, f"{username} {action}: a refused command changed something"
        elif outcome == "allowed":
            assert data["error"] == "the lock is not held"
        elif outcome == "requested":
            assert data["status"] == "PENDING" and data["awaiting_approval"] is True and data["required_approvals"] == 1
            assert re.fullmatch(r"\d+", str(data["id"]))
        elif outcome in ("performed", "approved"):
            assert data["status"] == "SUCCEEDED" and data["request_id"], (username, action, data)
        else:
            assert data["status"] == outcome.upper()


# -- demo users --------------------------------------------------------------------------------------


def test_demo_setup_creates_one_user_per_role_with_object_permissions_on_the_example_targets(client):
    roles_ensure()  # the migration's groups, gone with the flush of an earlier transactional test
    out = io.StringIO()
    call_command("demo_setup", stdout=out)
    passwords = dict(re.findall(r"^\s+(\S+)\s+password: (\S+)", out.getvalue(), re.MULTILINE))

    assert set(passwords) == {"admin", "compliance", "engineer", "approver", "platform"} == {spec.username for spec in DEMO_USERS}
    users = {user.username: user for user in get_user_model().objects.filter(username__in=passwords)}
    assert {name: sorted(users[name].groups.values_list("name", flat=True)) for name in passwords} == {
        "admin": [],
        "compliance": ["Compliance officer"],
        "engineer": ["Engineer"],
        "approver": ["Approver"],
        "platform": ["Platform admin"],
    }
    app_db = TargetSystem.objects.get(name="app-db")
    assert {name: (users[name].has_perm(OPERATE, app_db), users[name].has_perm(APPROVE, app_db)) for name in passwords} == {
        "admin": (True, True),
        "compliance": (False, False),
        "engineer": (True, False),
        "approver": (False, True),
        "platform": (False, False),
    }
    for name, password in passwords.items():
        client.logout()
        response = client.post("/admin/login/?next=/admin/", {"username": name, "password": password})
        assert response.status_code == 302, name
    granted = AuditEntry.objects.filter(event="permission.granted", actor="service:demo_setup")
    assert {
        (e.details.get("user"), e.details.get("permission"), e.details.get("object")) for e in granted if e.details["kind"] == "object_permission"
    } == {
        ("engineer", "changes_app.operate_targetsystem", "app-db"),
        ("approver", "changes_app.approve_targetsystem", "app-db"),
    }
