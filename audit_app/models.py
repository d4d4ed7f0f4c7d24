"""The append-only audit trail and the per-change state projection it maintains."""

from django.conf import settings
from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _


class AppendOnlyError(Exception):
    """Raised on any attempt to change or remove an audit entry."""


class ChangeStateName(models.TextChoices):
    STARTED = "STARTED", _("Started")
    APPLIED = "APPLIED", _("Applied")
    FAILED = "FAILED", _("Failed")
    ROLLED_BACK = "ROLLED_BACK", _("Rolled back")
    ROLLBACK_STARTED = "ROLLBACK_STARTED", _("Rollback started")
    ROLLBACK_FAILED = "ROLLBACK_FAILED", _("Rollback failed")
    MANUAL_MARKED_AS_APPLIED = "MANUAL_MARKED_AS_APPLIED", _("Manually marked as applied")
    MANUAL_MARKED_AS_ROLLED_BACK = "MANUAL_MARKED_AS_ROLLED_BACK", _("Manually marked as rolled back")
    SKIPPED = "SKIPPED", _("Skipped")


#: The event written for each change state (docs/semantics.md §11).
STATE_EVENTS = {
    ChangeStateName.STARTED: "change.started",
    ChangeStateName.APPLIED: "change.applied",
    ChangeStateName.FAILED: "change.failed",
    ChangeStateName.ROLLED_BACK: "change.rolled_back",
    ChangeStateName.ROLLBACK_STARTED: "change.rollback_started",
    ChangeStateName.ROLLBACK_FAILED: "change.rollback_failed",
    ChangeStateName.MANUAL_MARKED_AS_APPLIED: "change.marked_applied",
    ChangeStateName.MANUAL_MARKED_AS_ROLLED_BACK: "change.marked_rolled_back",
    ChangeStateName.SKIPPED: "change.skipped",
}

#: States that count as "the change's effect is in place".
APPLIED_STATES = frozenset({ChangeStateName.APPLIED, ChangeStateName.MANUAL_MARKED_AS_APPLIED})


class AuditEntryQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Audit entries cannot be updated.")

    def delete(self):
        raise AppendOnlyError("Audit entries cannot be deleted.")

    def _raw_delete(self, using):
        # The collector's fast path for cascades calls this with ``using``.
        raise AppendOnlyError("Audit entries cannot be deleted.")

    def bulk_update(self, objs, fields, batch_size=None):
        raise AppendOnlyError("Audit entries cannot be updated.")


