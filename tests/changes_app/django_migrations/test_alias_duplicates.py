"""The same migrations governed on two database aliases: the pipeline is refused with a clear
problem (a change id is one migration on one database; the ledger would otherwise apply it on the
first alias only and show it applied on both)."""

from __future__ import annotations

import pytest

from changes_app import services
from tests.changes_app.django_migrations.aliases import governed_on, same_vendor_database

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "second"])


@pytest.fixture(scope="module")
def second_database(django_db_setup, tmp_path_factory):
    database = same_vendor_database("second", tmp_path_factory.mktemp("second"))
    yield database
    database.close()


def test_migrations_governed_on_two_aliases_make_the_pipeline_invalid_and_nothing_runs(second_database, django_apps, settings):
    second_database.reset()
    pipeline = governed_on(settings, "default", "second")

    assert not pipeline.valid
    [problem] = [problem for problem in pipeline.problems if problem.code == "duplicate-id"]
    assert "'default'" in problem.message and "'second'" in problem.message
    assert "django:djm_" in problem.message and "one alias" in problem.message
    with pytest.raises(Exception) as refused:
        services.pipeline_plan()
    assert "duplicate-id" in str(refused.value) or "governed on both" in str(refused.value)


def test_one_alias_governed_is_valid(second_database, django_apps, settings):
    second_database.reset()
    assert governed_on(settings, "second").valid
    assert governed_on(settings, "default").valid
