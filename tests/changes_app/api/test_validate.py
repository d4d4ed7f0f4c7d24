"""``GET /api/v1/validate/``: the deploy gate of ``flamingock validate --json``, the same body for the
same state (exit code and its name included), limited to the target systems the reader sees."""

from __future__ import annotations

import pytest

from changes_app.services import ExitCode
from tests.changes_app.api.conftest import client_for
from tests.support.trails import cli, journal_change, run_pipeline, sql_change

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/validate/"


def table(unique, name="t"):
    return f"CREATE TABLE {name}_{unique} (id integer)", f"DROP TABLE {name}_{unique}"


def same_gate(admin) -> dict:
    """The command line's verdict (which refreshes the findings first) and the API's, which must be equal."""
    command = cli("validate", "--json")
    response = admin.get(URL)
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert body == command.json()
    assert command.code == body["exit_code"]
    assert body["exit_name"] == ExitCode(body["exit_code"]).name
    assert body["valid"] is (body["exit_code"] == 0)
    return body


def test_nothing_pending_is_zero(make_pipeline, unique, people):
    change = f"done-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(change, *table(unique))}})
    run_pipeline()

    body = same_gate(client_for(people["admin"]))

    assert (body["exit_code"], body["exit_name"], body["pending"], body["findings"]) == (0, "OK", [], [])
    assert body["exit_reason"] == "everything is applied and nothing drifted"


def test_pending_is_seven(make_pipeline, unique, people):
    change = f"pending-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(change, *table(unique))}})

    body = same_gate(client_for(people["admin"]))

    assert (body["exit_code"], body["exit_name"], body["pending"]) == (7, "PENDING", [change])
    assert change in body["exit_reason"]


def test_blocked_is_three(make_pipeline, unique, people, journal):
    stuck, later = f"stuck-{unique}", f"later-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(stuck, fail="half way"), "0002_b.py": journal_change(later)}})
    run_pipeline()

    body = same_gate(client_for(people["admin"]))

    assert (body["exit_code"], body["exit_name"]) == (3, "BLOCKED")
    assert stuck in body["blocked"]


def test_checksum_drift_is_six_before_anything_pending(make_pipeline, unique, people):
    edited, pending = f"edited-{unique}", f"pending-{unique}"
    make_pipeline({"main": {"0001_a.yaml": sql_change(edited, *table(unique))}})
    run_pipeline()
    make_pipeline(
        {
            "main": {
                "0001_a.yaml": sql_change(edited, *table(unique), extra="description: edited\n"),
                "0002_b.yaml": sql_change(pending, *table(unique, "p")),
            }
        }
    )

    body = same_gate(client_for(people["admin"]))

    assert (body["exit_code"], body["exit_name"], body["checksum_drift"]) == (6, "INTEGRITY", [edited])
    assert {edited, pending} <= set(body["blocked"])  # the edit needs a human, which holds its stage
    assert {finding["change_id"] for finding in body["findings"]} >= {edited}


def test_a_reader_sees_the_gate_of_the_target_systems_they_see(make_pipeline, unique, people, journal):
    db_change, note = f"tbl-{unique}", f"note-{unique}"
    make_pipeline({"main": {"0001_t.yaml": sql_change(db_change, *table(unique))}, "side": {"0001_n.py": journal_change(note)}})

    scoped = client_for(people["scoped"]).get(URL).json()
    everything = client_for(people["admin"]).get(URL).json()

    assert (scoped["exit_code"], scoped["pending"]) == (7, [note])
    assert (everything["exit_code"], everything["pending"]) == (7, [db_change, note])


def test_anonymous_is_refused_and_the_schema_documents_the_exit_code(make_pipeline, people):
    make_pipeline({"main": {}})
    assert client_for().get(URL).status_code == 401

    schema = client_for(people["admin"]).get("/api/v1/schema/?format=json").json()

    operation = schema["paths"][URL]["get"]
    assert "exit_code" in operation["description"]
    reference = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert {"valid", "exit_code", "exit_name", "exit_reason", "pending", "findings"} <= set(schema["components"]["schemas"][reference]["properties"])
