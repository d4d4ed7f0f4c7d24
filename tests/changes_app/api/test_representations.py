"""One JSON per object: each API serializer's ``.data`` is the dict of its function in
``services.representations`` (which the command line's ``--json`` prints), and DRF's own rendering
of the fields the serializer declares for the OpenAPI schema gives the same dict, so the schema
describes what both interfaces return, value formats included."""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo

import pytest
from django.utils import timezone
from rest_framework import serializers

from audit_app.models import AuditEntry
from changes_app import services
from changes_app.api import serializers as s
from changes_app.api.audit import AuditEntryPageSerializer
from changes_app.locks.base import Holder
from changes_app.models import Finding, TargetSystem
from changes_app.pipeline.guidance import issue_details
from changes_app.pipeline.plan import Action
from changes_app.services import representations as r
from tests.changes_app.api.conftest import client_for
from tests.support.trails import journal_change, local_operator, run_pipeline

pytestmark = pytest.mark.django_db(transaction=True)

#: A zone with an offset, so that a date-time's conversion to the current zone is seen.
ZONES = ["UTC", "America/Sao_Paulo"]


@pytest.fixture(params=ZONES)
def zone(request):
    with timezone.override(zoneinfo.ZoneInfo(request.param)):
        yield request.param


def declared(serializer_class: type[serializers.Serializer], instance, **kwargs) -> dict:
    """DRF's field-by-field rendering of what ``serializer_class`` declares, bypassing its
    ``to_representation``."""
    return dict(serializers.Serializer.to_representation(serializer_class(instance, **kwargs), instance))


def same(serializer_class: type[serializers.Serializer], instance, data: dict, **kwargs) -> None:
    assert serializer_class(instance, **kwargs).data == data
    assert set(data) == set(serializer_class(**kwargs).fields)


def test_a_date_time_is_formatted_as_drf_formats_it(zone):
    field = serializers.DateTimeField()
    utc = dt.datetime(2024, 6, 1, 12, 30, 5, 123456, tzinfo=dt.UTC)
    for value in (utc, utc.replace(microsecond=0), utc.astimezone(zoneinfo.ZoneInfo("Asia/Kolkata")), utc.replace(tzinfo=None), None):
        assert r.datetime_text(value) == field.to_representation(value)


def test_target_system(make_pipeline, zone):
    make_pipeline({"main": {}})
    services.target_systems_sync()
    TargetSystem.objects.filter(name="journal").update(retired_at=dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC))
    for system in TargetSystem.objects.all():
        data = r.target_system_data(system)
        same(s.TargetSystemSerializer, system, data)
        assert declared(s.TargetSystemSerializer, system) == data


def test_change_plan_and_plan_list(make_pipeline, unique, journal):
    first, second = f"first-{unique}", f"second-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(first)}, "side": {"0001_b.py": journal_change(second, fail="half way")}})
    run_pipeline()
    plan = services.pipeline_plan()

    for item in plan.items:
        data = r.change_data(item)
        same(s.ChangeSerializer, item, data)
        assert declared(s.ChangeSerializer, data) == data  # the declared fields keep every value as it is
    for targets in (None, {"journal"}, set()):
        data = r.plan_data(plan, targets)
        same(s.PlanSerializer, plan, data, context={"targets": targets})
        for stage in data["stages"]:
            assert list(stage) == list(s.PlanStageSerializer().fields)
    # The command line's list has the API's change fields, and only the missing ones' own shape.
    listed = r.plan_list_data(plan)
    assert listed["changes"] == [r.change_data(item) for item in plan.items]
    assert sum(listed["summary"].values()) == len(plan.items) and list(listed["summary"]) == [a.value for a in Action if a.value in listed["summary"]]


def test_issue(make_pipeline, unique, journal):
    stuck = f"stuck-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(stuck, fail="half way")}})
    run_pipeline()
    details = issue_details(services.pipeline_plan().item(stuck))
    assert details["error_entry"] is not None

    data = r.issue_data(details)
    same(s.IssueSerializer, details, data)
    assert declared(s.IssueSerializer, details) == data