class AuditEntry(models.Model):
    """One event in the trail. Written only by :func:`audit_app.services.audit_record`."""

    #: Position in the hash chain, given under the chain-head lock: contiguous from 1.
    seq = models.BigIntegerField(unique=True, null=True, editable=False)
    hash_version = models.PositiveSmallIntegerField(default=1, editable=False)
    prev_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    entry_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    event = models.CharField(max_length=64, db_index=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    environment = models.CharField(max_length=64)
    # The change this entry is about, if any.
    change_id = models.CharField(max_length=200, blank=True, default="")
    stage = models.CharField(max_length=200, blank=True, default="")
    order = models.CharField(max_length=64, blank=True, default="")
    target = models.CharField(max_length=200, blank=True, default="")
    state = models.CharField(max_length=32, choices=ChangeStateName.choices, blank=True, default="")
    checksum = models.CharField(max_length=64, blank=True, default="")
    transaction_strategy = models.CharField(max_length=32, blank=True, default="")
    recovery_strategy = models.CharField(max_length=32, blank=True, default="")
    # Who and where.
    run_id = models.UUIDField(null=True, blank=True, db_index=True)
    actor = models.CharField(max_length=200)
    # A link without a database constraint: deleting a user never touches the trail.
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    host = models.CharField(max_length=255, blank=True, default="")
    pid = models.IntegerField(null=True, blank=True)
    fencing_token = models.BigIntegerField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    rollback_error = models.TextField(blank=True, default="")
    details = models.JSONField(default=dict, blank=True)
    #: The member of a target group this entry is about (fleets); hashed from chain version 2 on.
    member = models.CharField(max_length=200, null=True, blank=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            # Pattern operator classes (PostgreSQL; others ignore them): besides equality, these serve
            # the search by prefix (LIKE 'x%') under any collation.
            models.Index(fields=["change_id", "id"], name="audit_change_id_pfx_idx", opclasses=["varchar_pattern_ops", "int8_ops"]),
            models.Index(fields=["created_at"], name="audit_created_at_idx"),
            # The admin's filters: their values by a skip scan, their pages in chain order (audit_app/admin.py).
            models.Index(fields=["environment", "seq"], name="audit_environment_seq_idx"),
            models.Index(fields=["target", "seq"], name="audit_target_seq_idx"),
            models.Index(fields=["stage", "seq"], name="audit_stage_seq_idx"),
            models.Index(fields=["state", "seq"], name="audit_state_seq_idx"),
            models.Index(fields=["actor", "seq"], name="audit_actor_seq_pfx_idx", opclasses=["varchar_pattern_ops", "int8_ops"]),
            # A member's entries in chain order (fleets).
            models.Index(fields=["member", "seq"], name="audit_member_seq_idx", condition=models.Q(member__isnull=False)),
        ]
        permissions = [("verify_chain", "Can verify the audit chain now")]

    def __str__(self):
        subject = self.change_id or (str(self.run_id) if self.run_id else "")
        return f"#{self.pk} {self.event} {subject}".strip()

    def save(self, *args, **kwargs):
        if self.pk is not None or not self._state.adding:
            raise AppendOnlyError("Audit entries cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit entries cannot be deleted.")


class EntrySubject(models.Model):
    """What an entry is about, for the target and change filters: a side index of the trail, kept by
    its one writer and rebuildable from it (``flamingock audit reindex``), like :class:`ChangeState`.

    An entry of a change names its target and change in its own columns; a governance or drift entry
    (``policy.changed``, ``permission.*``, ``drift.*``) names them in its details
    (:func:`audit_app.subjects.entry_subject`). The row is keyed by the entry's sequence number, so a
    filtered page joins on it and is still read in chain order from this table's indexes."""

    entry = models.OneToOneField(
        AuditEntry,
        to_field="seq",
        db_column="seq",
        primary_key=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="subject",
    )
    target = models.CharField(max_length=200, blank=True, default="")
    change_id = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["target", "entry"], name="audit_subject_target_idx"),
            models.Index(fields=["change_id", "entry"], name="audit_subject_change_idx"),
        ]

    def __str__(self):
        return f"#{self.entry_id}: {self.target or '-'} / {self.change_id or '-'}"


