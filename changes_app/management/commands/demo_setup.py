"""``python manage.py demo_setup``: make a migrated instance ready to try, as often as you like.

It syncs the catalogue (target systems and change definitions) and gives every demo user a new,
randomly generated password, printed once. It migrates nothing: ``bin/run`` runs ``migrate`` first.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from guardian.shortcuts import assign_perm

from audit_app.services import Actor
from changes_app.governance.identity import os_user
from changes_app.governance.permission_audit import acting_as
from changes_app.governance.roles import APPROVER, COMPLIANCE_OFFICER, ENGINEER, PLATFORM_ADMIN
from changes_app.models import ChangeRecord, TargetSystem
from changes_app.services.catalogue import catalogue_sync


@dataclass(frozen=True)
class DemoUser:
    username: str
    #: What the user is for, printed beside the password.
    role: str
    superuser: bool = False
    #: Django groups (roles) the user belongs to; each must exist (the roles' data migration).
    groups: tuple[str, ...] = ()
    #: (permission codename, target system name): object permissions on the example targets.
    object_permissions: tuple[tuple[str, str], ...] = ()


#: Every demo user, in the order printed: the administrator, then one per role.
DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser(username="admin", role="administrator: every permission", superuser=True),
    DemoUser(username="compliance", role="compliance officer: sees everything, acts on nothing", groups=(COMPLIANCE_OFFICER,)),
    DemoUser(
        username="engineer",
        role="engineer: runs, undoes and fixes changes on app-db",
        groups=(ENGINEER,),
        object_permissions=(("operate_targetsystem", "app-db"),),
    ),
    DemoUser(
        username="approver",
        role="approver: approves or rejects requests on app-db",
        groups=(APPROVER,),
        object_permissions=(("approve_targetsystem", "app-db"),),
    ),
    DemoUser(username="platform", role="platform admin: target systems, policies, schedules, permissions, the lock", groups=(PLATFORM_ADMIN,)),
)


def demo_user_ensure(*, spec: DemoUser) -> str:
    """Create or update the user of ``spec`` with a new random password; returns the password."""
    password = secrets.token_urlsafe(12)
    groups = list(Group.objects.filter(name__in=spec.groups))
    missing = sorted(set(spec.groups) - {group.name for group in groups})
    if missing:
        raise CommandError(f"demo user {spec.username!r}: no group {', '.join(missing)} (run migrate first)")
    targets = {target.name: target for target in TargetSystem.objects.filter(name__in=[name for _, name in spec.object_permissions])}
    missing = sorted({name for _, name in spec.object_permissions} - set(targets))
    if missing:
        raise CommandError(f"demo user {spec.username!r}: no target system {', '.join(missing)}")
    with transaction.atomic():
        user, _ = get_user_model().objects.get_or_create(username=spec.username)
        user.is_active = True
        user.is_staff = True
        user.is_superuser = spec.superuser
        # Notifications go to the people who can act; the demo prints them (console e-mail).
        user.email = user.email or f"{spec.username}@example.com"
        user.set_password(password)
        user.save()
        user.groups.set(groups)
        for codename, target in spec.object_permissions:
            assign_perm(f"changes_app.{codename}", user, targets[target])
    return password


class Command(BaseCommand):
    help = "Sync the catalogue and (re)create the demo users with new passwords. Safe to run again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="where the web server listens (default %(default)s)")

    def handle(self, *args, **options):
        # Group memberships and permissions given here are audited as this command's.
        with acting_as(Actor(name="service:demo_setup", via="cli", os_user=os_user())):
            self.setup(options)

    def setup(self, options) -> None:
        catalogue_sync()
        targets = TargetSystem.objects.filter(retired_at__isnull=True).count()
        changes = ChangeRecord.objects.filter(removed_at__isnull=True).count()
        self.stdout.write(f"Catalogue synced: {targets} target system(s), {changes} change(s).")
        self.stdout.write("Demo users (new passwords each time demo_setup runs):")
        for spec in DEMO_USERS:
            password = demo_user_ensure(spec=spec)
            self.stdout.write(f"  {spec.username}  password: {password}  ({spec.role})")
        self.stdout.write(f"Log in at {options['base_url'].rstrip('/')}/admin/")
