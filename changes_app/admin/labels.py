"""Words for people: the one mapping from the product's names (states, next actions, run results,
run and request statuses, kinds, events, finding kinds) to what the admin's pages say.

The API and the command line keep the names (scripts read them); every admin page and template
asks this module, so a state reads the same everywhere in the admin.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

#: Latest audit state of a change (docs/semantics.md §3).
STATES = {
    "": _("Not applied yet"),
    "STARTED": _("Started, not finished"),
    "APPLIED": _("Applied"),
    "FAILED": _("Failed"),
    "ROLLED_BACK": _("Rolled back"),
    "ROLLBACK_STARTED": _("Rollback started, not finished"),
    "ROLLBACK_FAILED": _("Rollback failed"),
    "MANUAL_MARKED_AS_APPLIED": _("Marked as applied by hand"),
    "MANUAL_MARKED_AS_ROLLED_BACK": _("Marked as rolled back: the next run applies it"),
    "SKIPPED": _("Held: will not run"),
}

#: What the next run does with a change (the plan's next action).
ACTIONS = {
    "APPLY": _("Will apply"),
    "SKIP": _("Nothing to do"),
    "RECONCILE": _("Will reconcile"),
    "MANUAL_INTERVENTION": _("Needs a human"),
    "AWAITING_APPROVAL": _("Awaiting approval"),
    "BLOCKED": _("Blocked"),
    "OUT_OF_ORDER": _("Out of order"),
    "NOT_APPLICABLE": _("Not for this environment"),
}

#: What a pipeline run planned for a change (its result says what happened).
PLANNED = {
    "APPLY": _("Apply"),
    "SKIP": _("Nothing to do"),
    "RECONCILE": _("Reconcile"),
    "MANUAL_INTERVENTION": _("Needs a human"),
    "AWAITING_APPROVAL": _("Awaiting approval"),
    "BLOCKED": _("Blocked"),
    "OUT_OF_ORDER": _("Out of order"),
    "NOT_APPLICABLE": _("Not for this environment"),
}

#: How a change recovers from a failure it left uncertain.
RECOVERY = {
    "MANUAL_INTERVENTION": _("Manual intervention: a person decides"),
    "ALWAYS_RETRY": _("Always retry: safe to run again"),
}

#: A change's result in one run.
RESULTS = {
    "APPLIED": _("Applied"),
    "FAILED": _("Failed"),
    "ROLLED_BACK": _("Rolled back"),
    "NOT_REACHED": _("Not reached"),
    "ALREADY_APPLIED": _("Already applied"),
    "RECONCILED": _("Reconciled"),
    "BLOCKED": _("Blocked"),
    "AWAITING_APPROVAL": _("Awaiting approval"),
    "NOT_APPLICABLE": _("Not for this environment"),
    "SKIPPED": _("Held (skipped)"),
    "ABORTED": _("Aborted"),
    "NOT_PERMITTED": _("Not permitted"),
    "SKIP": _("Nothing to do"),
    "CHECKSUM_ACCEPTED": _("Checksum accepted"),
    "MANUAL_MARKED_AS_APPLIED": _("Marked as applied"),
    "MANUAL_MARKED_AS_ROLLED_BACK": _("Marked as rolled back"),
}

RUN_STATUSES = {
    "QUEUED": _("Queued"),
    "RUNNING": _("Running"),
    "SUCCEEDED": _("Succeeded"),
    "FAILED": _("Failed"),
    "BLOCKED": _("Blocked"),
    "AWAITING_APPROVAL": _("Awaiting approval"),
    "LOCKED": _("Lock not acquired"),
    "ABORTED": _("Aborted"),
    "NO_CHANGES": _("Nothing to do"),
}

#: What a run did (its kind), as the verb of the change it acted on.
RUN_KINDS = {
    "PIPELINE": _("Pipeline run"),
    "UNDO": _("Undo"),
    "FIX": _("Manual fix"),
    "SKIP": _("Skip"),
    "REAPPLY": _("Release for re-apply"),
    "ACCEPT_CHECKSUM": _("Accept checksum"),
    "ADOPT": _("Adopt a database's Django migrations"),
}

REQUEST_KINDS = {
    "APPLY": _("Apply"),
    "UNDO": _("Undo"),
    "REAPPLY": _("Re-apply"),
    "MARK_APPLIED": _("Mark as applied"),
    "MARK_ROLLED_BACK": _("Mark as rolled back"),
    "SKIP": _("Skip"),
    "ACCEPT_CHECKSUM": _("Accept checksum"),
    "ADOPT": _("Adopt a database's Django migrations"),
    "REVIEW": _("Break-glass review"),
    "FLEET_RETRY": _("Retry a fleet run's failed members"),
    "FLEET_CONTINUE": _("Continue a fleet run after its canary"),
}

REQUEST_STATUSES = {
    "PENDING": _("Awaiting approval"),
    "APPROVED": _("Approved"),
    "REJECTED": _("Rejected"),
    "EXPIRED": _("Expired"),
    "CANCELLED": _("Cancelled"),
    "EXECUTED": _("Executed"),
    "FAILED": _("Failed"),
}

FINDING_KINDS = {
    "CHECKSUM_MISMATCH": _("Checksum mismatch: edited after it was applied"),
    "MISSING_FROM_CODE": _("Applied change missing from code"),
    "OUT_OF_ORDER": _("Change ordered before an applied one"),
    "STALE_STARTED": _("Started with no live run"),
    "DEAD_RUN": _("Run with a dead heartbeat"),
    "LOCK_PAST_LEASE": _("Lock held past its lease"),
    "VERIFY_FAILED": _("Verify probe found the effect absent"),
    "PROBE_FAILED": _("Verify probe raised or timed out"),
    "worker.stale": _("A worker runs other code than the current pipeline"),
    "SCHEDULE_CHANGED": _("A verification or drift schedule was changed"),
    "applied_outside_governance": _("Django migration applied outside governance"),
    "unapplied_outside_governance": _("Django migration unapplied outside governance"),
    "migrate.override": _("Plain migrate forced in a protected environment"),
}

#: The audit trail's events (docs/semantics.md §8 and §11).
EVENTS = {
    "change.catalogued": _("Catalogued"),
    "change.started": _("Apply started"),
    "change.applied": _("Applied"),
    "change.failed": _("Apply failed"),
    "change.rolled_back": _("Rolled back"),
    "change.rollback_started": _("Rollback started"),
    "change.rollback_failed": _("Rollback failed"),
    "change.marked_applied": _("Marked as applied"),
    "change.marked_rolled_back": _("Marked as rolled back"),
    "change.skipped": _("Held (skipped)"),
    "change.checksum_accepted": _("Checksum accepted"),
    "change.adopted": _("Adopted"),
    "migrate.override": _("Plain migrate forced"),
    "run.queued": _("Run queued"),
    "run.started": _("Run started"),
    "run.finished": _("Run finished"),
    "run.aborted": _("Run aborted"),
    "run.cancel_requested": _("Run cancellation requested"),
    "request.created": _("Requested"),
    "request.approved": _("Approved"),
    "request.rejected": _("Rejected"),
    "request.expired": _("Request expired"),
    "request.cancelled": _("Request cancelled"),
    "request.commented": _("Commented"),
    "lock.acquired": _("Lock acquired"),
    "lock.released": _("Lock released"),
    "lock.lost": _("Lock lost"),
    "lock.force_released": _("Lock force-released"),
    "drift.detected": _("Drift detected"),
    "drift.resolved": _("Drift resolved"),
    "drift.acknowledged": _("Drift acknowledged"),
    "permission.granted": _("Permission granted"),
    "permission.revoked": _("Permission revoked"),
    "policy.changed": _("Approval policy changed"),
    "audit.verified": _("Audit chain verified"),
    "audit.verify_requested": _("Audit verification requested"),
    "evidence.generated": _("Evidence pack generated"),
    "access.refused": _("Access refused"),
    "break_glass.used": _("Break-glass used"),
    "review.overdue": _("Break-glass review overdue"),
    "schedule.changed": _("Schedule changed"),
    "auth.login": _("Signed in"),
    "auth.login_failed": _("Sign-in failed"),
    "fleet.started": _("Fleet run started"),
    "fleet.wave_started": _("Fleet wave started"),
    "fleet.halted": _("Fleet run halted"),
    "fleet.finished": _("Fleet run finished"),
    "fleet.resumed": _("Fleet run resumed"),
    "fleet.retry_requested": _("Fleet run: failed members retried"),
    "member.added": _("Group member added"),
    "member.removed": _("Group member removed"),
}

#: A fleet run's result, and where each of its members stands (docs/fleet.md).
FLEET_RESULTS = {
    "": _("In progress"),
    "SUCCEEDED": _("Succeeded"),
    "HALTED": _("Halted"),
    "PARTIAL": _("Partial: some members failed"),
    "CANCELLED": _("Cancelled"),
}

FLEET_MEMBER_STATUSES = {
    "PENDING": _("Waiting for its wave"),
    "QUEUED": _("Queued"),
    "RUNNING": _("Running"),
    "SUCCEEDED": _("Succeeded"),
    "FAILED": _("Failed"),
    "NOT_STARTED": _("Not started"),
}

#: The fleet view's member filter (``fleets.overview.MEMBER_FILTERS``).
FLEET_MEMBER_FILTERS = {
    "": _("All members"),
    "attention": _("Failed or blocked"),
    "failed": _("Failed (an error)"),
    "blocked": _("Blocked (needs a person, an approval or the lock)"),
    "not_started": _("Not started"),
    "running": _("Queued or running"),
    "pending": _("Waiting for their wave"),
    "succeeded": _("Succeeded"),
}

TABLES = {
    "state": STATES,
    "action": ACTIONS,
    "planned": PLANNED,
    "recovery": RECOVERY,
    "result": RESULTS,
    "run_status": RUN_STATUSES,
    "run_kind": RUN_KINDS,
    "request_kind": REQUEST_KINDS,
    "request_status": REQUEST_STATUSES,
    "finding_kind": FINDING_KINDS,
    "event": EVENTS,
    "fleet_result": FLEET_RESULTS,
    "fleet_member_status": FLEET_MEMBER_STATUSES,
    "fleet_member_filter": FLEET_MEMBER_FILTERS,
}


def label(table: str, name: str | None) -> str:
    """What people read for ``name`` in ``table``; an unknown name reads as itself, in words."""
    name = name or ""
    found = TABLES[table].get(name)
    if found is not None:
        return str(found)
    return name.replace("_", " ").replace(".", " ").capitalize()


def progress_text(done: int, total: int) -> str:
    """A run's progress in words: "3 of 5 changes"; a count never reads larger than its total."""
    total = max(total or 0, done or 0)
    if not total:
        return str(_("no changes"))
    noun = _("change") if total == 1 else _("changes")
    return f"{done or 0} of {total} {noun}"


def result_action(run_kind: str, planned_action: str) -> str:
    """What a run did to a change, in words: a single-change run's own verb (an undo undid it),
    a pipeline run's planned action."""
    if run_kind and run_kind != "PIPELINE":
        return label("run_kind", run_kind)
    return label("planned", planned_action)
