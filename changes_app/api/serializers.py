"""Serializers translate: request bodies into service arguments, results into JSON. They hold no
business rule (the services do).

An output serializer declares its fields for the OpenAPI schema and returns the dict of
``services.representations``, which the command line's ``--json`` prints too: the two cannot give
different JSON for the same object, and the command line starts without Django REST framework.
"""

from __future__ import annotations

import dataclasses

from rest_framework import serializers
from rest_framework.utils.serializer_helpers import ReturnDict

from audit_app.models import AuditEntry, ChangeStateName
from changes_app.api.errors import CODES
from changes_app.governance import visibility
from changes_app.models import ChangeRequest, Finding, Run, TargetSystem
from changes_app.pipeline.plan import Action
from changes_app.services import representations

__all__ = [
    "AuditEntrySerializer",
    "ChangeSerializer",
    "ChangeStateName",
    "DecisionSerializer",
    "ErrorDetailSerializer",
    "ErrorSerializer",
    "FindingSerializer",
    "IssueSerializer",
    "LockHolderSerializer",
    "LockSerializer",
    "PlanSerializer",
    "PlanStageSerializer",
    "ReasonSerializer",
    "RequestCreateSerializer",
    "RequestSerializer",
    "RunCreateSerializer",
    "RunSerializer",
    "SubmissionSerializer",
    "TargetSystemSerializer",
    "ValidationSerializer",
]


# -- output: the fields for the schema, the JSON from services.representations -------------------------


class TargetSystemSerializer(serializers.ModelSerializer):
    class Meta:
        model = TargetSystem
        fields = ("name", "kind", "description", "configuration", "owner_team", "created_at", "retired_at")

    def to_representation(self, instance):
        return representations.target_system_data(instance)


class ChangeSerializer(serializers.Serializer):
    """A change as the plan sees it: its definition, latest state and next action."""

    id = serializers.CharField()
    stage = serializers.CharField()
    order = serializers.CharField()
    target = serializers.CharField()
    author = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    kind = serializers.CharField()
    strategy = serializers.CharField()
    transactional = serializers.BooleanField()
    recovery = serializers.CharField()
    has_rollback = serializers.BooleanField()
    has_verify = serializers.BooleanField()
    latest_state = serializers.ChoiceField(choices=ChangeStateName.choices, allow_null=True)
    next_action = serializers.ChoiceField(choices=[a.value for a in Action])
    reason = serializers.CharField(allow_blank=True)
    checksum = serializers.CharField()
    recorded_checksum = serializers.CharField(allow_null=True)

    def to_representation(self, instance):
        return representations.change_data(instance)


class PlanStageSerializer(serializers.Serializer):
    name = serializers.CharField()
    blocked_by = serializers.CharField(allow_null=True, help_text="The change that blocks the stage, if any.")
    items = ChangeSerializer(many=True)


class PlanSerializer(serializers.Serializer):
    """The plan by stage, as the API shows it."""

    environment = serializers.CharField()
    digest = serializers.CharField()
    stages = PlanStageSerializer(many=True)
    missing = serializers.ListField(child=serializers.CharField(), help_text="Applied changes whose code disappeared.")
    notices = serializers.ListField(child=serializers.CharField())

    def to_representation(self, instance):
        # The context's ``targets`` are the target systems the reader sees (None: all of them).
        return representations.plan_data(instance, self.context.get("targets"))


class IssueSerializer(serializers.Serializer):
    id = serializers.CharField()
    stage = serializers.CharField()
    order = serializers.CharField()
    target = serializers.CharField()
    strategy = serializers.CharField()
    latest_state = serializers.CharField(allow_null=True)
    next_action = serializers.CharField()
    reason = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_blank=True)
    rollback_error = serializers.CharField(allow_blank=True)
    error_entry = serializers.IntegerField(allow_null=True)
    guidance = serializers.ListField(child=serializers.CharField())

    def to_representation(self, instance):
        return representations.issue_data(instance)


