"""The engine end to end on each strategy: the shape every detailed test builds on."""

import pytest

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.governance.identity import cli_actor
from changes_app.models import Run
from tests.conftest import manage

pytestmark = pytest.mark.django_db(transaction=True)


def test_pipeline_of_three_strategies_applies_each_change_once(make_pipeline, unique, journal, external_pg):
    make_pipeline(
        {
            "main": {
                "0001_shared.yaml": f"""
                    id: shared-{unique}
                    author: tests
                    target: app-db
                    template: sql
                    apply: CREATE TABLE t_{unique} (id integer PRIMARY KEY)
                    rollback: DROP TABLE t_{unique}
                """,
                "0002_marker.py": f"""
                    from changes_app.definitions import Change

                    class Marker(Change):
                        id = "marker-{unique}"
                        author = "tests"
                        target = "ext-pg"

                        def apply(self, cursor):
                            cursor.execute("CREATE TABLE m_{unique} (id integer)")
                """,
                "0003_journal.py": f"""
                    from changes_app.definitions import Change

                    class Note(Change):
                        id = "journal-{unique}"
                        author = "tests"
                        target = "journal"

                        def apply(self, journal, context):
                            journal.write(change=context.change_id, run=str(context.run_id))
                """,
            }
        }
    )
    run = services.run_start(actor=cli_actor(), source=Run.Source.CLI)
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert [r["result"] for r in run.results] == ["APPLIED", "APPLIED", "APPLIED"]
    assert journal.count(change=f"journal-{unique}") == 1
    events = list(AuditEntry.objects.filter(run_id=run.id).exclude(change_id="").order_by("id").values_list("change_id", "state"))
    assert events == [
        (f"shared-{unique}", "APPLIED"),
        (f"marker-{unique}", "STARTED"),
        (f"marker-{unique}", "APPLIED"),
        (f"journal-{unique}", "STARTED"),
        (f"journal-{unique}", "APPLIED"),
    ]
    again = services.run_start(actor=cli_actor(), source=Run.Source.CLI)
    assert again.status == Run.Status.NO_CHANGES
    assert journal.count(change=f"journal-{unique}") == 1


def test_cli_in_a_child_process_sees_the_test_database(make_pipeline, unique, subprocess_env):
    make_pipeline(
        {
            "main": {
                "0001_one.yaml": f"""
        id: one-{unique}
        author: tests
        target: app-db
        template: sql
        apply: CREATE TABLE c_{unique} (id integer)
    """
            }
        }
    )
    result = manage("flamingock", "run", "--json", env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert AuditEntry.objects.filter(change_id=f"one-{unique}", state="APPLIED").count() == 1
