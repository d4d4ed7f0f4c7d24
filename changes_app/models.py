"""What the product governs and records about execution: target systems, the change catalogue,
runs, the pipeline lock and its fence, and personal API tokens."""

import hashlib
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone
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
            # Break-glass (docs/break-glass.md): act without prior approval in an incident. Its own
            # permission, held by no role by default; never by a compliance officer.
            ("break_glass", _("Can use break-glass on the target system")),
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
        ADOPT = "ADOPT", _("Adopt a database's Django migrations")

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


class Worker(models.Model):
    """A Celery worker as it last said with its heartbeat: where it runs and which code it has
    (docs/semantics.md, Workers). Rows are kept after the worker stops, for the record."""

    #: The Celery node name (``celery@host``), unique while it runs; a restart under the same name updates the row.
    name = models.CharField(max_length=255, unique=True)
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    environment = models.CharField(max_length=64, db_index=True)
    queue = models.CharField(max_length=200, blank=True, default="")
    #: The digest of the pipeline this worker's code discovered when it started.
    digest = models.CharField(max_length=64)
    version = models.CharField(max_length=64, blank=True, default="")
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["environment", "name"]

    def __str__(self):
        return f"{self.name} (pid {self.pid}, pipeline {self.digest[:12]})"


class DeployedPipeline(models.Model):
    """The current pipeline of an environment: the digest that the deploy step (``migrate``) or the
    web process last recorded. Workers never write it; a worker with another digest is stale."""

    environment = models.CharField(max_length=64, unique=True)
    digest = models.CharField(max_length=64)
    version = models.CharField(max_length=64, blank=True, default="")
    #: Which process recorded it: ``migrate``, ``web``, ``cli``...
    recorded_by = models.CharField(max_length=200)
    host = models.CharField(max_length=255, blank=True, default="")
    pid = models.IntegerField(null=True, blank=True)
    recorded_at = models.DateTimeField()

    def __str__(self):
        return f"{self.environment}: pipeline {self.digest[:12]}"


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
    #: Never later than FLAMINGOCK_TOKEN_MAX_LIFETIME_DAYS after creation (docs/sso.md); left blank,
    #: the maximum. Null only on a row written around ``token_create``: then the maximum from creation.
    expires_at = models.DateTimeField(null=True, blank=True, help_text=_("Blank: the longest lifetime allowed."))
    revoked_at = models.DateTimeField(null=True, blank=True)
    #: Why the token was revoked when no person chose to: "user deactivated".
    revoked_reason = models.CharField(max_length=200, blank=True, default="", editable=False)

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


