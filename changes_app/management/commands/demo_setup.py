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

from changes_app.models import ChangeRecord, TargetSystem
from changes_app.services import catalogue_sync


@dataclass(frozen=True)
class DemoUser:
    username: str
    #: What the user is for, printed beside the password.
    role: str
    superuser: bool = False
    #: Django groups (roles) the user belongs to; each must exist (the roles' data migration).
    groups: tuple[str, ...] = ()


#: Every demo user, in the order printed. One per role belongs here once the roles exist.
DEMO_USERS: tuple[DemoUser, ...] = (DemoUser(username="admin", role="administrator: every permission", superuser=True),)


def demo_user_ensure(*, spec: DemoUser) -> str:
    """Create or update the user of ``spec`` with a new random password; returns the password."""
    password = secrets.token_urlsafe(12)
    groups = list(Group.objects.filter(name__in=spec.groups))
    missing = sorted(set(spec.groups) - {group.name for group in groups})
    if missing:
        raise CommandError(f"demo user {spec.username!r}: no group {', '.join(missing)} (run migrate first)")
    with transaction.atomic():
        user, _ = get_user_model().objects.get_or_create(username=spec.username)
        user.is_active = True
        user.is_staff = True
        user.is_superuser = spec.superuser
        user.set_password(password)
        user.save()
        user.groups.set(groups)
    return password


class Command(BaseCommand):
    help = "Sync the catalogue and (re)create the demo users with new passwords. Safe to run again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="where the web server listens (default %(default)s)")

    def handle(self, *args, **options):
        catalogue_sync()
        targets = TargetSystem.objects.filter(retired_at__isnull=True).count()
        changes = ChangeRecord.objects.filter(removed_at__isnull=True).count()
        self.stdout.write(f"Catalogue synced: {targets} target system(s), {changes} change(s).")
        self.stdout.write("Demo users (new passwords each time demo_setup runs):")
        width = max(len(spec.username) for spec in DEMO_USERS)
        for spec in DEMO_USERS:
            password = demo_user_ensure(spec=spec)
            self.stdout.write(f"  {spec.username:<{width}}  password: {password}  ({spec.role})")
        self.stdout.write(f"Log in at {options['base_url'].rstrip('/')}/admin/")