def test_run_its_outcome_and_its_audit_entries(make_pipeline, unique, journal, zone):
    make_pipeline({"main": {"0001_a.py": journal_change(f"note-{unique}")}})
    run = run_pipeline()
    run.refresh_from_db()

    data = r.run_data(run)
    same(s.RunSerializer, run, data)
    assert declared(s.RunSerializer, run) == data
    outcome = r.run_outcome_data(run)
    assert outcome["run_id"] == data["id"] and outcome["reason"] == data["status_reason"]
    assert (outcome["started_at"], outcome["finished_at"]) == (data["started_at"], data["finished_at"])

    entries = list(AuditEntry.objects.filter(run_id=run.id).order_by("-seq"))
    assert entries
    for entry in entries:
        data = r.audit_entry_data(entry)
        same(s.AuditEntrySerializer, entry, data)
        assert declared(s.AuditEntrySerializer, entry) == data
    rows = AuditEntry.objects.filter(run_id=run.id).order_by("-seq").values(*AuditEntryPageSerializer.columns())
    assert AuditEntryPageSerializer(rows, many=True).data == [r.audit_entry_data(entry) for entry in entries]


def test_request_and_submission(world, people, zone):
    submitted = services.request_submit(kind="UNDO", change_id=world["note"], actor=people["engineer"].actor, reason="why", source="API")
    assert submitted.awaiting_approval
    decided = services.request_approve(request_id=submitted.request.pk, actor=people["approver"].actor, comment="ok", inline=False)
    rejected = services.request_submit(kind="UNDO", change_id=world["db"], actor=people["engineer"].actor, reason="why", source="API").request
    rejected = services.request_reject(request_id=rejected.pk, actor=people["approver"].actor, comment="no")

    for request in (submitted.request, decided, rejected):
        request.refresh_from_db()
        data = r.request_data(request)
        same(s.RequestSerializer, request, data)
        assert declared(s.RequestSerializer, request) == data
    assert r.request_data(decided)["approved_by"] == ["approver"] and r.request_data(rejected)["rejected_by"] == ["approver"]

    data = r.submission_data(submitted)
    same(s.SubmissionSerializer, submitted, data)
    assert declared(s.SubmissionSerializer, submitted) == data


def test_a_submission_performed_directly(make_pipeline, unique, journal):
    note = f"note-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(note, rollback="ok")}})
    run_pipeline()
    submitted = services.request_submit(kind="UNDO", change_id=note, actor=local_operator(), reason="why", source="API")
    assert submitted.run is not None

    data = r.submission_data(submitted)
    same(s.SubmissionSerializer, submitted, data)
    assert declared(s.SubmissionSerializer, submitted) == data


def test_finding_and_validation(make_pipeline, unique, journal, zone):
    make_pipeline({"main": {"0001_a.py": journal_change(f"pending-{unique}")}})
    finding = Finding.objects.create(
        fingerprint=f"fp-{unique}",
        check_name=Finding.Check.OPERATIONAL,
        kind=Finding.Kind.DEAD_RUN,
        environment="dev",
        run_id=uuid.uuid4(),
        summary="a run died",
        last_evidence={"heartbeat": "2024-06-01T00:00:00Z", "seconds": 1.5},
    )
    finding.refresh_from_db()

    data = r.finding_data(finding)
    same(s.FindingSerializer, finding, data)
    assert declared(s.FindingSerializer, finding) == data

    verdict = services.pipeline_validate(findings=lambda: Finding.objects.all())
    data = r.validation_data(verdict)
    assert data["findings"] == [r.finding_data(finding)] and data["exit_name"] == "INTEGRITY"
    same(s.ValidationSerializer, verdict, data)
    assert declared(s.ValidationSerializer, verdict) == data
    assert verdict.as_dict() == data


def test_lock():
    since = timezone.now()
    holder = Holder("pipeline", str(uuid.uuid4()), "someone", "host-a", 42, 7, since, since + dt.timedelta(seconds=30))

    data = r.lock_holder_data(holder)
    same(s.LockHolderSerializer, holder, data)
    for held in (holder, None):
        same(s.LockSerializer, held, r.lock_data(held))
    assert r.lock_data(holder) == {"held": True, **holder.as_dict()}


def test_the_api_shows_a_free_lock_with_every_holder_field_null(people):
    body = client_for(people["admin"]).get("/api/v1/lock/").json()
    assert body == r.lock_data(None) == {"held": False, **dict.fromkeys(r.HOLDER_FIELDS[:-1]), "expired": False}