class SsoIdentity(models.Model):
    """The OpenID Connect subject behind a user: a person is (issuer, sub), never a name or e-mail
    address that the provider could give to someone else (docs/sso.md)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="flamingock_sso_identities")
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "SSO identity"
        verbose_name_plural = "SSO identities"
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="sso_identity_one_user_per_subject")]

    def __str__(self):
        return f"{self.subject} at {self.issuer} ({self.user})"


class ApprovalPolicy(models.Model):
    """How many distinct approvals a governed action on a target system needs in an environment.

    0 approves requests automatically (recorded as such); a protected environment needs at least 1,
    which the service enforces (the list of protected environments lives in settings).
    """

    target_system = models.ForeignKey(TargetSystem, on_delete=models.PROTECT, related_name="approval_policies")
    environment = models.CharField(max_length=64)
    required_approvals = models.PositiveSmallIntegerField(default=1)
    #: Fleet runs on this target group stop after the canary wave until a fresh FLEET_CONTINUE request
    #: is approved (docs/fleet.md, "Governance").
    fleet_canary_approval = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["target_system__name", "environment"]
        verbose_name_plural = "approval policies"
        constraints = [
            models.UniqueConstraint(fields=["target_system", "environment"], name="approval_policy_one_per_target_and_environment"),
            models.CheckConstraint(condition=models.Q(required_approvals__gte=0), name="approval_policy_required_approvals_not_negative"),
        ]

    def __str__(self):
        return f"{self.target_system} in {self.environment}: {self.required_approvals} approval(s)"


class ChangeRequest(models.Model):
    """A governed action on one change, bound to its id, checksum and environment (docs/semantics.md §9)."""

    class Kind(models.TextChoices):
        APPLY = "APPLY", _("Apply")
        UNDO = "UNDO", _("Undo")
        REAPPLY = "REAPPLY", _("Re-apply")
        MARK_APPLIED = "MARK_APPLIED", _("Mark as applied")
        MARK_ROLLED_BACK = "MARK_ROLLED_BACK", _("Mark as rolled back")
        SKIP = "SKIP", _("Skip")
        ACCEPT_CHECKSUM = "ACCEPT_CHECKSUM", _("Accept checksum")
        ADOPT = "ADOPT", _("Adopt a database's Django migrations")
        #: The retrospective review of a break-glass use (docs/break-glass.md).
        REVIEW = "REVIEW", _("Break-glass review")
        #: Fleet runs (docs/fleet.md, "Governance"): bound to a fleet run (``change_id`` ``fleet:<id>``)
        #: and the digest of the group's change checksums.
        FLEET_RETRY = "FLEET_RETRY", _("Retry a fleet run's failed members")
        FLEET_CONTINUE = "FLEET_CONTINUE", _("Continue a fleet run after its canary")

    class Status(models.TextChoices):
        PENDING = "PENDING", _("Pending")
        APPROVED = "APPROVED", _("Approved")
        REJECTED = "REJECTED", _("Rejected")
        EXPIRED = "EXPIRED", _("Expired")
        CANCELLED = "CANCELLED", _("Cancelled")
        EXECUTED = "EXECUTED", _("Executed")
        FAILED = "FAILED", _("Failed")

    #: Statuses no decision or execution moves away from.
    FINAL = frozenset({Status.REJECTED, Status.EXPIRED, Status.CANCELLED, Status.EXECUTED, Status.FAILED})

    kind = models.CharField(max_length=24, choices=Kind.choices)
    change_id = models.CharField(max_length=200)
    #: The checksum of the change's code when requested; an approval covers this checksum only.
    checksum = models.CharField(max_length=64)
    #: ACCEPT_CHECKSUM: the checksum recorded in the ledger, re-baselined to ``checksum``.
    recorded_checksum = models.CharField(max_length=64, blank=True, default="")
    environment = models.CharField(max_length=64)
    target_system = models.ForeignKey(TargetSystem, on_delete=models.PROTECT, related_name="requests")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    reason = models.TextField()
    #: Where the request came from (admin, API, command line): the run that executes it says the same.
    source = models.CharField(max_length=16, choices=Run.Source.choices, default=Run.Source.UI)
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    requester_name = models.CharField(max_length=200)
    #: The policy's number of distinct approvals when the request was made.
    required_approvals = models.PositiveSmallIntegerField()
    #: APPLY: how many times the change had been applied when requested; an approval covers
    #: retries until the change is applied once more.
    applied_generation = models.IntegerField(default=0)
    expires_at = models.DateTimeField()
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="requests")
    status_reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now(), db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    executed_at = models.DateTimeField(null=True, blank=True)
    #: Django migrations: each migration's SQL as ``sqlmigrate`` prints it for the target database and
    #: its RunPython code by name and source, rendered once when the request is made (docs/django-migrations.md).
    rendered = models.JSONField(default=dict, blank=True)
    #: Approved by a break-glass use of its requester (docs/break-glass.md), not by approvers.
    break_glass = models.BooleanField(default=False)
    #: The incident reference a break-glass use gave (on the action's request and on its REVIEW).
    incident = models.CharField(max_length=200, blank=True, default="")
    #: REVIEW: the break-glass request it reviews.
    reviewed_request = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="reviews")
    #: REVIEW: when two approvals are due (FLAMINGOCK_BREAK_GLASS_REVIEW_HOURS after the use).
    due_at = models.DateTimeField(null=True, blank=True)
    #: REVIEW: when ``review.overdue`` was written (once per review).
    overdue_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "request"
        constraints = [
            # Reviews are exempt: two break-glass uses on one change open two reviews.
            models.UniqueConstraint(
                fields=["environment", "change_id", "kind"],
                condition=models.Q(status="PENDING") & ~models.Q(kind="REVIEW"),
                name="request_one_pending_per_change_and_kind",
            ),
            models.CheckConstraint(condition=~models.Q(reason=""), name="request_reason_not_empty"),
            models.CheckConstraint(
                condition=~models.Q(kind="REVIEW") | models.Q(due_at__isnull=False, reviewed_request__isnull=False, required_approvals__gte=2),
                name="request_review_has_subject_due_date_and_two_approvals",
            ),
        ]

    def __str__(self):
        return f"#{self.pk} {self.get_kind_display()} {self.change_id} ({self.status})"


class Approval(models.Model):
    """One approver's decision on a request."""

    class Decision(models.TextChoices):
        APPROVE = "APPROVE", _("Approve")
        REJECT = "REJECT", _("Reject")

    request = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="approvals")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    approver_name = models.CharField(max_length=200)
    #: The request's requester, copied so that the database itself refuses a self-approval.
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    #: The checksum the approver saw: the request's.
    checksum = models.CharField(max_length=64)
    comment = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["request", "approver"], name="approval_one_decision_per_approver"),
            models.CheckConstraint(condition=~models.Q(approver=models.F("requester")), name="approval_approver_is_not_requester"),
        ]

    def __str__(self):
        return f"{self.approver_name}: {self.decision} #{self.request_id}"


