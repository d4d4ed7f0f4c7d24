"""One set of serializers: ``flamingock ... --json`` gives what the API gives for the same objects."""

from __future__ import annotations

import pytest

from tests.changes_app.api.conftest import client_for
from tests.support.trails import cli, journal_change, run_pipeline

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_command_line_and_the_api_give_the_same_json_for_the_same_objects(make_pipeline, unique, people, journal):
    first, second = f"first-{unique}", f"second-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(first)}, "side": {"0001_b.py": journal_change(second)}})
    run_pipeline()
    admin = client_for(people["admin"])

    changes = cli("plan", "--json").json()["changes"]
    assert changes == admin.get("/api/v1/changes/").json()

    history = cli("audit", "list", "--history", "--change", first, "--json").json()
    entries = admin.get(f"/api/v1/audit/entries/?change_id={first}&page_size=500").json()["results"]
    assert history == sorted(entries, key=lambda entry: entry["id"])

    assert cli("issues", "--json").json() == admin.get("/api/v1/issues/").json() == []