class RunSerializer(serializers.ModelSerializer):
    """A run as the request's user may see it: the results of changes on target systems they cannot
    see are left out and counted in ``hidden_results`` (``visibility.run_shown``)."""

    progress = serializers.SerializerMethodField()
    hidden_results = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = (
            "id", "kind", "status", "status_reason", "source", "environment", "actor", "change_id", "reason",
            "created_at", "started_at", "finished_at", "heartbeat_at", "cancel_requested_at", "cancel_requested_by",
            "progress", "counts", "results", "hidden_results",
        )  # fmt: skip

    def get_progress(self, run) -> dict[str, int | str]:
        # Declares the field's type for the schema; to_representation gives its value.
        return representations.run_data(run)["progress"]

    def get_hidden_results(self, run) -> int:
        return representations.hidden_results(run)

    def to_representation(self, instance):
        request = self.context.get("request")
        if request is not None:
            # Read once per response (a page of runs shares it): the context is the root's.
            if "change_targets_seen" not in self.context:
                self.context["change_targets_seen"] = visibility.change_targets_seen(request.user)
            instance = visibility.run_shown(instance, self.context["change_targets_seen"])
        return representations.run_data(instance)


class RequestSerializer(serializers.ModelSerializer):
    target = serializers.CharField(source="target_system.name")
    requester = serializers.CharField(source="requester_name")
    approved_by = serializers.SerializerMethodField()
    rejected_by = serializers.SerializerMethodField()
    run_id = serializers.UUIDField(allow_null=True)
    reviewed_request_id = serializers.IntegerField(allow_null=True)
    overdue = serializers.SerializerMethodField()

    class Meta:
        model = ChangeRequest
        fields = (
            "id", "kind", "change_id", "checksum", "recorded_checksum", "environment", "target", "status",
            "status_reason", "requester", "reason", "source", "required_approvals", "approved_by", "rejected_by",
            "created_at", "decided_at", "expires_at", "run_id",
            "break_glass", "incident", "reviewed_request_id", "due_at", "overdue",
        )  # fmt: skip

    # These declare the fields' types for the schema; to_representation gives their values.
    def get_approved_by(self, request) -> list[str]:
        return representations.request_data(request)["approved_by"]

    def get_rejected_by(self, request) -> list[str]:
        return representations.request_data(request)["rejected_by"]

    def get_overdue(self, request) -> bool:
        return representations.request_data(request)["overdue"]

    def to_representation(self, instance):
        return representations.request_data(instance)


class RequestDetailSerializer(RequestSerializer):
    """A request as an approver decides it: what will run, the undo cascade, the diff since the
    request, the gate with the eligible approvers, and whether the reader may decide it now."""

    will_run = serializers.JSONField(allow_null=True, help_text="The Python source, or the template's steps with apply, rollback and verify.")
    undo_cascade = serializers.ListField(child=serializers.DictField(), help_text="An undo: the changes it rolls back, newest first.")
    undo_refused = serializers.CharField(help_text="Why the undo cannot be done now, if it cannot.")
    code_checksum = serializers.CharField(allow_null=True, help_text="The change's checksum in the code now.")
    source_moved = serializers.BooleanField(help_text="The code moved since the request: approving it is refused.")
    diff = serializers.JSONField(allow_null=True, help_text="The request's stored source against the code (or the applied one, to re-baseline).")
    gate = serializers.JSONField(help_text="The approval gate as the policy service computes it, with its text.")
    eligible_approvers = serializers.ListField(child=serializers.CharField(), help_text="Who may decide it (never its requester).")
    may_decide = serializers.BooleanField(help_text="Whether the reader may approve or reject it now.")
    why_not = serializers.CharField(help_text="Why the reader may not decide it, in words.")
    rendered = serializers.JSONField(
        allow_null=True,
        help_text="A Django migration: its SQL as sqlmigrate prints it for the target database and its RunPython code, rendered once when requested.",
    )

    class Meta(RequestSerializer.Meta):
        fields = (
            *RequestSerializer.Meta.fields, "will_run", "undo_cascade", "undo_refused", "code_checksum", "source_moved", "diff",
            "gate", "eligible_approvers", "may_decide", "why_not", "rendered",
        )  # fmt: skip

    def to_representation(self, instance):
        return representations.request_review_data(instance)


