"""Changes to group membership, permissions (global and per object) and superuser status are audited
(docs/semantics.md §9, §11): ``permission.granted`` and ``permission.revoked``, with who made the change."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.http import HttpResponse
from django.test import RequestFactory
from guardian.shortcuts import assign_perm, remove_perm

from audit_app.models import AuditEntry
from audit_app.services import Actor
from changes_app.governance.permission_audit import ActingUserMiddleware, acting_as
from changes_app.models import TargetSystem
from changes_app.services.catalogue import target_systems_sync

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


def trail(since: int) -> list[tuple]:
    """(event, actor, details without empty values) of the permission entries after ``since``."""
    entries = AuditEntry.objects.filter(id__gt=since, event__startswith="permission.").order_by("id")
    return [(e.event, e.actor, {k: v for k, v in e.details.items() if v not in ("", None)}) for e in entries]


def head() -> int:
    return AuditEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0


@pytest.fixture
def operate():
    return Permission.objects.get(codename="operate_targetsystem")


def test_group_membership_is_audited_from_either_side_and_only_for_real_changes():
    ann = User.objects.create_user("ann")
    ops, auditors = Group.objects.create(name="ops"), Group.objects.create(name="auditors")
    since = head()

    ann.groups.add(ops, auditors)
    ann.groups.add(ops)  # already a member: nothing happens, nothing is recorded
    ops.user_set.remove(ann)
    ann.groups.remove(ops)  # no longer a member: nothing to revoke
    auditors.user_set.clear()

    assert trail(since) == [
        ("permission.granted", "system", {"kind": "group_membership", "user": "ann", "group": "ops"}),
        ("permission.granted", "system", {"kind": "group_membership", "user": "ann", "group": "auditors"}),
        ("permission.revoked", "system", {"kind": "group_membership", "user": "ann", "group": "ops"}),
        ("permission.revoked", "system", {"kind": "group_membership", "user": "ann", "group": "auditors"}),
    ]


def test_global_permissions_of_users_and_groups_are_audited(operate):
    ann = User.objects.create_user("ann")
    ops = Group.objects.create(name="ops")
    since = head()

    with acting_as(Actor(name="plat", user_id=None, via="ui")):
        ann.user_permissions.add(operate)
        ops.permissions.set([operate])
        ann.user_permissions.clear()
        operate.group_set.remove(ops)

    permission = "changes_app.operate_targetsystem"
    assert trail(since) == [
        ("permission.granted", "plat", {"kind": "permission", "user": "ann", "permission": permission}),
        ("permission.granted", "plat", {"kind": "group_permission", "group": "ops", "permission": permission}),
        ("permission.revoked", "plat", {"kind": "permission", "user": "ann", "permission": permission}),
        ("permission.revoked", "plat", {"kind": "group_permission", "group": "ops", "permission": permission}),
    ]


def test_object_permissions_of_users_and_groups_are_audited(targets):
    target_systems_sync()
    journal = TargetSystem.objects.get(name="journal")
    ann = User.objects.create_user("ann")
    ops = Group.objects.create(name="ops")
    since = head()

    assign_perm("changes_app.operate_targetsystem", ann, journal)
    assign_perm("changes_app.operate_targetsystem", ann, journal)  # already held
    assign_perm("changes_app.approve_targetsystem", ops, journal)
    remove_perm("changes_app.operate_targetsystem", ann, journal)
    remove_perm("changes_app.approve_targetsystem", ops, journal)

    on_journal = {"kind": "object_permission", "object_type": "changes_app.targetsystem", "object_pk": str(journal.pk), "object": "journal"}
    assert trail(since) == [
        ("permission.granted", "system", {**on_journal, "user": "ann", "permission": "changes_app.operate_targetsystem"}),
        ("permission.granted", "system", {**on_journal, "group": "ops", "permission": "changes_app.approve_targetsystem"}),
        ("permission.revoked", "system", {**on_journal, "user": "ann", "permission": "changes_app.operate_targetsystem"}),
        ("permission.revoked", "system", {**on_journal, "group": "ops", "permission": "changes_app.approve_targetsystem"}),
    ]


def test_deleting_a_user_revokes_and_audits_their_object_permissions(targets):
    target_systems_sync()
    ann = User.objects.create_user("ann")
    assign_perm("changes_app.operate_targetsystem", ann, TargetSystem.objects.get(name="app-db"))
    since = head()

    ann.delete()

    assert [(event, details["user"], details["permission"]) for event, _, details in trail(since)] == [
        ("permission.revoked", "ann", "changes_app.operate_targetsystem")
    ]


def test_superuser_status_is_audited_when_given_taken_and_at_creation():
    since = head()

    root = User.objects.create_superuser("root", password="x")
    ann = User.objects.create_user("ann")
    ann.is_superuser = True
    ann.save()
    ann.first_name = "Ann"
    ann.save()  # no change of status
    ann.save(update_fields=["last_login"])
    ann.is_superuser = False
    ann.save(update_fields=["is_superuser"])
    User.objects.filter(pk=root.pk).update(is_superuser=True)  # no save, no signal; and no change either

    assert trail(since) == [
        ("permission.granted", "system", {"kind": "superuser", "user": "root"}),
        ("permission.granted", "system", {"kind": "superuser", "user": "ann"}),
        ("permission.revoked", "system", {"kind": "superuser", "user": "ann"}),
    ]


def test_the_admin_user_is_recorded_as_the_actor_of_the_changes_a_request_makes(operate):
    admin = User.objects.create_superuser("plat-admin", password="x")
    ann = User.objects.create_user("ann")
    request = RequestFactory().post("/admin/")
    request.user = admin
    since = head()

    def view(request):
        ann.user_permissions.add(operate)
        return HttpResponse("ok")

    ActingUserMiddleware(view)(request)
    ann.user_permissions.remove(operate)  # after the request: the system again

    entries = AuditEntry.objects.filter(id__gt=since).order_by("id")
    assert [(e.event, e.actor, e.actor_user_id) for e in entries] == [
        ("permission.granted", "plat-admin", admin.pk),
        ("permission.revoked", "system", None),
    ]


def test_a_group_created_in_the_admin_with_permissions_is_audited_as_the_logged_in_user(client, operate):
    admin = User.objects.create_superuser("plat-admin", password="x")
    client.force_login(admin)
    since = head()

    response = client.post("/admin/auth/group/add/", {"name": "journal operators", "permissions": [operate.pk]})

    assert response.status_code == 302, response.content[:500]
    assert trail(since) == [
        (
            "permission.granted",
            "plat-admin",
            {"kind": "group_permission", "group": "journal operators", "permission": "changes_app.operate_targetsystem"},
        )
    ]
