"""Fixtures of the API tests: people in every role, an object-scoped person, clients by token."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from changes_app.governance.roles import APPROVER, COMPLIANCE_OFFICER, ENGINEER, PLATFORM_ADMIN
from tests.support.governance import person, policy
from tests.support.trails import journal_change, run_pipeline, sql_change


@pytest.fixture
def eager_celery(monkeypatch):
    """Queued runs execute in this process once their row commits (the API's own logic under test)."""
    from flamingock_site.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)


@pytest.fixture
def people(targets):
    """The four roles (on app-db and the journal) and a person with object permissions on the
    journal only and no role."""
    return {
        "compliance": person("compliance", COMPLIANCE_OFFICER),
        "engineer": person("engineer", ENGINEER, operate=("app-db", "journal")),
        "approver": person("approver", APPROVER, approve=("app-db", "journal")),
        "admin": person("admin", PLATFORM_ADMIN),
        "scoped": person("scoped", operate=("journal",), approve=("journal",)),
    }


@pytest.fixture
def world(make_pipeline, unique, people, settings, eager_celery):
    """Two stages: an applied app-db change and an applied journal change, each undoable, in a
    governed environment (one approval needed on both target systems)."""
    db_change, note = f"tbl-{unique}", f"note-{unique}"
    make_pipeline(
        {
            "main": {"0001_t.yaml": sql_change(db_change, f"CREATE TABLE api_{unique} (id integer)", f"DROP TABLE api_{unique}")},
            "side": {"0001_n.py": journal_change(note, rollback="ok")},
        }
    )
    run_pipeline(actor=people["engineer"].actor)
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    policy("app-db", "staging", 1)
    policy("journal", "staging", 1)
    return {"db": db_change, "note": note}


def client_for(who=None) -> APIClient:
    client = APIClient()
    if who is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {who.token}")
    return client


@pytest.fixture
def clients(people):
    return {name: client_for(who) for name, who in people.items()} | {"anonymous": client_for()}