class SubmissionSerializer(serializers.Serializer):
    """A request awaiting approval, a request approved and executed, or (where nothing governs the
    target) the run that performed the action directly."""

    awaiting_approval = serializers.BooleanField()
    request = RequestSerializer(allow_null=True)
    run = RunSerializer(allow_null=True)

    def to_representation(self, instance):
        request = self.context.get("request")
        if request is not None and instance.run is not None:
            instance = dataclasses.replace(instance, run=visibility.run_shown(instance.run, visibility.change_targets_seen(request.user)))
        return representations.submission_data(instance)


class FindingSerializer(serializers.ModelSerializer):
    class Meta:
        model = Finding
        fields = (
            "id",
            "check_name",
            "kind",
            "status",
            "environment",
            "change_id",
            "target",
            "run_id",
            "lock_name",
            "member",
            "summary",
            "first_seen",
            "last_seen",
            "times_seen",
            "last_evidence",
            "status_changed_at",
            "status_by",
            "status_reason",
            "fingerprint",
        )

    def to_representation(self, instance):
        return representations.finding_data(instance)


class LockHolderSerializer(serializers.Serializer):
    name = serializers.CharField(allow_null=True)
    run_id = serializers.CharField(allow_null=True)
    holder = serializers.CharField(allow_null=True)
    host = serializers.CharField(allow_null=True)
    pid = serializers.IntegerField(allow_null=True)
    token = serializers.IntegerField(allow_null=True)
    since = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    expired = serializers.BooleanField()

    def to_representation(self, instance):
        return representations.lock_holder_data(instance)


class LockSerializer(LockHolderSerializer):
    """The pipeline lock: whether it is held and, flat, by whom (every holder field null when free)."""

    held = serializers.BooleanField()

    @property
    def data(self):
        # DRF gives a serializer whose instance is None its fields' initial values (empty strings),
        # but a free lock is a state with its own body: every holder field null.
        return ReturnDict(representations.lock_data(self.instance), serializer=self)

    def to_representation(self, instance):
        return representations.lock_data(instance)


class AuditEntrySerializer(serializers.ModelSerializer):
    state = serializers.CharField(allow_blank=True, help_text="The change state the entry records; empty for other events.")

    class Meta:
        model = AuditEntry
        fields = representations.AUDIT_ENTRY_FIELDS
        read_only_fields = fields

    def to_representation(self, instance):
        return representations.audit_entry_data(instance)


class ValidationSerializer(serializers.Serializer):
    """The deploy gate: what stops a deploy, and the exit code ``flamingock validate`` exits with."""

    valid = serializers.BooleanField(help_text="True when the exit code is 0.")
    exit_code = serializers.IntegerField(help_text="0 valid, 6 drift, 3 blocked, 4 awaiting approval, 7 pending (the first that applies).")
    exit_name = serializers.CharField(help_text="The exit code's name: OK, INTEGRITY, BLOCKED, AWAITING_APPROVAL or PENDING.")
    exit_reason = serializers.CharField(help_text="Why the gate gives this exit code.")
    checksum_drift = serializers.ListField(child=serializers.CharField(), help_text="Applied changes edited since.")
    missing_from_code = serializers.ListField(child=serializers.CharField(), help_text="Applied changes whose code disappeared.")
    blocked = serializers.ListField(child=serializers.CharField(), help_text="Changes needing a human, or out of order.")
    awaiting_approval = serializers.ListField(child=serializers.CharField())
    pending = serializers.ListField(child=serializers.CharField(), help_text="Changes the next run applies or reconciles.")
    findings = FindingSerializer(many=True, help_text="Open drift findings.")

    def to_representation(self, instance):
        return representations.validation_data(instance)


