"""Plain ``manage.py migrate`` in a protected environment (issue 21, part 4; docs/django-migrations.md,
"No way around it"): refused when its plan holds a governed migration, with the command to use; an
explicit, permitted override writes ``migrate.override`` and raises a finding; the product's own apps,
``--plan`` and test-database creation keep working."""

from __future__ import annotations

import os
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.migrations.recorder import MigrationRecorder

from audit_app.models import AuditEntry
from changes_app.governance.roles import ENGINEER
from changes_app.models import Finding
from tests.conftest import REPO, manage
from tests.support.governance import person
from tests.support.trails import table_exists

pytestmark = pytest.mark.django_db(transaction=True)


def _shop_rows() -> set[str]:
    return {name for app, name in MigrationRecorder.Migration.objects.values_list("app", "name") if app == "djgov_shop"}


@pytest.fixture
def production(shop, settings, monkeypatch):
    """A protected environment, outside Django's test environment (as an operator's shell is)."""
    settings.FLAMINGOCK_ENVIRONMENT = "prod"
    monkeypatch.delattr(mail, "outbox")
    return shop


def _nothing_happened():
    assert _shop_rows() == set()
    assert not table_exists("djgov_shop_product")
    assert not AuditEntry.objects.filter(event="migrate.override").exists()
    assert not Finding.objects.filter(kind=Finding.Kind.MIGRATE_OVERRIDE).exists()


def test_plain_migrate_of_a_governed_migration_is_refused_with_the_command_to_use(production):
    with pytest.raises(CommandError) as refused:
        call_command("migrate", "djgov_shop", verbosity=0)
    message = str(refused.value)
    assert "protected environment" in message and "django:djgov_shop.0001_initial" in message
    assert "flamingock run" in message and "--flamingock-override" in message
    _nothing_happened()


@pytest.mark.parametrize("environment", ["prod", "dev"])
def test_plain_migrate_of_every_app_leaves_the_governed_migrations_to_flamingock(shop, settings, monkeypatch, environment):
    """On a fresh database, ``migrate`` migrates the product's own apps and the ungoverned ones and
    nothing governed, in every environment; it says what is left and the command that runs it."""
    settings.FLAMINGOCK_ENVIRONMENT = environment
    monkeypatch.delattr(mail, "outbox")
    call_command("migrate", "sessions", "zero", verbosity=0)  # an ungoverned app with work to do
    assert not MigrationRecorder.Migration.objects.filter(app="sessions").exists()
    out = StringIO()
    call_command("migrate", verbosity=0, stdout=out)
    assert "Left to governance: 3 governed migrations (django:djgov_shop.0001_initial" in out.getvalue()
    assert "flamingock run" in out.getvalue()
    assert MigrationRecorder.Migration.objects.filter(app="sessions").exists(), "an ungoverned app was migrated"
    _nothing_happened()


def test_the_products_own_apps_plan_and_check_keep_working(production):
    call_command("migrate", "changes_app", verbosity=0)
    call_command("migrate", "auth", verbosity=0)
    out = StringIO()
    call_command("migrate", "djgov_shop", plan=True, stdout=out)
    assert "djgov_shop.0001_initial" in out.getvalue()
    _nothing_happened()


def test_test_database_creation_keeps_working(shop, settings):
    # Django's test environment (mail.outbox set) in a protected environment: plain migrate runs.
    settings.FLAMINGOCK_ENVIRONMENT = "prod"
    assert hasattr(mail, "outbox")
    call_command("migrate", "djgov_shop", "0001", verbosity=0)
    assert _shop_rows() == {"0001_initial"}
    assert not AuditEntry.objects.filter(event="migrate.override").exists()


def test_an_override_outside_a_protected_environment_is_audited_too(shop, settings, monkeypatch):
    """Where plain ``migrate APP`` would run anyway, an operator who says ``--flamingock-override``
    still leaves the entry and the finding: the flag is never silently dropped."""
    settings.FLAMINGOCK_ENVIRONMENT = "dev"
    monkeypatch.delattr(mail, "outbox")
    operator = person("operator", ENGINEER, operate=("default",))
    monkeypatch.setenv("FLAMINGOCK_TOKEN", operator.token)
    call_command("migrate", "djgov_shop", "0001", verbosity=0, flamingock_override="trying the seed locally")
    assert _shop_rows() == {"0001_initial"}
    entry = AuditEntry.objects.get(event="migrate.override")
    assert entry.reason == "trying the seed locally" and entry.details["apply"] == ["django:djgov_shop.0001_initial"]
    assert Finding.objects.filter(kind=Finding.Kind.MIGRATE_OVERRIDE, environment="dev").count() == 1