class RequestComment(models.Model):
    """A remark on a request (decisions carry their own comment)."""

    request = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    author_name = models.CharField(max_length=200)
    body = models.TextField()
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.CheckConstraint(condition=~models.Q(body=""), name="request_comment_body_not_empty")]

    def __str__(self):
        return f"{self.author_name} on #{self.request_id}"


class IdempotencyKey(models.Model):
    """The first response to a POST that starts work, kept per user and ``Idempotency-Key`` header,
    so that a client's retry gets it again instead of starting the work twice."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=500)
    #: sha256 of the request body: the same key with another body is refused.
    body_hash = models.CharField(max_length=64)
    #: ``None`` while the first request is still being handled.
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_one_per_user_and_key")]

    def __str__(self):
        return f"{self.key} of {self.user_id} ({self.method} {self.path})"


class Finding(models.Model):
    """One drift condition (docs/semantics.md §10), stored once per fingerprint and updated by every check
    that sees it again; a check that no longer sees it resolves it."""

    class Check(models.TextChoices):
        DEFINITION = "DEFINITION", _("Definition")
        OPERATIONAL = "OPERATIONAL", _("Operational")
        LIVE = "LIVE", _("Live")

    class Kind(models.TextChoices):
        CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH", _("Checksum mismatch")
        MISSING_FROM_CODE = "MISSING_FROM_CODE", _("Applied change missing from code")
        OUT_OF_ORDER = "OUT_OF_ORDER", _("Change ordered before an applied one")
        STALE_STARTED = "STALE_STARTED", _("Started with no live run")
        DEAD_RUN = "DEAD_RUN", _("Run with a dead heartbeat")
        LOCK_PAST_LEASE = "LOCK_PAST_LEASE", _("Lock held past its lease")
        VERIFY_FAILED = "VERIFY_FAILED", _("Verify probe found the effect absent")
        PROBE_FAILED = "PROBE_FAILED", _("Verify probe raised or timed out")
        WORKER_STALE = "worker.stale", _("Worker on code other than the current pipeline")
        SCHEDULE_CHANGED = "SCHEDULE_CHANGED", _("Verification or drift schedule changed")
        APPLIED_OUTSIDE_GOVERNANCE = "applied_outside_governance", _("Django migration applied outside governance")
        UNAPPLIED_OUTSIDE_GOVERNANCE = "unapplied_outside_governance", _("Django migration unapplied outside governance")
        MIGRATE_OVERRIDE = "migrate.override", _("Plain migrate forced in a protected environment")

    class Status(models.TextChoices):
        OPEN = "OPEN", _("Open")
        ACKNOWLEDGED = "ACKNOWLEDGED", _("Acknowledged")
        RESOLVED = "RESOLVED", _("Resolved")
        AUTO_RESOLVED = "AUTO_RESOLVED", _("Resolved automatically")

    ACTIVE = frozenset({Status.OPEN, Status.ACKNOWLEDGED})

    #: sha256 of environment, kind and subject: what makes two sightings the same finding.
    fingerprint = models.CharField(max_length=64, unique=True)
    check_name = models.CharField(max_length=16, choices=Check.choices)
    kind = models.CharField(max_length=32, choices=Kind.choices, db_index=True)
    environment = models.CharField(max_length=64)
    # The subject: a change, a run or the lock.
    change_id = models.CharField(max_length=200, blank=True, default="")
    target = models.CharField(max_length=200, blank=True, default="")
    run_id = models.UUIDField(null=True, blank=True)
    lock_name = models.CharField(max_length=200, blank=True, default="")
    #: A member of a target group (fleet drift, docs/fleet.md): one finding per member and change kind.
    member = models.CharField(max_length=200, blank=True, default="")
    summary = models.TextField()
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)
    times_seen = models.PositiveIntegerField(default=1)
    last_evidence = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN, db_index=True)
    status_changed_at = models.DateTimeField(default=timezone.now)
    #: Who acknowledged or resolved it (a person, or the check that saw it clear), and why.
    status_by = models.CharField(max_length=200, blank=True, default="")
    status_reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-last_seen"]
        permissions = [("acknowledge_finding", _("Can acknowledge or resolve drift findings"))]

    def __str__(self):
        return f"{self.get_kind_display()}: {self.change_id or self.run_id or self.lock_name} ({self.status})"

    @property
    def active(self) -> bool:
        return self.status in self.ACTIVE


class DjangoAdoption(models.Model):
    """A database alias whose existing Django migrations were recorded as applied outside governance
    (docs/django-migrations.md, "Adoption"). One row per alias; until it exists, an alias with recorder
    rows keeps its Django changes BLOCKED with reason ``not_adopted``."""

    alias = models.CharField(max_length=100, unique=True)
    adopted_at = models.DateTimeField(default=timezone.now)
    adopted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    adopted_by_name = models.CharField(max_length=200)
    reason = models.TextField()
    request = models.ForeignKey(ChangeRequest, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    #: The migrations adopted, as ``[{"change_id": ..., "checksum": ...}]``, in graph order.
    migrations = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["alias"]

    def __str__(self):
        return f"adoption of {self.alias} by {self.adopted_by_name}"


class WebhookDelivery(models.Model):
    """One notification of a finding to one webhook URL, retried with backoff until delivered."""

    class Status(models.TextChoices):
        PENDING = "PENDING", _("Pending")
        RETRYING = "RETRYING", _("Retrying")
        DELIVERED = "DELIVERED", _("Delivered")
        FAILED = "FAILED", _("Failed")

    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="deliveries")
    url = models.URLField(max_length=500)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_status_code = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self):
        return f"delivery #{self.pk} of finding {self.finding_id} to {self.url} ({self.status})"


class ChangeSourceQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise ChangeSourceImmutable("a stored change source is never updated")

    def delete(self):
        raise ChangeSourceImmutable("a stored change source is never deleted")


class ChangeSourceImmutable(Exception):
    """A stored change source is written once and never changed."""


class ChangeSource(models.Model):
    """A change's normalised source, stored once per checksum when a request is made and when the
    change is applied, so that a request page can show what moved since it was approved."""

    checksum = models.CharField(max_length=64, unique=True)
    #: ``python`` or ``template``, as the change record says.
    kind = models.CharField(max_length=16, blank=True, default="")
    source = models.TextField()
    created_at = models.DateTimeField(db_default=Now())

    objects = ChangeSourceQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"source {self.checksum[:12]}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ChangeSourceImmutable("a stored change source is never updated")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ChangeSourceImmutable("a stored change source is never deleted")


# -- fleets (issue 22): members of target groups and fleet runs ---------------------------------------


class FleetMember(models.Model):
    """A member of a target group (a schema, a database, a Django alias), as last discovered."""

    target = models.CharField(max_length=200)
    name = models.CharField(max_length=200)
    discovered_at = models.DateTimeField(db_default=Now())
    #: Set when discovery no longer finds it; cleared if it comes back.
    removed_at = models.DateTimeField(null=True, blank=True)
    #: When the member drift check last looked at it: the batches go oldest first (the cursor).
    drift_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["target", "name"]
        constraints = [models.UniqueConstraint(fields=["target", "name"], name="fleet_member_unique")]

    def __str__(self):
        return f"{self.target}/{self.name}"


class FleetRun(models.Model):
    """A fleet run: the parent of one child run per member, dispatched in waves (a canary first).
    Its waves, halt and finish are decided from its children's rows (``fleets.services.fleet_advance``)."""

    class Status(models.TextChoices):
        RUNNING = "RUNNING", _("Running")
        #: Stopped after the canary wave until its FLEET_CONTINUE request is decided.
        AWAITING_APPROVAL = "AWAITING_APPROVAL", _("Awaiting approval")
        FINISHED = "FINISHED", _("Finished")

    class Result(models.TextChoices):
        SUCCEEDED = "SUCCEEDED", _("Succeeded")
        HALTED = "HALTED", _("Halted")
        PARTIAL = "PARTIAL", _("Partial")
        CANCELLED = "CANCELLED", _("Cancelled")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    target = models.CharField(max_length=200)
    environment = models.CharField(max_length=64)
    source = models.CharField(max_length=16)
    actor = models.CharField(max_length=200)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.RUNNING, db_index=True)
    result = models.CharField(max_length=16, choices=Result.choices, blank=True, default="")
    #: The policy: canary size K, wave size M, global limit on members running at once, failures F that halt.
    canary = models.PositiveIntegerField(default=1)
    wave_size = models.PositiveIntegerField(default=10)
    concurrency = models.PositiveIntegerField(default=4)
    max_failures = models.PositiveIntegerField(default=1)
    #: The change ids and checksums of the group's changes when the run was started.
    checksums = models.JSONField(default=dict, blank=True)
    wave = models.IntegerField(default=0)
    halted = models.BooleanField(default=False)
    #: Failures count toward the halt from this moment (set by a resume): earlier ones do not halt again.
    failures_counted_from = models.DateTimeField(null=True, blank=True)
    status_reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now(), db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"fleet run {self.pk} on {self.target} ({self.result or self.status})"


