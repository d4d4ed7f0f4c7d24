"""What the product governs and records about execution: target systems, the change catalogue,
runs, the pipeline lock and its fence, and personal API tokens."""

import hashlib
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _


class TargetSystem(models.Model):
    """The governed side of a target system; its connection lives in settings only."""

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=64)
    description = models.TextField(blank=True, default="")
    #: The connection configuration as configured, secrets masked; read-only everywhere.
    configuration = models.JSONField(default=dict, blank=True)
    owner_team = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    #: Set when the target disappears from settings; rows are never deleted.
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("operate_targetsystem", _("Can operate changes on the target system")),
            ("approve_targetsystem", _("Can approve requests on the target system")),
        ]

    def __str__(self):
        return self.name


class ChangeRecord(models.Model):
    """A change definition mirrored from code so that the admin can show it.

    Rows survive the change's removal from code (``removed_at``): history is never lost.
    """

    change_id = models.CharField(max_length=200, unique=True)
    stage = models.CharField(max_length=200)
    order = models.CharField(max_length=64)
    author = models.CharField(max_length=200)
    target = models.CharField(max_length=200)
    kind = models.CharField(max_length=16)
    template = models.CharField(max_length=64, blank=True, default="")
    description = models.TextField(blank=True, default="")
    path = models.CharField(max_length=500)
    line = models.IntegerField(default=1)
    source = models.TextField()
    checksum = models.CharField(max_length=64)
    transactional = models.BooleanField()
    recovery = models.CharField(max_length=32)
    environments = models.JSONField(null=True, blank=True)
    has_rollback = models.BooleanField(default=False)
    has_verify = models.BooleanField(default=False)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    synced_at = models.DateTimeField(auto_now=True)
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["stage", "order"]
        verbose_name = "change"
        indexes = [models.Index(fields=["stage", "order"], name="change_stage_order_idx")]

    def __str__(self):
        return self.change_id


class Run(models.Model):
    """One execution of the pipeline, or of one undo / fix / skip / re-apply / re-baseline."""

    class Kind(models.TextChoices):
        PIPELINE = "PIPELINE", _("Pipeline")
        UNDO = "UNDO", _("Undo")
        FIX = "FIX", _("Manual fix")
        SKIP = "SKIP", _("Skip")
        REAPPLY = "REAPPLY", _("Re-apply")
        ACCEPT_CHECKSUM = "ACCEPT_CHECKSUM", _("Accept checksum")

    class Status(models.TextChoices):
        QUEUED = "QUEUED", _("Queued")
        RUNNING = "RUNNING", _("Running")
        SUCCEEDED = "SUCCEEDED", _("Succeeded")
        FAILED = "FAILED", _("Failed")
        BLOCKED = "BLOCKED", _("Blocked")
        AWAITING_APPROVAL = "AWAITING_APPROVAL", _("Awaiting approval")
        LOCKED = "LOCKED", _("Lock not acquired")
        ABORTED = "ABORTED", _("Aborted")
        NO_CHANGES = "NO_CHANGES", _("No changes")

    class Source(models.TextChoices):
        UI = "UI", _("Admin")
        API = "API", _("API")
        CLI = "CLI", _("Command line")
        SCHEDULE = "SCHEDULE", _("Schedule")

    FINISHED = frozenset(
        {Status.SUCCEEDED, Status.FAILED, Status.BLOCKED, Status.AWAITING_APPROVAL, Status.LOCKED, Status.ABORTED, Status.NO_CHANGES}
    )

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=24, choices=Kind.choices, default=Kind.PIPELINE)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.QUEUED, db_index=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    environment = models.CharField(max_length=64)
    dry_run = models.BooleanField(default=False)
    change_id = models.CharField(max_length=200, blank=True, default="", help_text=_("The change acted on, for single-change runs."))
    reason = models.TextField(blank=True, default="")
    parameters = models.JSONField(default=dict, blank=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor = models.CharField(max_length=200)
    host = models.CharField(max_length=255, blank=True, default="")
    pid = models.IntegerField(null=True, blank=True)
    pipeline_digest = models.CharField(max_length=64, blank=True, default="")
    task_id = models.CharField(max_length=255, blank=True, default="")
    fencing_token = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.CharField(max_length=200, blank=True, default="")
    progress_done = models.IntegerField(default=0)
    progress_total = models.IntegerField(default=0)
    current_change = models.CharField(max_length=200, blank=True, default="")
    counts = models.JSONField(default=dict, blank=True)
    results = models.JSONField(default=list, blank=True)
    status_reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.get_kind_display()} {self.id} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in self.FINISHED


class LockLease(models.Model):
    """The database lease lock of one environment's pipeline (the embedded default backend)."""

    name = models.CharField(max_length=200, primary_key=True)
    owner = models.CharField(max_length=64, blank=True, default="")
    run_id = models.UUIDField(null=True, blank=True)
    holder = models.CharField(max_length=200, blank=True, default="")
    host = models.CharField(max_length=255, blank=True, default="")
    pid = models.IntegerField(null=True, blank=True)
    token = models.BigIntegerField(null=True, blank=True)
    acquired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"lock {self.name}"


class Fence(models.Model):
    """The fencing token of a lock: only grows, issued by the audit database, never by Redis.

    Kept apart from the lease row so that a holder's heartbeat never waits behind the row lock a
    fenced transaction holds until its commit.
    """

    name = models.CharField(max_length=200, primary_key=True)
    token = models.BigIntegerField(default=0)
    checked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"fence {self.name} at {self.token}"


class ApiToken(models.Model):
    """A personal token for the CLI and the API, stored as a SHA-256 hash."""

    PREFIX = "flk_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="flamingock_tokens")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_prefix = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True, default="", editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name} ({self.key_prefix}…) of {self.user}"

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    @classmethod
    def generate_key(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)
