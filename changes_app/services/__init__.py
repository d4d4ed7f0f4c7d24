"""The services every interface calls (admin, API, command line, Celery tasks), by noun:

- ``catalogue``: target systems and change definitions mirrored as rows;
- ``plan``: what the next run would do, and validation for a deploy gate;
- ``ledger``: the trail's entries as the command line lists them;
- ``representations``: the JSON of every object, which the API's serializers and the command line's
  ``--json`` both give;
- ``runs``: record, claim, execute, finish, reap and cancel runs;
- ``actions``: undo, fix, skip, re-apply and accept-checksum performed directly;
- ``requests``: governed actions as requests, decided by approvers;
- ``workers``: the workers' heartbeats and code, and the current pipeline they are judged against;
- ``notifications``, ``schedules``, ``lock``, ``idempotency``, ``queue``.

This module re-exports the public names so that an interface needs one import.
"""

from changes_app.errors import (
    ActionRefused,
    FlamingockError,
    NotFound,
    PipelineInvalid,
    PolicyInvalid,
    RequestDuplicate,
    RequestExpired,
    RequestNotPending,
    RequestRefused,
    RequestStale,
)
from changes_app.governance.permissions import PermissionRefused, SelfDecisionRefused
from changes_app.governance.policy import approvals_required, policy_set
from changes_app.pipeline.rules import undo_cascade
from changes_app.services.actions import change_accept_checksum, change_act, change_fix, change_reapply, change_skip, change_undo
from changes_app.services.adoption import AdoptionStatus, django_adopt, django_adoption_status
from changes_app.services.break_glass import BreakGlass, BreakGlassInvalid, break_glass_of, reviews_open, reviews_overdue
from changes_app.services.catalogue import catalogue_sync, target_systems_sync
from changes_app.services.ledger import ledger_entries
from changes_app.services.lock import lock_force_release, lock_status
from changes_app.services.plan import ExitCode, Validation, change_plan, pipeline_plan, pipeline_validate
from changes_app.services.rendering import migration_render, plan_render, request_render
from changes_app.services.requests import (
    Submission,
    request_approve,
    request_cancel,
    request_comment,
    request_create,
    request_execute,
    request_reject,
    request_settle,
    request_submit,
    requests_awaiting,
    requests_expire,
    requests_visible,
)
from changes_app.services.reviews import RequestReview, action_preview, request_review
from changes_app.services.runs import run_cancel, run_claim, run_create, run_execute, run_finished, run_queue, run_start, runs_reap
from changes_app.services.sources import change_script, source_diff, source_of, source_store
from changes_app.services.workers import WorkerStale, pipeline_current, pipeline_current_record, workers_list, workers_report, workers_warning

__all__ = [
    "ActionRefused",
    "BreakGlass",
    "BreakGlassInvalid",
    "break_glass_of",
    "reviews_open",
    "reviews_overdue",
    "AdoptionStatus",
    "django_adopt",
    "django_adoption_status",
    "migration_render",
    "plan_render",
    "request_render",
    "ExitCode",
    "FlamingockError",
    "NotFound",
    "PermissionRefused",
    "PipelineInvalid",
    "PolicyInvalid",
    "RequestDuplicate",
    "RequestExpired",
    "RequestNotPending",
    "RequestRefused",
    "RequestStale",
    "SelfDecisionRefused",
    "Submission",
    "RequestReview",
    "Validation",
    "action_preview",
    "approvals_required",
    "catalogue_sync",
    "change_accept_checksum",
    "change_act",
    "change_fix",
    "change_reapply",
    "change_script",
    "change_skip",
    "change_undo",
    "ledger_entries",
    "lock_force_release",
    "lock_status",
    "change_plan",
    "pipeline_plan",
    "pipeline_validate",
    "policy_set",
    "request_approve",
    "request_cancel",
    "request_comment",
    "request_create",
    "request_execute",
    "request_reject",
    "request_settle",
    "request_submit",
    "requests_awaiting",
    "requests_expire",
    "request_review",
    "requests_visible",
    "run_cancel",
    "run_claim",
    "run_create",
    "run_execute",
    "run_finished",
    "run_queue",
    "run_start",
    "runs_reap",
    "source_diff",
    "source_of",
    "source_store",
    "target_systems_sync",
    "undo_cascade",
    "WorkerStale",
    "pipeline_current",
    "pipeline_current_record",
    "workers_list",
    "workers_report",
    "workers_warning",
]
