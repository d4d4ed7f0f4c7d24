"""What keeps the audit list fast at a million entries without changing what it answers (docs/performance.md,
bench/README.md "API audit list at 1,000,000 entries"): the page serializer gives exactly the entry
serializer's JSON, a page costs the same statements at any depth and size, the filters are only
skipped when none is given, a token's last use is written at most once a minute while revocation
still holds from the next request, and the database connection settings are read as documented."""

from __future__ import annotations

import uuid
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit_app.models import AuditEntry
from audit_app.services import Actor, ChangeRef, audit_record
from changes_app.api.audit import AuditEntryPageSerializer
from changes_app.api.serializers import AuditEntrySerializer
from changes_app.governance.identity import LAST_USED_RESOLUTION, token_create, token_revoke, token_user
from changes_app.governance.roles import COMPLIANCE_OFFICER
from changes_app.locks.database import DatabaseLeaseLock
from changes_app.models import ApiToken
from flamingock_site import settings as site_settings
from tests.changes_app.api.conftest import client_for
from tests.changes_app.api.helpers import refused
from tests.support.governance import person
from tests.support.trails import run_pipeline, sql_change

pytestmark = pytest.mark.django_db

ENTRIES = "/api/v1/audit/entries/"


@pytest.fixture
def people(targets):
    return {"compliance": person("compliance", COMPLIANCE_OFFICER), "scoped": person("scoped", operate=("journal",))}


@pytest.fixture
def varied_trail(make_pipeline, unique, people) -> list[AuditEntry]:
    """Entries with every kind of value: a real run (fencing token, checksum, strategies, duration,
    run id) and hand-written ones with nested details, odd text and empty optional fields."""
    change_id = f"tbl-{unique}"
    make_pipeline({"main": {"0001_t.yaml": sql_change(change_id, f"CREATE TABLE perf_{unique} (id integer)", f"DROP TABLE perf_{unique}")}})
    run_pipeline(actor=people["compliance"].actor)
    alice = Actor(name="alice ✓", via="ui")
    audit_record(
        event="change.failed",
        actor=alice,
        environment="staging",
        change=ChangeRef(id="note-1", stage="side", order="0002", target="journal", checksum="c" * 64),
        state="FAILED",
        run_id=uuid.uuid4(),
        duration_ms=0.125,
        reason="why: ünïcode & <markup>",
        error='Traceback "quoted"\nline 2',
        details={"nested": {"list": [1, 2.5, None, "x"], "flag": True}, "empty": {}},
    )
    lease = DatabaseLeaseLock(f"perf-{unique}").try_acquire(run_id=uuid.uuid4(), actor=Actor(name="svc", via="schedule"))
    try:
        audit_record(event="lock.acquired", actor=Actor(name="svc", via="schedule", pid=None), environment="dev", fence=lease)
    finally:
        lease.release()
    return list(AuditEntry.objects.exclude(seq=None).order_by("-seq"))


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Chatham", "America/St_Johns"])
def test_the_page_serializer_gives_exactly_what_the_entry_serializer_gives(varied_trail, zone):
    rows = AuditEntry.objects.exclude(seq=None).order_by("-seq").values(*AuditEntryPageSerializer.columns())
    with timezone.override(ZoneInfo(zone)):  # a current time zone other than the default, as a middleware could set
        fast = AuditEntryPageSerializer(rows, many=True).data
        assert fast == AuditEntrySerializer(varied_trail, many=True).data
        assert AuditEntryPageSerializer(rows[0]).data == AuditEntrySerializer(varied_trail[0]).data
    assert all(row["created_at"].endswith("Z") for row in fast) == (zone == "UTC")
    assert {key for row in fast for key, value in row.items() if value is None} >= {"fencing_token", "run_id", "duration_ms", "pid"}
    assert any(row["fencing_token"] is not None for row in fast) and any(row["details"].get("nested") for row in fast)


def test_each_listed_entry_is_the_same_json_as_its_detail(varied_trail, people):
    client = client_for(people["compliance"])
    listed = client.get(f"{ENTRIES}?page_size=500").json()["results"]
    # Every entry (the client's token added one of its own), the varied ones included.
    assert [entry["seq"] for entry in listed] == list(AuditEntry.objects.exclude(seq=None).order_by("-seq").values_list("seq", flat=True))
    assert {entry.seq for entry in varied_trail} < {entry["seq"] for entry in listed}
    for entry in listed:
        # The detail adds what covers the entry (issue 18); the rest is the same.
        detail = client.get(f"{ENTRIES}{entry['id']}/").json()
        assert set(detail.pop("covered_by")) == {"verification", "checkpoint"}
        assert detail == entry


