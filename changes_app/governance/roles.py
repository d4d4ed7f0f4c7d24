"""The four roles of docs/semantics.md §9 as Django groups, and the model permissions each starts with.

The groups are created by a data migration and are then the administrators' to edit: nothing here
runs again on their rows. What a role may do to a given target system (operate, approve) is an
object permission (django-guardian) or, for every target system, the same permission held globally.
"""

from __future__ import annotations

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS

COMPLIANCE_OFFICER = "Compliance officer"
ENGINEER = "Engineer"
APPROVER = "Approver"
PLATFORM_ADMIN = "Platform admin"

#: What the engineers and approvers see: changes, runs, requests, policies, the lock and the trail.
_SEES_WORK = (
    "changes_app.view_targetsystem",
    "changes_app.view_changerecord",
    "changes_app.view_run",
    "changes_app.view_locklease",
    "changes_app.view_approvalpolicy",
    "changes_app.view_changerequest",
    "changes_app.view_approval",
    "changes_app.view_requestcomment",
    "audit_app.view_*",
)
#: Everything, read-only ("app.view_*" is every view permission of the app).
_SEES_EVERYTHING = (
    "changes_app.view_*",
    "audit_app.view_*",
    "django_celery_beat.view_*",
    "guardian.view_*",
    "auth.view_user",
    "auth.view_group",
    "auth.view_permission",
)

#: role -> the model permissions its group is created with. None holds ``changes_app.break_glass``:
#: it is given to named on-call people, and a compliance officer is refused it even when granted
#: (docs/break-glass.md).
ROLES: dict[str, tuple[str, ...]] = {
    # Verifying the chain now (issue 18) acts on nothing but the trail's own evidence.
    # Evidence packs (issue 23) hold the whole period's trail: their own permission, this role's.
    COMPLIANCE_OFFICER: (*_SEES_EVERYTHING, "audit_app.verify_chain", "changes_app.generate_evidence"),
    # Acting on a target system needs its ``operate`` object permission besides these.
    ENGINEER: (*_SEES_WORK, "changes_app.add_run", "changes_app.add_changerequest", "changes_app.add_requestcomment"),
    # Deciding needs the target system's ``approve`` object permission besides these.
    APPROVER: (*_SEES_WORK, "changes_app.add_approval", "changes_app.add_requestcomment"),
    PLATFORM_ADMIN: (
        *_SEES_EVERYTHING,
        "changes_app.change_targetsystem",
        "changes_app.add_approvalpolicy",
        "changes_app.change_approvalpolicy",
        "changes_app.delete_approvalpolicy",
        "changes_app.change_locklease",
        "changes_app.change_run",
        "audit_app.add_quarantinedentry",
        "audit_app.verify_chain",
        "django_celery_beat.*",
        "guardian.*",
        "auth.add_user",
        "auth.change_user",
        "auth.add_group",
        "auth.change_group",
    ),
}


def _permissions(Permission, patterns: tuple[str, ...], using: str) -> list:
    found = []
    for pattern in patterns:
        app_label, codename = pattern.split(".", 1)
        rows = Permission.objects.using(using).filter(content_type__app_label=app_label)
        if codename.endswith("*"):
            rows = rows.filter(codename__startswith=codename[:-1])
        else:
            rows = rows.filter(codename=codename)
        found += list(rows)
    return found


def roles_ensure(*, apps=global_apps, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Create the missing role groups with their permissions; returns the names created.

    An existing group is left as its administrators made it. The memberships are written without
    ``m2m_changed``: a role's defaults are the migration's, not a person's grant.
    """
    from django.contrib.auth.management import create_permissions

    # The permissions are otherwise created after the last migration (post_migrate).
    for label in {pattern.split(".", 1)[0] for patterns in ROLES.values() for pattern in patterns}:
        try:
            app_config = apps.get_app_config(label)
        except LookupError:
            continue
        had_models = getattr(app_config, "models_module", None)
        app_config.models_module = had_models or True
        try:
            create_permissions(app_config, apps=apps, verbosity=0, using=using)
        finally:
            app_config.models_module = had_models
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    created = []
    for name, patterns in ROLES.items():
        group, made = Group.objects.using(using).get_or_create(name=name)
        if not made:
            continue
        through = Group.permissions.through
        rows = {permission.pk: through(group_id=group.pk, permission_id=permission.pk) for permission in _permissions(Permission, patterns, using)}
        through.objects.using(using).bulk_create(rows.values(), ignore_conflicts=True)
        created.append(name)
    return created