class ChainHead(models.Model):
    """The newest entry of the chain. Its row lock serialises writers for the length of a commit."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    entry_hash = models.CharField(max_length=64)
    entry_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="chainhead_single_row")]

    def __str__(self):
        return f"chain head at {self.seq}"


class AuditCheckpoint(models.Model):
    """A signed statement of the chain head: truncating the tail is detected against it, and an
    export can be checked with the public key alone. Append-only like the trail."""

    seq = models.BigIntegerField()
    entry_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    key_id = models.CharField(max_length=32)
    public_key = models.CharField(max_length=64)
    signature = models.CharField(max_length=128)
    reason = models.CharField(max_length=32, default="schedule")

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-seq", "-id"]

    def __str__(self):
        return f"checkpoint at {self.seq} ({self.created_at:%Y-%m-%d %H:%M:%S})"

    def save(self, *args, **kwargs):
        if self.pk is not None or not self._state.adding:
            raise AppendOnlyError("Checkpoints cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Checkpoints cannot be deleted.")


class Verification(models.Model):
    """The outcome of one recomputation of the chain (``audit verify``, the daily task)."""

    performed_at = models.DateTimeField(db_default=Now())
    mode = models.CharField(max_length=16)
    ok = models.BooleanField()
    entries_checked = models.BigIntegerField(default=0)
    head_seq = models.BigIntegerField(null=True, blank=True)
    first_broken_seq = models.BigIntegerField(null=True, blank=True)
    first_broken_id = models.BigIntegerField(null=True, blank=True)
    problem = models.TextField(blank=True, default="")
    duration_ms = models.FloatField(default=0)
    actor = models.CharField(max_length=200, blank=True, default="")
    #: The first entry this verification recomputed (1 for a full one; after its checkpoint otherwise).
    from_seq = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-performed_at"]

    def __str__(self):
        return f"{'ok' if self.ok else 'BROKEN'} {self.mode} verification at {self.performed_at:%Y-%m-%d %H:%M}"


class ChangeState(models.Model):
    """The latest state of each change: a projection of the trail, kept by its one writer.

    It exists so that a plan reads one small table instead of scanning the history, and so that
    a writer can lock the change's row (``select_for_update``) to re-read its state before it
    commits an entry. The trail stays the truth: this row can always be rebuilt from it.
    """

    change_id = models.CharField(max_length=200, primary_key=True)
    state = models.CharField(max_length=32, choices=ChangeStateName.choices)
    checksum = models.CharField(max_length=64, blank=True, default="")
    entry = models.ForeignKey(AuditEntry, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    run_id = models.UUIDField(null=True, blank=True)
    stage = models.CharField(max_length=200, blank=True, default="")
    order = models.CharField(max_length=64, blank=True, default="")
    target = models.CharField(max_length=200, blank=True, default="")
    #: How many times the change reached an applied state; keys the marker of a separate database.
    applied_count = models.IntegerField(default=0)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        verbose_name = "change state"

    def __str__(self):
        return f"{self.change_id}: {self.state}"


class MemberChangeState(models.Model):
    """The latest state of each change on each member of a target group (fleets): the projection
    :class:`ChangeState` is for a single target, keyed by (member, change) and kept by the same one
    writer from the entries that name a member. The trail stays the truth."""

    member = models.CharField(max_length=200)
    change_id = models.CharField(max_length=200)
    state = models.CharField(max_length=32, choices=ChangeStateName.choices)
    checksum = models.CharField(max_length=64, blank=True, default="")
    entry = models.ForeignKey(AuditEntry, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    run_id = models.UUIDField(null=True, blank=True)
    stage = models.CharField(max_length=200, blank=True, default="")
    order = models.CharField(max_length=64, blank=True, default="")
    target = models.CharField(max_length=200, blank=True, default="")
    #: How many times the change reached an applied state on this member; keys the member's marker.
    applied_count = models.IntegerField(default=0)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        verbose_name = "member change state"
        constraints = [models.UniqueConstraint(fields=["member", "change_id"], name="member_change_state_unique")]
        indexes = [models.Index(fields=["change_id", "state"], name="member_state_change_idx")]

    def __str__(self):
        return f"{self.member}/{self.change_id}: {self.state}"


class QuarantinedEntry(models.Model):
    """A row found in the entries' table that the one writer did not write (beyond the chain head, or
    without a sequence number), moved aside by ``flamingock audit quarantine`` so that the trail can
    be written again. Kept as evidence, exactly as it was stored; append-only like the trail. The
    ``audit.quarantined`` entry that moved it names its id, sequence number and digests."""

    quarantined_at = models.DateTimeField(db_default=Now())
    #: The row's id and sequence number in the entries' table, and the hash it claimed.
    original_id = models.BigIntegerField()
    seq = models.BigIntegerField(null=True, blank=True)
    entry_hash = models.CharField(max_length=64, blank=True, default="")
    #: Every column as stored (times as chain version 1 writes them), and the SHA-256 of its canonical JSON.
    row = models.JSONField()
    row_digest = models.CharField(max_length=64)
    reason = models.TextField()
    actor = models.CharField(max_length=200)
    #: The ``audit.quarantined`` entry that moved it.
    quarantine_entry_id = models.BigIntegerField()

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "quarantined entries"

    def __str__(self):
        return f"quarantined row id {self.original_id} (#{self.seq})"

    def save(self, *args, **kwargs):
        if self.pk is not None or not self._state.adding:
            raise AppendOnlyError("Quarantined entries cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Quarantined entries cannot be deleted.")


class VerificationRequest(models.Model):
    """A verification someone asked for ("Verify now", ``POST /api/v1/audit/verify/``): who asked, and
    how far the worker that runs it has got. Operational state, not evidence: the evidence is the
    ``audit.verify_requested`` entry and the ``audit.verified`` entry of its result."""

    class Status(models.TextChoices):
        QUEUED = "QUEUED", _("Queued")
        RUNNING = "RUNNING", _("Running")
        DONE = "DONE", _("Done")
        FAILED = "FAILED", _("Failed")

    requested_at = models.DateTimeField(db_default=Now())
    requested_by = models.CharField(max_length=200)
    requested_by_user_id = models.IntegerField(null=True, blank=True)
    #: The ``audit.verify_requested`` entry.
    request_entry_id = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    #: The chain head when the worker started, and how many entries it has recomputed so far.
    total = models.BigIntegerField(null=True, blank=True)
    entries_checked = models.BigIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    verification = models.ForeignKey(Verification, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"verification request {self.pk} by {self.requested_by} ({self.status})"