# -- input: request bodies, and the error body ---------------------------------------------------------


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=sorted(CODES), help_text="Stable error code; see the API description.")
    message = serializers.CharField()
    details = serializers.DictField(help_text="Per-field messages for `invalid`; empty otherwise.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class RunCreateSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class BreakGlassSerializer(serializers.Serializer):
    """Act without prior approval in an incident (docs/break-glass.md): needs ``break_glass``."""

    reason = serializers.CharField(max_length=2000, help_text="Why the emergency cannot wait for approvers.")
    incident = serializers.CharField(max_length=200, help_text="The incident reference, e.g. INC-4711.")


class RequestCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ChangeRequest.Kind.choices)
    change_id = serializers.CharField(max_length=200)
    reason = serializers.CharField(
        max_length=5000,
        required=False,
        allow_blank=True,
        default="",
        help_text="Why; required (with break-glass, its reason is) and recorded in the trail.",
    )
    break_glass = BreakGlassSerializer(required=False, help_text="Break-glass: the use is the approval; opens a review by two others.")


class DecisionSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=5000)


class AdoptedMigrationSerializer(serializers.Serializer):
    change_id = serializers.CharField()
    checksum = serializers.CharField()


class AdoptionSerializer(serializers.Serializer):
    """A database alias's adoption (``representations.adoption_data``): before it, what it would record."""

    alias = serializers.CharField()
    target = serializers.CharField()
    adoption_required = serializers.BooleanField()
    adopted = serializers.BooleanField()
    adopted_at = serializers.DateTimeField(allow_null=True)
    adopted_by = serializers.CharField()
    reason = serializers.CharField()
    request_id = serializers.IntegerField(allow_null=True)
    migrations = AdoptedMigrationSerializer(many=True)

    def to_representation(self, instance):
        return representations.adoption_data(instance)


class WorkerSerializer(serializers.Serializer):
    """A worker as its heartbeat said (``services.workers.WorkerView.as_dict``)."""

    name = serializers.CharField()
    host = serializers.CharField()
    pid = serializers.IntegerField()
    environment = serializers.CharField()
    queue = serializers.CharField()
    digest = serializers.CharField()
    version = serializers.CharField()
    started_at = serializers.DateTimeField()
    heartbeat_at = serializers.DateTimeField()
    stopped_at = serializers.DateTimeField(allow_null=True)
    live = serializers.BooleanField()
    code = serializers.ChoiceField(choices=["current", "stale", "unknown"])


class CurrentPipelineSerializer(serializers.Serializer):
    digest = serializers.CharField()
    version = serializers.CharField()
    recorded_by = serializers.CharField()
    host = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    recorded_at = serializers.DateTimeField()


class WorkersSerializer(serializers.Serializer):
    """The environment's current pipeline and its workers (``services.workers.workers_report``), as
    the command line's ``workers --json`` prints it."""

    environment = serializers.CharField()
    current = CurrentPipelineSerializer(allow_null=True)
    workers = WorkerSerializer(many=True)

    def to_representation(self, instance):
        return instance


class EvidencePackRequestSerializer(serializers.Serializer):
    """Ask for an evidence pack: a period (``to`` exclusive) and a scope in this environment."""

    # "from" is a Python keyword: the fields are declared by name.
    locals()["from"] = serializers.DateTimeField(help_text="The period's start.")
    locals()["to"] = serializers.DateTimeField(help_text="The period's end, exclusive.")
    targets = serializers.ListField(child=serializers.CharField(max_length=200), required=False, default=list, max_length=200)
    members = serializers.ListField(child=serializers.CharField(max_length=200), required=False, default=list, max_length=200)


class EvidencePackSerializer(serializers.Serializer):
    """An evidence pack and how far its worker has got."""

    id = serializers.IntegerField()
    status = serializers.CharField()
    requested_by = serializers.CharField()
    requested_at = serializers.DateTimeField(allow_null=True)
    environment = serializers.CharField()
    targets = serializers.ListField(child=serializers.CharField())
    members = serializers.ListField(child=serializers.CharField())
    progress = serializers.IntegerField()
    total = serializers.IntegerField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    manifest_sha256 = serializers.CharField(allow_null=True)
    results = serializers.DictField(child=serializers.CharField(), help_text="Each control's result: PASS, EXCEPTION or NOT_APPLICABLE.")
    error = serializers.CharField(allow_null=True)

    def to_representation(self, instance):
        return representations.evidence_pack_data(instance)
