"""Review leftovers of issue 21 (docs/django-migrations.md): what approvers see is rendered as
``sqlmigrate`` prints it from one graph per rendering; a plain ``migrate`` that leaves governed
migrations sends ``pre_migrate`` and ``post_migrate`` once, as ``migrate`` does; an adoption with
nothing to adopt is refused; only Django's own in-memory SQLite names count as a test database."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.db.models.signals import post_migrate, pre_migrate

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.errors import ActionRefused, FlamingockError
from changes_app.models import ChangeRequest, DjangoAdoption, Run, TargetSystem
from changes_app.pipeline.django_migrations import adoption_required, governed_migrations
from changes_app.services import rendering
from changes_app.services.migrate_guard import test_run as is_test_database
from tests.changes_app.django_migrations.aliases import alias_forget, alias_register
from tests.support.governance import snapshot
from tests.support.trails import cli, local_operator, run_pipeline

SHOP = [f"django:djm_shop.{name}" for name in ("0001_initial", "0002_item_price", "0003_item_sku", "0004_item_stock")]
NOTES = [f"django:djm_notes.{name}" for name in ("0001_initial", "0002_backfill", "0003_nonatomic")]


@pytest.fixture
def graphs_built(monkeypatch):
    """The aliases of every migration graph built from here on (None: a graph without a database)."""
    built: list[str | None] = []
    build_graph = MigrationLoader.build_graph

    def counted(self):
        built.append(self.connection.alias if self.connection is not None else None)
        return build_graph(self)

    monkeypatch.setattr(MigrationLoader, "build_graph", counted)
    return built


# -- what approvers see ----------------------------------------------------------------------------


def _sqlmigrate(change_id: str, *, backwards: bool = False) -> str:
    app_label, name = change_id.removeprefix("django:").split(".", 1)
    out = StringIO()
    call_command("sqlmigrate", app_label, name, database="default", backwards=backwards, stdout=out, no_color=True)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_the_rendered_sql_is_what_sqlmigrate_prints(django_apps):
    for change_id, backwards in ((SHOP[0], False), (SHOP[3], True), (NOTES[2], False), (SHOP[1], False)):
        rendered = services.migration_render(change_id=change_id, alias="default", backwards=backwards)
        assert rendered["error"] == ""
        assert rendered["sql"] == _sqlmigrate(change_id, backwards=backwards), change_id
    irreversible = services.migration_render(change_id=NOTES[1], alias="default", backwards=True)
    assert "sqlmigrate: " in irreversible["error"] and irreversible["run_python"][0]["code"]["name"].endswith("0002_backfill.backfill")
    assert (
        services.migration_render(change_id="django:djm_shop.0099_gone", alias="default")["error"] == "django:djm_shop.0099_gone is not in the code"
    )


@pytest.mark.django_db(transaction=True)
def test_a_request_and_a_plan_are_rendered_from_one_graph_not_one_per_migration(django_apps, graphs_built):
    governed_migrations("default")  # the graph as on disk, built once per process: not the renderer's
    graphs_built.clear()

    rendered = rendering.plan_render()

    assert [m["change_id"] for m in rendered] == [m.change_id for m in governed_migrations("default")]
    assert len(rendered) == 7 and all(m["error"] == "" or m["change_id"] == NOTES[1] for m in rendered)
    assert graphs_built == ["default"]

    services.target_systems_sync()
    request = ChangeRequest(kind=ChangeRequest.Kind.APPLY, change_id=SHOP[2], target_system=TargetSystem.objects.get(name="default"))
    graphs_built.clear()
    [shown] = rendering.request_render(request)["migrations"]
    assert shown["change_id"] == SHOP[2] and "sku" in shown["sql"]
    assert graphs_built == ["default"]


# -- a plain migrate sends its signals once --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_plain_migrate_that_leaves_governed_migrations_sends_pre_and_post_migrate_once(django_apps, settings, monkeypatch):
    settings.FLAMINGOCK_ENVIRONMENT = "dev"
    monkeypatch.delattr(mail, "outbox")  # an operator's shell, not the test runner
    call_command("migrate", "sessions", "zero", verbosity=0)
    call_command("migrate", "admin", "zero", verbosity=0)  # two ungoverned apps with work to do
    sent: dict[str, list[str]] = {"pre": [], "post": []}

    def pre(sender, **kwargs):
        sent["pre"].append(sender.label)

    def post(sender, **kwargs):
        sent["post"].append(sender.label)

    pre_migrate.connect(pre, dispatch_uid="h8-pre", weak=False)
    post_migrate.connect(post, dispatch_uid="h8-post", weak=False)
    try:
        out = StringIO()
        call_command("migrate", verbosity=0, stdout=out)
    finally:
        pre_migrate.disconnect(dispatch_uid="h8-pre")
        post_migrate.disconnect(dispatch_uid="h8-post")

    assert sent["post"].count("sessions") == 1 and sent["post"].count("admin") == 1, sent["post"]
    assert sent["pre"].count("sessions") == 1, sent["pre"]
    assert len(sent["post"]) == len(set(sent["post"]))  # each app config once
    applied = {app for app, _ in MigrationRecorder(connections["default"]).applied_migrations()}
    assert {"sessions", "admin"} <= applied and not applied & {"djm_shop", "djm_notes"}
    assert "Left to governance: 7 governed migrations" in out.getvalue()


# -- adoption with nothing to adopt ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_adoption_with_nothing_to_adopt_is_refused_and_writes_nothing(django_apps):
    assert run_pipeline().status == Run.Status.SUCCEEDED  # every recorder row written by governance
    assert not adoption_required("default")
    before = snapshot()

    with pytest.raises(ActionRefused, match="has nothing to adopt: the ledger already holds each of its 7 recorder row"):
        services.django_adopt(alias="default", actor=local_operator(), reason="take it over", source=Run.Source.CLI)
    refused = cli("adopt", "django", "--reason", "take it over")
    assert refused.code == 2 and "nothing to adopt" in refused.err
    with pytest.raises(FlamingockError, match="nothing to adopt"):
        services.request_create(kind=ChangeRequest.Kind.ADOPT, change_id="django:default", actor=local_operator(), reason="take it over")

    assert snapshot() == before
    assert not DjangoAdoption.objects.exists()
    assert not AuditEntry.objects.filter(event="change.adopted").exists()


@pytest.mark.django_db(transaction=True)
def test_rows_the_ledger_does_not_hold_as_applied_are_still_adopted(django_apps):
    assert run_pipeline().status == Run.Status.SUCCEEDED
    # A row the ledger never applied (here: undone by governance, then recorded again by hand).
    services.change_undo(change_id=SHOP[3], actor=local_operator(), reason="stock is wrong", source=Run.Source.CLI)
    MigrationRecorder(connections["default"]).record_applied("djm_shop", "0004_item_stock")

    submission = services.django_adopt(alias="default", actor=local_operator(), reason="recorded by hand", source=Run.Source.CLI)

    assert submission.run.status == Run.Status.SUCCEEDED, submission.run.status_reason
    assert [m["change_id"] for m in DjangoAdoption.objects.get().migrations] == [SHOP[3]]


# -- a test database's name ------------------------------------------------------------------------


@pytest.fixture
def probe():
    """An alias whose database name a test chooses; never connected."""

    def named(name: str, engine: str = "django.db.backends.sqlite3") -> str:
        alias_forget("h8_probe")
        alias_register("h8_probe", {"ENGINE": engine, "NAME": name, "TEST": {"NAME": None}})
        return "h8_probe"

    yield named
    alias_forget("h8_probe")


def test_only_djangos_in_memory_sqlite_names_count_as_a_test_database(probe, monkeypatch):
    monkeypatch.setattr(mail, "outbox", [], raising=False)  # Django's test environment
    assert is_test_database(probe(":memory:"))
    assert is_test_database(probe("file:memorydb_default?mode=memory&cache=shared"))
    # Real databases whose names merely contain "memory".
    assert not is_test_database(probe("/srv/app/memory_bank.sqlite3"))
    assert not is_test_database(probe("memorydb_prod.sqlite3"))
    assert not is_test_database(probe("memory", engine="django.db.backends.postgresql"))
    assert not is_test_database(probe("warehouse_memory", engine="django.db.backends.postgresql"))
    # A test name still counts; outside the test environment nothing does.
    assert is_test_database(probe("test_shop", engine="django.db.backends.postgresql"))
    monkeypatch.delattr(mail, "outbox")
    assert not is_test_database(probe(":memory:"))