class FleetMemberRun(models.Model):
    """One member of a fleet run: its wave, its child run and where it stands."""

    class Status(models.TextChoices):
        PENDING = "PENDING", _("Pending")
        QUEUED = "QUEUED", _("Queued")
        RUNNING = "RUNNING", _("Running")
        SUCCEEDED = "SUCCEEDED", _("Succeeded")
        FAILED = "FAILED", _("Failed")
        NOT_STARTED = "NOT_STARTED", _("Not started")

    fleet_run = models.ForeignKey(FleetRun, on_delete=models.CASCADE, related_name="members")
    member = models.CharField(max_length=200)
    wave = models.IntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    #: The child run of the latest attempt.
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    attempts = models.IntegerField(default=0)
    reason = models.TextField(blank=True, default="")
    queued_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["wave", "member"]
        constraints = [models.UniqueConstraint(fields=["fleet_run", "member"], name="fleet_member_run_unique")]
        indexes = [models.Index(fields=["fleet_run", "status"], name="fleet_member_run_status_idx")]

    def __str__(self):
        return f"{self.member} in {self.fleet_run_id}: {self.status}"


class EvidencePack(models.Model):
    """An evidence pack asked for (docs/compliance.md, "Evidence packs"): its scope and period, and how
    far the worker that makes it has got. Operational state: the evidence is the zip file and the
    ``evidence.generated`` entry that names its manifest's hash."""

    class Status(models.TextChoices):
        QUEUED = "QUEUED", _("Queued")
        RUNNING = "RUNNING", _("Running")
        DONE = "DONE", _("Done")
        FAILED = "FAILED", _("Failed")

    requested_at = models.DateTimeField(db_default=Now())
    requested_by = models.CharField(max_length=200)
    requested_by_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    environment = models.CharField(max_length=64)
    #: The scope: target systems and members of target groups by name (empty: all of them).
    targets = models.JSONField(default=list, blank=True)
    members = models.JSONField(default=list, blank=True)
    #: The period, ``period_to`` exclusive.
    period_from = models.DateTimeField()
    period_to = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    #: Entries of the period written so far, of ``total``.
    progress = models.BigIntegerField(default=0)
    total = models.BigIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    #: The file's path, relative to FLAMINGOCK_EVIDENCE_DIR.
    file_path = models.CharField(max_length=500, blank=True, default="")
    manifest_sha256 = models.CharField(max_length=64, blank=True, default="")
    #: Each control's result: {control id: PASS | EXCEPTION | NOT_APPLICABLE}.
    results = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-requested_at", "-id"]
        verbose_name = "evidence pack"
        permissions = [("generate_evidence", _("Can generate and download evidence packs"))]
        constraints = [models.CheckConstraint(condition=models.Q(period_to__gt=models.F("period_from")), name="evidencepack_period_not_empty")]

    def __str__(self):
        return f"evidence pack {self.pk} ({self.environment}, {self.period_from:%Y-%m-%d} to {self.period_to:%Y-%m-%d})"