def test_a_page_costs_the_same_statements_at_any_depth_and_size(varied_trail, people):
    client = client_for(people["compliance"])
    client.get(ENTRIES)  # the token's first use is written once

    def statements(url: str) -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return [query["sql"].split(" FROM ")[0][:40] for query in captured.captured_queries]

    first = statements(f"{ENTRIES}?page_size=2")
    second = client.get(f"{ENTRIES}?page_size=2").json()["next"]
    # The token, the viewer's permissions (user, groups), the page: nothing per entry, no COUNT.
    assert len(first) == 4 and not any("COUNT" in sql for sql in first)
    assert statements(second) == first
    assert statements(f"{ENTRIES}?page_size=500") == first


def test_filters_are_skipped_only_when_none_is_given(varied_trail, people):
    client = client_for(people["compliance"])
    everything = [entry["seq"] for entry in client.get(f"{ENTRIES}?page_size=500").json()["results"]]
    # A parameter that is no filter changes nothing; a filter filters; a bad filter value is refused.
    assert [entry["seq"] for entry in client.get(f"{ENTRIES}?page_size=500&colour=red").json()["results"]] == everything
    failed = client.get(f"{ENTRIES}?state=FAILED").json()["results"]
    assert failed and {entry["state"] for entry in failed} == {"FAILED"}
    assert refused(client.get(f"{ENTRIES}?state=NOT_A_STATE"), 400, "invalid")
    assert refused(client.get(f"{ENTRIES}?created_at__gte=yesterday"), 400, "invalid")


def test_the_object_scoped_person_still_sees_only_its_target_systems_and_its_own(varied_trail, people):
    scoped = people["scoped"]
    audit_record(event="request.created", actor=scoped.actor, environment="dev", change=ChangeRef(id="x", target="app-db"))
    listed = client_for(scoped).get(f"{ENTRIES}?page_size=500").json()["results"]
    assert listed and all(entry["target"] == "journal" or entry["actor"] == "scoped" for entry in listed)
    assert {entry["target"] for entry in listed} == {"journal", "app-db"}
    assert len(listed) == AuditEntry.objects.exclude(seq=None).filter(target="journal").count() + 1


def test_the_bench_peer_endpoint_is_not_a_product_url(people):
    assert client_for(people["compliance"]).get("/bench/audit/entries/").status_code == 404


# -- the token behind every request -------------------------------------------------------------------


def test_a_token_last_use_is_written_at_most_once_a_minute(people):
    token, key = token_create(user=people["compliance"].user, name="t", created_by="tests")
    assert token_user(key) == people["compliance"].user
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as captured:
        assert token_user(key) == people["compliance"].user
    assert len(captured.captured_queries) == 1  # the lookup; no UPDATE within the minute
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now() - LAST_USED_RESOLUTION - timedelta(seconds=1))
    token_user(key)
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first


def test_a_revoked_or_expired_token_is_refused_from_the_next_request(people):
    compliance = people["compliance"]
    token, key = token_create(user=compliance.user, name="t", created_by="tests")
    client = client_for()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get(ENTRIES).status_code == 200
    token_revoke(tokens=ApiToken.objects.filter(pk=token.pk), actor=compliance.actor)
    refused(client.get(ENTRIES), 401, "authentication_failed")
    expired, expired_key = token_create(user=compliance.user, name="e", created_by="tests", expires_at=timezone.now() + timedelta(hours=1))
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {expired_key}")
    assert client.get(ENTRIES).status_code == 200
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    refused(client.get(ENTRIES), 401, "authentication_failed")
    assert token_user("flk_" + "x" * 43) is None and token_user("") is None


# -- persistent database connections ---------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(None, 60), ("", 60), ("0", 0), ("300", 300), (" None ", None), ("unlimited", None)])
def test_the_connection_lifetime_is_read_from_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("FLAMINGOCK_DB_CONN_MAX_AGE", raising=False)
    else:
        monkeypatch.setenv("FLAMINGOCK_DB_CONN_MAX_AGE", value)
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db.example:5432/flamingock")
    config = site_settings._database_from_environment()
    assert config["CONN_MAX_AGE"] == expected
    assert config["CONN_HEALTH_CHECKS"] is True


@pytest.mark.parametrize("value", ["-1", "soon", "1.5"])
def test_a_bad_connection_lifetime_is_refused_with_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("FLAMINGOCK_DB_CONN_MAX_AGE", value)
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db.example:5432/flamingock")
    with pytest.raises(ImproperlyConfigured, match="FLAMINGOCK_DB_CONN_MAX_AGE"):
        site_settings._database_from_environment()


def test_the_health_check_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("FLAMINGOCK_DB_CONN_HEALTH_CHECKS", "0")
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db.example:5432/flamingock")
    assert site_settings._database_from_environment()["CONN_HEALTH_CHECKS"] is False