def test_an_override_is_audited_and_raises_a_finding(production, monkeypatch):
    operator = person("operator", ENGINEER, operate=("default",))
    monkeypatch.setenv("FLAMINGOCK_TOKEN", operator.token)
    err = StringIO()
    call_command("migrate", "djgov_shop", "0002", verbosity=0, flamingock_override="hotfix INC-42", stderr=err)
    assert _shop_rows() == {"0001_initial", "0002_seed"}
    entry = AuditEntry.objects.get(event="migrate.override")
    assert entry.actor == "operator" and entry.reason == "hotfix INC-42" and entry.target == "default"
    assert entry.details["apply"] == ["django:djgov_shop.0001_initial", "django:djgov_shop.0002_seed"]
    assert entry.details["alias"] == "default" and entry.details["unapply"] == []
    finding = Finding.objects.get(kind=Finding.Kind.MIGRATE_OVERRIDE)
    assert finding.status == Finding.Status.OPEN and finding.environment == "prod" and finding.target == "default"
    assert "operator" in finding.summary and finding.last_evidence["reason"] == "hotfix INC-42"
    assert "migrate.override recorded" in err.getvalue()

    # Unapplying by override is recorded the same way, and reopens nothing twice: one finding per database.
    # (The finding's notification went through the tests' locmem mail backend, which set mail.outbox again.)
    monkeypatch.delattr(mail, "outbox")
    call_command("migrate", "djgov_shop", "zero", verbosity=0, flamingock_override="rolling back INC-42")
    assert _shop_rows() == set()
    assert list(AuditEntry.objects.filter(event="migrate.override").order_by("seq").values_list("reason", flat=True)) == [
        "hotfix INC-42",
        "rolling back INC-42",
    ]
    assert AuditEntry.objects.filter(event="migrate.override").order_by("seq").last().details["unapply"] == [
        "django:djgov_shop.0002_seed",
        "django:djgov_shop.0001_initial",
    ]
    assert Finding.objects.filter(kind=Finding.Kind.MIGRATE_OVERRIDE).count() == 1


def test_an_override_needs_an_identity_a_permission_and_a_reason(production, monkeypatch):
    with pytest.raises(CommandError, match="FLAMINGOCK_TOKEN"):
        call_command("migrate", "djgov_shop", verbosity=0, flamingock_override="no token")
    outsider = person("outsider", ENGINEER, operate=("journal",))
    monkeypatch.setenv("FLAMINGOCK_TOKEN", outsider.token)
    with pytest.raises(CommandError, match="may not operate"):
        call_command("migrate", "djgov_shop", verbosity=0, flamingock_override="not mine")
    operator = person("operator", ENGINEER, operate=("default",))
    monkeypatch.setenv("FLAMINGOCK_TOKEN", operator.token)
    with pytest.raises(CommandError, match="refused"):
        call_command("migrate", "djgov_shop", verbosity=0, flamingock_override="   ")
    _nothing_happened()


@pytest.mark.slow
def test_a_real_manage_py_migrate_in_production_is_refused(shop, subprocess_env):
    """A child ``manage.py migrate`` on this test's database, as an operator would type it: no test
    environment there, whatever the database is called."""
    env = subprocess_env(
        DJANGO_SETTINGS_MODULE="djgov_settings",
        PYTHONPATH=os.pathsep.join([str(shop.parent), str(REPO)]),
        FLAMINGOCK_ENVIRONMENT="prod",
    )
    refused = manage("migrate", "djgov_shop", "--skip-checks", env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "protected environment" in refused.stderr and "flamingock run" in refused.stderr
    _nothing_happened()
    # The product's own apps still migrate (nothing left to do: they are migrated).
    own = manage("migrate", "changes_app", "--skip-checks", env=env)
    assert own.returncode == 0, own.stdout + own.stderr
