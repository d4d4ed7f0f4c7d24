"""Evidence packs through the interfaces (issue 23): the API, the admin's Evidence page and the command
line ask for a pack and download it, only with ``changes_app.generate_evidence`` (the Compliance officer
role's); a refusal is recorded and changes nothing; bad input is a clear error that writes nothing."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import zipfile
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone

from audit_app.evidence.offline import CONTROL_TITLES, EXCEPTION, verify_pack
from audit_app.evidence.pack import partial_path
from audit_app.models import AuditEntry
from audit_app.signing import public_key_hex, signing_key
from changes_app import services
from changes_app.errors import NotFound
from changes_app.governance.roles import APPROVER, COMPLIANCE_OFFICER, ENGINEER, PLATFORM_ADMIN
from changes_app.models import ChangeRequest, EvidencePack
from changes_app.services import evidence as evidence_service
from changes_app.services.evidence import evidence_generate, evidence_request
from changes_app.tasks import runs_reap_task
from tests.audit_app.evidence.builder import Q1_END, Q1_START, TrailBuilder, quarter_with_exceptions
from tests.changes_app.api.conftest import client_for
from tests.changes_app.test_requests import applied_table, submit
from tests.support.governance import person, policy
from tests.support.trails import cli

pytestmark = pytest.mark.django_db
PERIOD = {"from": "2026-01-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}


@pytest.fixture(autouse=True)
def evidence_dir(settings, tmp_path, monkeypatch):
    # A protected environment signs only with a configured key.
    monkeypatch.setenv("FLAMINGOCK_AUDIT_SIGNING_KEY", base64.b64encode(bytes(range(32))).decode())
    settings.FLAMINGOCK_EVIDENCE_DIR = tmp_path / "evidence"
    settings.FLAMINGOCK_ENVIRONMENT = "prod"
    settings.FLAMINGOCK_PROTECTED_ENVIRONMENTS = ["prod"]
    settings.FLAMINGOCK_EVIDENCE_DRIFT_ACK_HOURS = 24
    settings.FLAMINGOCK_BREAK_GLASS_REVIEW_HOURS = 48
    return settings.FLAMINGOCK_EVIDENCE_DIR


@pytest.fixture
def quarter():
    quarter_with_exceptions(TrailBuilder())


@pytest.fixture
def officer():
    return person("carla", COMPLIANCE_OFFICER)


@pytest.fixture
def engineer():
    return person("eddie", ENGINEER)


def key() -> str:
    return public_key_hex(signing_key())


def refusals() -> list[tuple[str, str]]:
    return list(AuditEntry.objects.filter(event="access.refused").values_list("actor", "details__action"))


# -- the API ------------------------------------------------------------------------------------------


def test_a_compliance_officer_asks_through_the_api_follows_its_progress_and_downloads_a_pack_that_verifies(quarter, officer, evidence_dir):
    client = client_for(officer)
    asked = client.post("/api/v1/evidence/", PERIOD, format="json")
    assert asked.status_code == 202, asked.content
    body = asked.json()
    assert (body["status"], body["environment"], body["from"], body["requested_by"]) == ("QUEUED", "prod", "2026-01-01T00:00:00Z", "carla")
    evidence_generate(pack_id=body["id"])  # what the worker's task calls (a real worker: test_evidence_worker.py)
    done = client.get(f"/api/v1/evidence/{body['id']}/").json()
    assert done["status"] == "DONE" and done["results"] == dict.fromkeys(CONTROL_TITLES, EXCEPTION)
    # The detail carries each control with its exceptions, as the admin's pack page shows them.
    assert {control["id"]: control["result"] for control in done["controls"]} == done["results"]
    assert all(control["exceptions"] and all("reason" in e and "seq" in e for e in control["exceptions"]) for control in done["controls"])
    assert done["progress"] == done["total"] == AuditEntry.objects.filter(created_at__gte=Q1_START, created_at__lt=Q1_END).count()
    download = client.get(f"/api/v1/evidence/{body['id']}/download/")
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    name = EvidencePack.objects.get(pk=body["id"]).file_path
    assert name and b"".join(download.streaming_content)[:2] == b"PK"
    pack = evidence_dir / name
    assert verify_pack(pack, public_key=key()).ok
    generated = AuditEntry.objects.get(event="evidence.generated")
    assert generated.actor == "carla" and generated.details["manifest_sha256"] == done["manifest_sha256"]
    assert generated.details["period"] == {"from": "2026-01-01T00:00:00+00:00", "to": "2026-04-01T00:00:00+00:00"}
    assert [item["id"] for item in client.get("/api/v1/evidence/").json()] == [body["id"]]


@pytest.mark.parametrize(
    "method, path",
    [("post", "/api/v1/evidence/"), ("get", "/api/v1/evidence/"), ("get", "/api/v1/evidence/{id}/"), ("get", "/api/v1/evidence/{id}/download/")],
)
def test_an_engineer_is_refused_every_evidence_endpoint_and_the_refusal_is_recorded(officer, engineer, method, path):
    pack = evidence_request(actor=officer.actor, since=Q1_START, until=Q1_END, queue=False)
    before = EvidencePack.objects.count()
    response = getattr(client_for(engineer), method)(path.format(id=pack.pk), PERIOD if method == "post" else None, format="json")
    assert response.status_code == 403, response.content
    assert EvidencePack.objects.count() == before
    assert refusals()[-1][0] == "eddie"


def test_an_anonymous_client_is_refused():
    assert client_for().post("/api/v1/evidence/", PERIOD, format="json").status_code in (401, 403)
    assert EvidencePack.objects.count() == 0


@pytest.mark.parametrize(
    "body, message",
    [
        ({"from": "2026-04-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "must be after its start"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "must be after its start"),
        ({**PERIOD, "targets": ["no-such-target"]}, "unknown target system(s): no-such-target"),
        ({"from": "yesterday", "to": "2026-01-01T00:00:00Z"}, "from"),
    ],
)
def test_bad_input_is_a_clear_400_and_writes_nothing(officer, body, message):
    client = client_for(officer)  # its token's creation is audited
    entries = AuditEntry.objects.count()
    response = client.post("/api/v1/evidence/", body, format="json")
    assert response.status_code in (400, 409), response.content
    assert message in response.content.decode()
    assert EvidencePack.objects.count() == 0 and AuditEntry.objects.count() == entries


def test_a_pack_not_done_cannot_be_downloaded(officer):
    pack = evidence_request(actor=officer.actor, since=Q1_START, until=Q1_END, queue=False)
    response = client_for(officer).get(f"/api/v1/evidence/{pack.pk}/download/")
    assert response.status_code == 409 and "queued, not done" in response.content.decode()


def test_a_duplicate_delivery_of_the_task_finds_the_pack_claimed_and_makes_nothing(quarter, officer):
    pack = evidence_request(actor=officer.actor, since=Q1_START, until=Q1_END, queue=False)
    evidence_generate(pack_id=pack.pk)
    again = evidence_generate(pack_id=pack.pk)
    assert again.status == "DONE" and AuditEntry.objects.filter(event="evidence.generated").count() == 1


def test_a_failure_is_recorded_on_the_row_and_leaves_no_file(officer, settings, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    settings.FLAMINGOCK_EVIDENCE_DIR = blocker
    pack = evidence_request(actor=officer.actor, since=Q1_START, until=Q1_END, queue=False)
    failed = evidence_generate(pack_id=pack.pk)
    assert failed.status == "FAILED" and failed.error and not AuditEntry.objects.filter(event="evidence.generated").exists()


# -- the admin's Evidence page -------------------------------------------------------------------------


def test_the_evidence_page_generates_a_pack_and_shows_its_progress_and_download(quarter, officer, client):
    client.force_login(officer.user)
    page = client.get(reverse("admin:changes_app_evidencepack_add"))
    assert page.status_code == 200 and b"flk-evidence-form" in page.content
    posted = client.post(reverse("admin:changes_app_evidencepack_add"), {"period_from": "2026-01-01", "period_to": "2026-04-01"})
    pack = EvidencePack.objects.get()
    assert posted.status_code == 302 and posted["Location"] == reverse("admin:changes_app_evidencepack_change", args=[pack.pk])
    queued = client.get(posted["Location"])
    assert b'http-equiv="refresh"' in queued.content and b"Queued" in queued.content
    evidence_generate(pack_id=pack.pk)
    done = client.get(posted["Location"])
    assert b"flk-evidence-download" in done.content and b"EXCEPTION" in done.content
    download = client.get(reverse("admin:changes_app_evidencepack_download", args=[pack.pk]))
    assert download.status_code == 200 and download["Content-Disposition"].startswith("attachment")
    listing = client.get(reverse("admin:changes_app_evidencepack_changelist")).content.decode()
    assert reverse("admin:changes_app_evidencepack_download", args=[pack.pk]) in listing


def test_the_evidence_page_refuses_a_bad_period_and_writes_nothing(officer, client):
    client.force_login(officer.user)
    page = client.post(reverse("admin:changes_app_evidencepack_add"), {"period_from": "2026-04-01", "period_to": "2026-01-01"})
    assert page.status_code == 200 and b"must be after its start" in page.content
    assert EvidencePack.objects.count() == 0


@pytest.mark.parametrize("role", [ENGINEER, PLATFORM_ADMIN])
def test_other_roles_see_no_evidence_page_and_cannot_download(officer, client, role):
    pack = evidence_request(actor=officer.actor, since=Q1_START, until=Q1_END, queue=False)
    other = person("otto", role)
    client.force_login(other.user)
    assert client.get(reverse("admin:changes_app_evidencepack_add")).status_code == 403
    assert client.get(reverse("admin:changes_app_evidencepack_changelist")).status_code == 403
    assert client.get(reverse("admin:changes_app_evidencepack_change", args=[pack.pk])).status_code == 403
    assert client.get(reverse("admin:changes_app_evidencepack_download", args=[pack.pk])).status_code == 403
    assert EvidencePack.objects.count() == 1


# -- the command line ---------------------------------------------------------------------------------


def test_the_command_line_writes_a_pack_and_verify_pack_checks_it(quarter, tmp_path, settings):
    settings.FLAMINGOCK_ENVIRONMENT = "dev"  # the local operator acts only in an unprotected environment
    settings.FLAMINGOCK_PROTECTED_ENVIRONMENTS = ["prod"]
    output = tmp_path / "q1.zip"
    made = cli("evidence", "--from", "2026-01-01", "--to", "2026-04-01", "--output", str(output), "--json")
    assert made.code == 0, made.err
    data = json.loads(made.out)
    assert data["output"] == str(output) and data["status"] == "DONE" and data["environment"] == "dev"
    verified = cli("audit", "verify-pack", str(output), "--public-key", key(), "--offline", "--json")
    assert verified.code == 0 and json.loads(verified.out)["ok"] is True
    edited = tmp_path / "edited.zip"
    with zipfile.ZipFile(output) as source, zipfile.ZipFile(edited, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, data.replace(b"EXCEPTION", b"PASS") if info.filename == "controls.json" else data)
    failed = cli("audit", "verify-pack", str(edited), "--public-key", key(), "--offline")
    assert failed.code == 6 and "controls.json: its SHA-256 differs" in failed.out


@pytest.mark.parametrize(
    "args, message",
    [
        (["evidence", "--from", "2026-04-01", "--to", "2026-01-01", "--output", "{tmp}/x.zip"], "must be after its start"),
        (["evidence", "--from", "soon", "--to", "2026-01-01", "--output", "{tmp}/x.zip"], "not a date"),
        (["evidence", "--from", "2026-01-01", "--to", "2026-04-01", "--output", "/no/such/dir/x.zip"], "does not exist"),
        (["audit", "verify-pack", "{tmp}/missing.zip", "--public-key", "ab" * 32, "--offline"], "cannot read"),
        (["audit", "verify-pack", "{tmp}/missing.zip", "--offline"], "usage"),
    ],
)
def test_command_line_usage_errors_exit_2_and_write_nothing(tmp_path, settings, args, message):
    settings.FLAMINGOCK_ENVIRONMENT = "dev"
    result = cli(*[arg.replace("{tmp}", str(tmp_path)) for arg in args])
    assert result.code == 2 and message in result.out + result.err
    assert EvidencePack.objects.count() == 0 and not list(tmp_path.glob("*.zip"))


def test_the_command_line_in_a_protected_environment_needs_a_token_holding_the_permission(quarter, tmp_path, engineer, officer, monkeypatch):
    output = tmp_path / "x.zip"
    args = ("evidence", "--from", "2026-01-01", "--to", "2026-04-01", "--output", str(output))
    anonymous = cli(*args)
    assert anonymous.code == 2 and "set FLAMINGOCK_TOKEN" in anonymous.err
    monkeypatch.setenv("FLAMINGOCK_TOKEN", engineer.token)
    refused = cli(*args)
    assert refused.code == 2 and "eddie may not generate evidence packs" in refused.err
    assert EvidencePack.objects.count() == 0 and not output.exists() and refusals()[-1] == ("eddie", "evidence.generate")
    monkeypatch.setenv("FLAMINGOCK_TOKEN", officer.token)
    made = cli(*args)
    assert made.code == 0 and output.exists() and EvidencePack.objects.get().requested_by == "carla"


# -- a worker that died, the scope's typed text, another environment's packs ----------------------


def _running(environment: str = "prod", *, started_minutes_ago: float = 60) -> EvidencePack:
    started = timezone.now() - timedelta(minutes=started_minutes_ago)
    return EvidencePack.objects.create(
        requested_by="carla", environment=environment, period_from=Q1_START, period_to=Q1_END, status=EvidencePack.Status.RUNNING,
        started_at=started, progress=5_000, total=90_000,
    )  # fmt: skip


def _partial(pack: EvidencePack, evidence_dir, *, minutes_ago: float) -> Path:
    partial = partial_path(evidence_dir / evidence_service._file_name(pack))
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"PK half a pack")
    seen = time.time() - minutes_ago * 60
    os.utime(partial, (seen, seen))
    return partial


def test_the_reaper_fails_a_pack_whose_worker_died_and_deletes_its_partial_file(evidence_dir, settings):
    settings.FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT = 90
    dead, never_wrote = _running(), _running()
    dead_file = _partial(dead, evidence_dir, minutes_ago=30)
    alive = _running()
    alive_file = _partial(alive, evidence_dir, minutes_ago=0.1)  # its heartbeat touched it just now
    young = _running(started_minutes_ago=0.5)
    elsewhere = _running("staging")
    elsewhere_file = _partial(elsewhere, evidence_dir, minutes_ago=30)

    reaped = runs_reap_task()["evidence"]  # beat's reaper

    assert sorted(reaped) == sorted([dead.pk, never_wrote.pk])
    dead.refresh_from_db()
    assert dead.status == EvidencePack.Status.FAILED and dead.finished_at is not None
    assert dead.error.startswith("the worker making it stopped: no sign of life since ") and "at 5000 of 90000 entries" in dead.error
    assert not dead_file.exists()
    assert EvidencePack.objects.get(pk=never_wrote.pk).status == EvidencePack.Status.FAILED
    for pack in (alive, young, elsewhere):
        assert EvidencePack.objects.get(pk=pack.pk).status == EvidencePack.Status.RUNNING
    assert alive_file.exists() and elsewhere_file.exists()
    assert evidence_service.evidence_reap() == []  # nothing twice


def test_the_worker_touches_its_partial_file_while_it_makes_the_pack_and_never_recreates_it(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence_service, "HEARTBEAT_EVERY", 0.02)
    partial = tmp_path / "pack.zip.partial"
    partial.write_bytes(b"")
    os.utime(partial, (1, 1))
    stop = threading.Event()
    beat = threading.Thread(target=evidence_service._heartbeat, args=(partial, stop))
    beat.start()
    deadline = time.monotonic() + 5
    while partial.stat().st_mtime < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert partial.stat().st_mtime > time.time() - 60
    partial.unlink()  # renamed when complete (or deleted by the reaper)
    time.sleep(0.1)
    assert not partial.exists() and not beat.is_alive()
    stop.set()
    beat.join()


def test_a_pack_reaped_while_its_worker_was_slow_stays_failed_and_keeps_no_file(officer, monkeypatch, evidence_dir):
    pack = evidence_request(actor=officer.actor, since=Q1_START, until=Q1_END, queue=False)

    def slow_build(*, path, **kwargs):
        assert partial_path(path).exists()  # written from the start: the reaper sees a pack being made
        EvidencePack.objects.filter(pk=pack.pk).update(status=EvidencePack.Status.FAILED, error="reaped")
        path.write_bytes(b"PK a late pack")
        return SimpleNamespace(path=path, controls=[], manifest_sha256="0" * 64, entries=0)

    monkeypatch.setattr(evidence_service, "pack_build", slow_build)
    done = evidence_generate(pack_id=pack.pk)
    assert (done.status, done.error, done.file_path) == (EvidencePack.Status.FAILED, "reaped", "")
    assert not list(evidence_dir.glob("*.zip")) and not AuditEntry.objects.filter(event="evidence.generated").exists()


def test_a_failed_build_deletes_its_partial_file(officer, monkeypatch, evidence_dir):
    pack = evidence_request(actor=officer.actor, since=Q1_START, until=Q1_END, queue=False)
    monkeypatch.setattr(evidence_service, "pack_build", lambda **kwargs: (_ for _ in ()).throw(OSError("disk full")))
    failed = evidence_generate(pack_id=pack.pk)
    assert failed.status == EvidencePack.Status.FAILED and failed.error == "OSError: disk full"
    assert not list(evidence_dir.iterdir())


def test_the_scopes_members_are_redacted_before_they_are_stored_and_signed(quarter, officer, evidence_dir):
    secret = "postgres://app:s3cret-pw@db/tenant"
    pack = evidence_request(actor=officer.actor, since=Q1_START, until=Q1_END, members=["eu-1", f" {secret} "], queue=False)
    assert "s3cret-pw" not in json.dumps(pack.members) and "eu-1" in pack.members
    done = evidence_generate(pack_id=pack.pk)
    assert done.status == EvidencePack.Status.DONE
    with zipfile.ZipFile(evidence_dir / done.file_path) as archive:
        manifest = archive.read("manifest.json").decode()
        assert "s3cret-pw" not in manifest and "eu-1" in manifest
    assert "s3cret-pw" not in json.dumps(AuditEntry.objects.get(event="evidence.generated").details)


def test_a_pack_of_another_environment_is_not_found_anywhere(officer, client, evidence_dir):
    other = EvidencePack.objects.create(
        requested_by="carla", environment="staging", period_from=Q1_START, period_to=Q1_END, status=EvidencePack.Status.DONE,
        file_path="evidence-other.zip",
    )  # fmt: skip
    evidence_dir.mkdir(parents=True, exist_ok=True)
    (evidence_dir / "evidence-other.zip").write_bytes(b"PK staging's pack")
    api = client_for(officer)
    assert api.get(f"/api/v1/evidence/{other.pk}/").status_code == 404
    assert api.get(f"/api/v1/evidence/{other.pk}/download/").status_code == 404
    assert other.pk not in [row["id"] for row in api.get("/api/v1/evidence/").json()]
    client.force_login(officer.user)
    assert client.get(reverse("admin:changes_app_evidencepack_change", args=[other.pk])).status_code == 404
    assert client.get(reverse("admin:changes_app_evidencepack_download", args=[other.pk])).status_code == 404
    with pytest.raises(NotFound):
        evidence_service.evidence_get(pack_id=other.pk)


# -- the approver's role, recorded when they decide -----------------------------------------------


@pytest.fixture
def deciders(targets, settings):
    """An unprotected environment, an engineer and two approvers on app-db (as tests/changes_app/test_requests.py)."""
    settings.FLAMINGOCK_ENVIRONMENT = "staging"
    return {
        "eng": person("eng", ENGINEER, operate=("app-db", "journal")),
        "alice": person("alice", APPROVER, approve=("app-db", "journal")),
        "bob": person("bob", APPROVER, approve=("app-db", "journal")),
    }


def test_a_decision_records_the_role_groups_its_approver_held_then(make_pipeline, unique, deciders):
    people = deciders
    change, _ = applied_table(make_pipeline, unique, people)
    policy("app-db", "staging", 2)
    request = submit(ChangeRequest.Kind.UNDO, change, people["eng"]).request
    services.request_approve(request_id=request.pk, actor=people["alice"].actor, inline=True)
    services.request_reject(request_id=request.pk, actor=people["bob"].actor, comment="not now")
    approved = AuditEntry.objects.get(event="request.approved", details__request_id=request.pk)
    rejected = AuditEntry.objects.get(event="request.rejected", details__request_id=request.pk)
    assert (approved.actor, approved.details["roles"]) == ("alice", [APPROVER])
    assert (rejected.actor, rejected.details["roles"]) == ("bob", [APPROVER])
