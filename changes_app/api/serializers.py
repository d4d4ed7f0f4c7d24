"""Serializers translate: request bodies into service arguments, results into JSON. They hold no
business rule (the services do)."""

from __future__ import annotations

from rest_framework import serializers

from audit_app.models import AuditEntry, ChangeStateName
from changes_app.models import ChangeRequest, Finding, Run, TargetSystem
from changes_app.resolver import Action

from .errors import CODES


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=sorted(CODES), help_text="Stable error code; see the API description.")
    message = serializers.CharField()
    details = serializers.DictField(help_text="Per-field messages for `invalid`; empty otherwise.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class TargetSystemSerializer(serializers.ModelSerializer):
    class Meta:
        model = TargetSystem
        fields = ("name", "kind", "description", "configuration", "owner_team", "created_at", "retired_at")


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


class PlanStageSerializer(serializers.Serializer):
    name = serializers.CharField()
    blocked_by = serializers.CharField(allow_null=True, help_text="The change that blocks the stage, if any.")
    items = ChangeSerializer(many=True)


class PlanSerializer(serializers.Serializer):
    environment = serializers.CharField()
    digest = serializers.CharField()
    stages = PlanStageSerializer(many=True)
    missing = serializers.ListField(child=serializers.CharField(), help_text="Applied changes whose code disappeared.")
    notices = serializers.ListField(child=serializers.CharField())


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


class RunSerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = (
            "id", "kind", "status", "status_reason", "source", "environment", "actor", "change_id", "reason",
            "created_at", "started_at", "finished_at", "heartbeat_at", "cancel_requested_at", "cancel_requested_by",
            "progress", "counts", "results",
        )  # fmt: skip

    def get_progress(self, run) -> dict[str, int | str]:
        return {"done": run.progress_done, "total": run.progress_total, "current_change": run.current_change}


class RunCreateSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class RequestSerializer(serializers.ModelSerializer):
    target = serializers.CharField(source="target_system.name")
    requester = serializers.CharField(source="requester_name")
    approved_by = serializers.SerializerMethodField()
    rejected_by = serializers.SerializerMethodField()
    run_id = serializers.UUIDField(allow_null=True)

    class Meta:
        model = ChangeRequest
        fields = (
            "id", "kind", "change_id", "checksum", "recorded_checksum", "environment", "target", "status",
            "status_reason", "requester", "reason", "source", "required_approvals", "approved_by", "rejected_by",
            "created_at", "decided_at", "expires_at", "run_id",
        )  # fmt: skip

    def get_approved_by(self, request) -> list[str]:
        return [a.approver_name for a in request.approvals.all() if a.decision == "APPROVE"]

    def get_rejected_by(self, request) -> list[str]:
        return [a.approver_name for a in request.approvals.all() if a.decision == "REJECT"]


class RequestCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ChangeRequest.Kind.choices)
    change_id = serializers.CharField(max_length=200)
    reason = serializers.CharField(max_length=5000, help_text="Why; required and recorded in the trail.")


class SubmissionSerializer(serializers.Serializer):
    """A request awaiting approval, a request approved and executed, or (where nothing governs the
    target) the run that performed the action directly."""

    awaiting_approval = serializers.BooleanField()
    request = RequestSerializer(allow_null=True)
    run = RunSerializer(allow_null=True)


class DecisionSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=5000)


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
            "summary",
            "first_seen",
            "last_seen",
            "times_seen",
            "last_evidence",
            "status_changed_at",
            "status_by",
            "status_reason",
        )


class LockSerializer(serializers.Serializer):
    held = serializers.BooleanField()
    name = serializers.CharField(allow_null=True)
    run_id = serializers.CharField(allow_null=True)
    holder = serializers.CharField(allow_null=True)
    host = serializers.CharField(allow_null=True)
    pid = serializers.IntegerField(allow_null=True)
    token = serializers.IntegerField(allow_null=True)
    since = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    expired = serializers.BooleanField()


class AuditEntrySerializer(serializers.ModelSerializer):
    state = serializers.CharField(allow_blank=True, help_text="The change state the entry records; empty for other events.")

    class Meta:
        model = AuditEntry
        fields = (
            "id", "seq", "event", "created_at", "environment", "change_id", "stage", "order", "target", "state",
            "checksum", "transaction_strategy", "recovery_strategy", "run_id", "actor", "host", "pid",
            "fencing_token", "duration_ms", "reason", "error", "rollback_error", "details", "prev_hash", "entry_hash",
        )  # fmt: skip
        read_only_fields = fields
