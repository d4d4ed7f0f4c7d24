"""``manage.py migrate`` with no way around governance (docs/django-migrations.md, "No way around it").

In a protected environment, a plan that applies or unapplies a governed Django migration is refused
with the command to use instead. ``--flamingock-override REASON`` forces it: ``migrate.override`` is
written to the trail and a finding raised before Django migrates. A plain ``migrate`` of every app
migrates the apps that are not governed and leaves the governed migrations to ``flamingock run``, in
every environment. Everything else is Django's own
``migrate``: the product's own apps, an unprotected environment, ``--plan`` and ``--check`` (which
change nothing), and the creation of test databases.
"""

from __future__ import annotations

from django.core.management.base import CommandError
from django.core.management.commands import migrate as django_migrate
from django.core.management.commands.migrate import Command as DjangoMigrateCommand

from changes_app.drift.checks import migrate_override_found
from changes_app.errors import FlamingockError
from changes_app.governance.identity import IdentityError, cli_actor
from changes_app.governance.permissions import PermissionRefused, target_operate_check
from changes_app.pipeline.rules import adoption_target
from changes_app.services.migrate_guard import migrate_guard, test_run, ungoverned_executor, ungoverned_plan


class Command(DjangoMigrateCommand):
    help = DjangoMigrateCommand.help + " Governed migrations go through `flamingock run` in a protected environment."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--flamingock-override",
            metavar="REASON",
            dest="flamingock_override",
            help="force a plain migrate over governed migrations in a protected environment (audited as migrate.override, raises a finding)",
        )

    def handle(self, *args, **options):
        override = options.pop("flamingock_override", None)
        alias = options["database"]
        if options.get("plan") or options.get("check_unapplied") or test_run(alias):
            return super().handle(*args, **options)
        if not options.get("app_label") and override is None:
            whole = migrate_guard(alias=alias)
            if whole is not None and whole.governed:
                return self.ungoverned_handle(whole, *args, **options)
        guard = migrate_guard(alias=alias, app_label=options.get("app_label"), migration_name=options.get("migration_name"))
        # An override is audited wherever it applies governed migrations, protected environment or not.
        if guard is None or not guard.governed or (not guard.refused and override is None):
            return super().handle(*args, **options)
        listed = ", ".join(guard.governed[:10]) + (f" and {len(guard.governed) - 10} more" if len(guard.governed) > 10 else "")
        if override is None:
            raise CommandError(
                f"refused: {guard.environment} is a protected environment and this migrate would "
                f"{'apply' if guard.forwards else 'unapply'} governed migrations ({listed}).\n"
                f"Use instead: python manage.py flamingock plan, then python manage.py flamingock run "
                f"(to unapply: python manage.py flamingock undo CHANGE_ID --reason ...); "
                f"ungoverned apps still migrate by name: python manage.py migrate APP_LABEL.\n"
                f"To force it anyway (audited, raises a finding): python manage.py migrate ... --flamingock-override REASON"
            )
        try:
            actor = cli_actor()
            target = adoption_target(alias)
            target_operate_check(actor, target)
            migrate_override_found(actor=actor, alias=alias, target=target, forwards=guard.forwards, backwards=guard.backwards, reason=override)
        except (FlamingockError, IdentityError, PermissionRefused) as refused:
            # Nothing was migrated: no token in the protected environment, no permission, no reason.
            raise CommandError(f"refused: {refused}") from refused
        self.stderr.write(f"migrate.override recorded for {alias}: {listed}")
        return super().handle(*args, **options)

    def ungoverned_handle(self, whole, *args, **options):
        """A plain ``migrate`` of every app, with governed migrations pending: the apps that are not
        governed are migrated in one plan by Django's own ``migrate`` (``pre_migrate`` and
        ``post_migrate`` sent once), in every environment; the governed migrations are left to
        ``flamingock run``, which plans, approves, locks and audits them. An app whose plan pulls
        in a governed migration is left too."""
        # One plan of every ungoverned app, as ``migrate`` runs it (one pre_migrate, one
        # post_migrate), not one ``migrate APP`` per app. Django's command builds its executor by
        # this module-level name and offers no other hook; a management command runs alone.
        plan = ungoverned_plan(alias=options["database"])
        held = plan.held
        previous = django_migrate.MigrationExecutor
        django_migrate.MigrationExecutor = ungoverned_executor(plan)
        try:
            super().handle(*args, **{**options, "app_label": None, "migration_name": None})
        finally:
            django_migrate.MigrationExecutor = previous
        count = len(whole.forwards)
        self.stdout.write(
            f"Left to governance: {count} governed migration{'s' if count != 1 else ''} "
            f"({', '.join(whole.forwards[:5])}{' ...' if count > 5 else ''})"
            + (f"; apps that depend on them, not migrated: {', '.join(held)}" if held else "")
            + ".\nRun them with: python manage.py flamingock plan, then python manage.py flamingock run"
        )
