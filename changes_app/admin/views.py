"""The admin's extra pages: the dashboard, the action forms, the issues page, run progress, request
decisions, approval policies and the lock.

Each view parses input, checks the object against the user (403 when the user's role cannot act on
it at all), calls one service, and reports the outcome with ``message_user``. A service's refusal
(bad state, self-approval, expired request...) is shown as its message and changes nothing.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from guardian.shortcuts import get_objects_for_user

from audit_app.services import Actor
from changes_app import services
from changes_app.admin import labels
from changes_app.conf import current_environment, environments_declared
from changes_app.engine.actions import ACTIONS
from changes_app.fleets.groups import group_names
from changes_app.fleets.overview import fleets_in_progress
from changes_app.governance.identity import user_actor
from changes_app.governance.permissions import APPROVE, OPERATE, PermissionRefused, actor_may
from changes_app.governance.policy import BREAK_GLASS
from changes_app.governance.refusals import NOT_VISIBLE, refusal_record
from changes_app.governance.visibility import change_targets_seen, findings_visible, run_shown, runs_visible, target_names_seen
from changes_app.models import ChangeRecord, ChangeRequest, Finding, Run, TargetSystem
from changes_app.pipeline.guidance import issue_details
from changes_app.pipeline.plan import Action, Plan
from changes_app.pipeline.rules import Subject, undo_check

Kind = ChangeRequest.Kind

# -- who sees and does what (docs/semantics.md §9: global = all target systems, object = these) -----------------


def actor_of(request) -> Actor:
    return user_actor(request.user, via="ui")


def targets_seen(user, view_permission: str) -> set[str] | None:
    """The target systems whose rows of a model ``user`` sees (``None``: all): the one rule."""
    return target_names_seen(user, view_permission)


def may_operate(user, target: str) -> bool:
    return actor_may(user_actor(user, via="ui"), OPERATE, target)


def may_approve(user, target: str) -> bool:
    return actor_may(user_actor(user, via="ui"), APPROVE, target)


def operates_any(user) -> bool:
    if not user.is_active or not user.is_authenticated:
        return False
    return get_objects_for_user(user, OPERATE, klass=TargetSystem, accept_global_perms=True).exists()


def is_platform_admin(user) -> bool:
    """Configures policies and object permissions (the Platform admin role, or a superuser)."""
    return user.has_perm("changes_app.change_approvalpolicy") and user.has_perm("guardian.add_userobjectpermission")


def runs_seen(user, runs):
    return runs_visible(user, runs)


def plan_or_none(request) -> Plan | None:
    """The plan of the pipeline once per page; an invalid pipeline is reported, not raised."""
    try:
        return services.pipeline_plan()
    except services.PipelineInvalid as invalid:
        messages.error(request, str(invalid))
        return None


def change_plan_or_none(request, change_id: str) -> Plan | None:
    """The plan as it stands for one change (``services.change_plan``), for its page."""
    try:
        return services.change_plan(change_id)
    except services.PipelineInvalid as invalid:
        messages.error(request, str(invalid))
        return None


def offered_actions(user, record: ChangeRecord, plan: Plan | None) -> list[tuple[str, str]]:
    """(kind, label) of the actions this user may start on ``record``: those whose rule allows
    them now (``pipeline.rules``, as the services check); a requested apply where the plan holds
    the change for approval."""
    if plan is None or record.removed_at or not may_operate(user, record.target):
        return []
    item = plan.item(record.change_id)
    if item is None:
        return []
    subject = Subject(item.change, item.state, item.strategy)
    offered = []
    for kind, action in ACTIONS.items():
        if kind == Kind.APPLY:
            if item.action == Action.AWAITING_APPROVAL:
                offered.append((kind, action.label))
            continue
        try:
            if kind == Kind.UNDO and plan.recorded is not None:
                # The undo rule, on the states the plan of this page read (``rules.undo_check``).
                undo_check(record.change_id, recorded=plan.recorded)
            else:
                action.check(subject, action, current_environment())
        except services.FlamingockError:
            continue
        offered.append((kind, action.label))
    return offered


def _context(model_admin, request, title: str, **extra) -> dict:
    return {**model_admin.admin_site.each_context(request), "opts": model_admin.model._meta, "title": title, **extra}


def absent(model_admin, request, object_id, message: str = "", *, hidden: bool = False, action: str = "") -> HttpResponseRedirect:
    """What every extra page answers for an object that is missing or that the user cannot see,
    alike (no existence oracle): a warning (by default Django's own for a missing object) and the
    index, as Django's change view answers. An object that exists but is ``hidden`` from the user
    is a refusal all the same: recorded as evidence (``access.refused``, reason ``not_visible``),
    where only the trail's readers see it."""
    if hidden:
        refusal_record(
            reason=NOT_VISIBLE, action=f"admin {action}".strip(), object=f"{model_admin.model._meta.model_name} {object_id}", actor=actor_of(request)
        )
    if not message:
        message = _("%(name)s with ID “%(key)s” doesn’t exist. Perhaps it was deleted?") % {
            "name": model_admin.model._meta.verbose_name,
            "key": object_id,
        }
    model_admin.message_user(request, message, messages.WARNING)
    return HttpResponseRedirect(reverse("admin:index", current_app=model_admin.admin_site.name))


def _back(model_admin, name: str, *args) -> HttpResponseRedirect:
    opts = model_admin.model._meta
    return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_{name}", args=args))


# -- dashboard ---------------------------------------------------------------------------------------


CHART_DAYS = 14
CHART_COLOURS = {"SUCCEEDED": "#2e7d32", "NO_CHANGES": "#81c784", "FAILED": "#c62828", "ABORTED": "#6a1b9a", "BLOCKED": "#ef6c00"}


def runs_chart(runs) -> dict:
    """Runs per day by outcome over the last two weeks, as bars for an inline SVG."""
    today = timezone.localdate()
    first = today - timedelta(days=CHART_DAYS - 1)
    counts: dict = {}
    for created_at, status in runs.filter(created_at__date__gte=first).values_list("created_at", "status"):
        counts.setdefault(timezone.localtime(created_at).date(), Counter())[status] += 1
    top = max([sum(day.values()) for day in counts.values()] or [1])
    height, width = 120, 30
    bars = []
    for index in range(CHART_DAYS):
        day = first + timedelta(days=index)
        y = height
        segments = []
        for status, count in sorted(counts.get(day, Counter()).items()):
            h = round(count * height / top, 1)
            y -= h
            segments.append({"status": status, "count": count, "y": y, "h": h, "colour": CHART_COLOURS.get(status, "#757575")})
        bars.append(
            {"x": index * width + 4, "day": day, "label": day.strftime("%d"), "segments": segments, "total": sum(counts.get(day, {}).values())}
        )
    legend = sorted({s["status"] for bar in bars for s in bar["segments"]})
    return {
        "bars": bars,
        "width": CHART_DAYS * width + 8,
        "height": height,
        "top": top,
        "legend": [(status, CHART_COLOURS.get(status, "#757575")) for status in legend],
    }


#: How many open drift findings the dashboard lists (the count covers them all).
DASHBOARD_FINDINGS = 5


def open_findings(user) -> dict | None:
    """Open drift findings of this environment, oldest first: ``None`` for a user who may not view findings."""
    if not user.has_perm("changes_app.view_finding"):
        return None
    found = Finding.objects.filter(environment=current_environment(), status=Finding.Status.OPEN).order_by("first_seen", "pk")
    return {"count": found.count(), "first": list(found[:DASHBOARD_FINDINGS])}


def findings_active(user) -> list[dict]:
    """The drift findings of this environment that still need a human (open or acknowledged) and
    that ``user`` sees, in words: what Issues, the dashboard and each change's page all list."""
    found = findings_visible(user).filter(environment=current_environment(), status__in=Finding.ACTIVE).order_by("first_seen", "pk")
    return [
        {"finding": f, "label": labels.label("finding_kind", f.kind), "subject": f.change_id or (str(f.run_id) if f.run_id else "") or f.lock_name}
        for f in found[:200]
    ]


def dashboard_context(request) -> dict:
    """What needs attention, filtered to what the user may see."""
    user = request.user
    if not user.is_active or not user.is_staff:
        return {}
    seen = targets_seen(user, "changes_app.view_changerecord")
    plan = plan_or_none(request)
    issues, blocked = [], []
    if plan is not None:
        issues = [issue_details(item) for item in plan.issues if seen is None or item.change.target in seen]
        blocked = [
            {"stage": stage.name, "by": stage.blocked_by.change.id, "reason": stage.blocked_by.reason}
            for stage in plan.stages
            if stage.blocked_by is not None and (seen is None or stage.blocked_by.change.target in seen)
        ]
    runs = runs_seen(user, Run.objects.all())
    drift = findings_active(user)
    for issue in issues:
        issue["state_label"] = labels.label("state", issue["latest_state"])
    reviews_in_time, reviews_late = services.reviews_open(requests=services.requests_visible(actor=actor_of(request)))
    return {
        # Break-glass reviews still open, and those overdue (docs/break-glass.md).
        "flk_reviews_open": list(reviews_in_time[:20]),
        "flk_reviews_overdue": list(reviews_late[:20]),
        "flk_dashboard": True,
        "flk_issues": issues,
        "flk_blocked": blocked,
        "flk_awaiting": list(services.requests_awaiting(actor=actor_of(request))[:20]),
        # Their status reasons name changes: a hidden change's id is masked (visibility.run_shown).
        "flk_failed_runs": [
            run_shown(run, seen) for run in runs.filter(status__in=[Run.Status.FAILED, Run.Status.ABORTED]).order_by("-created_at")[:10]
        ],
        "flk_lock": services.lock_status(),
        "flk_chart": runs_chart(runs),
        "flk_environment": current_environment(),
        "flk_findings": open_findings(user),
        "flk_drift": drift,
        "flk_issue_count": len(issues) + len(drift),
        # Fleet runs in progress with their wave progress (docs/fleet.md, "The fleet view").
        "flk_fleets": fleets_in_progress(user),
    }


# -- change actions: a reason form, then a confirmation page -------------------------------------------


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason"), widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), error_messages={"required": _("A reason is required.")}
    )

    def clean_reason(self):
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError(_("A reason is required."))
        return reason


def change_action_view(model_admin, request, kind: str, change_id: str):
    """Request (or, where nothing governs it, perform) one action on a change."""
    if kind not in ACTIONS:
        model_admin.message_user(request, _("Unknown action %(kind)s.") % {"kind": kind}, messages.ERROR)
        return _back(model_admin, "changelist")
    # A change the user cannot see answers as a missing one: no existence oracle.
    record = model_admin.get_queryset(request).filter(change_id=change_id).first()
    if record is None or not model_admin.has_view_permission(request, record):
        hidden = record is not None or ChangeRecord.objects.filter(change_id=change_id).exists()
        return absent(model_admin, request, change_id, _("No change %(id)s: nothing was done.") % {"id": change_id}, hidden=hidden, action=kind)
    if not may_operate(request.user, record.target):
        raise PermissionDenied
    cascade, refusal = [], ""
    if kind == Kind.UNDO:
        try:
            cascade = services.undo_cascade(change_id)
        except services.FlamingockError as error:
            refusal = str(error)
    try:
        gate = services.action_preview(kind=kind, change_id=change_id, actor=actor_of(request))
    except services.FlamingockError as error:
        gate, refusal = None, refusal or str(error)
    # Break-glass (docs/break-glass.md): offered to its holders where the action awaits approvers.
    may_break_glass = gate is not None and not gate.runs_now and actor_may(actor_of(request), BREAK_GLASS, record.target)
    if request.method == "POST" and request.POST.get("emergency") == "yes" and not refusal:
        try:
            emergency = services.break_glass_of(reason=request.POST.get("emergency_reason"), incident=request.POST.get("emergency_incident"))
            submitted = services.request_submit(
                kind=kind, change_id=change_id, actor=actor_of(request), reason="", source=Run.Source.UI, inline=False, break_glass=emergency
            )
        except (services.FlamingockError, PermissionRefused) as error:
            model_admin.message_user(request, str(error), messages.ERROR)
            return HttpResponseRedirect(request.path)
        return _submitted(model_admin, request, record, submitted)
    form = ReasonForm(request.POST or None)
    confirming = request.method == "POST" and form.is_valid()
    if confirming and request.POST.get("confirm") == "yes" and not refusal:
        try:
            submitted = services.request_submit(
                kind=kind, change_id=change_id, actor=actor_of(request), reason=form.cleaned_data["reason"], source=Run.Source.UI, inline=False
            )
        except (services.FlamingockError, PermissionRefused) as error:
            model_admin.message_user(request, str(error), messages.ERROR)
            return _back(model_admin, "change", record.pk)
        return _submitted(model_admin, request, record, submitted)
    return TemplateResponse(
        request,
        "admin/changes_app/action_confirm.html",
        _context(
            model_admin,
            request,
            f"{ACTIONS[kind].label}: {change_id}",
            record=record,
            kind=kind,
            label=ACTIONS[kind].label,
            form=form,
            confirming=confirming and not refusal,
            cascade=cascade,
            refusal=refusal,
            gate=gate,
            may_break_glass=may_break_glass and not refusal,
        ),
    )


def _submitted(model_admin, request, record: ChangeRecord, submitted) -> HttpResponseRedirect:
    if submitted.awaiting_approval:
        req = submitted.request
        model_admin.message_user(
            request, f"Request #{req.pk} ({req.get_kind_display()}) awaits {req.required_approvals} approval(s).", messages.SUCCESS
        )
        return HttpResponseRedirect(reverse("admin:changes_app_changerequest_change", args=[req.pk]))
    if submitted.run is not None:
        model_admin.message_user(request, f"Run {submitted.run.id}: {submitted.run.get_status_display()}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:changes_app_run_change", args=[submitted.run.pk]))
    req = submitted.request
    model_admin.message_user(request, f"Request #{req.pk} is {req.get_status_display().lower()}.", messages.SUCCESS)
    return HttpResponseRedirect(reverse("admin:changes_app_changerequest_change", args=[req.pk]))


def issues_view(model_admin, request):
    """Every issue with its error and guidance, and the fix forms beside it."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    seen = targets_seen(request.user, "changes_app.view_changerecord")
    plan = plan_or_none(request)
    issues = []
    for item in plan.issues if plan else []:
        if seen is not None and item.change.target not in seen:
            continue
        details = issue_details(item)
        details["may_fix"] = may_operate(request.user, item.change.target)
        details["state_label"] = labels.label("state", details["latest_state"])
        drifted = item.recorded_checksum and item.recorded_checksum != item.change.checksum
        if item.action == Action.OUT_OF_ORDER:  # never ran: skipping it (or renaming it) is the fix
            details["fixes"] = [(Kind.SKIP, ACTIONS[Kind.SKIP].label)]
            issues.append(details)
            continue
        details["fixes"] = [(Kind.ACCEPT_CHECKSUM, ACTIONS[Kind.ACCEPT_CHECKSUM].label)] if drifted else [
            (Kind.MARK_APPLIED, ACTIONS[Kind.MARK_APPLIED].label),
            (Kind.MARK_ROLLED_BACK, ACTIONS[Kind.MARK_ROLLED_BACK].label),
        ]  # fmt: skip
        issues.append(details)
    findings = findings_active(request.user)
    return TemplateResponse(request, "admin/changes_app/issues.html", _context(model_admin, request, _("Issues"), issues=issues, findings=findings))


# -- runs ------------------------------------------------------------------------------------------


def plan_rows(user, plan: Plan | None) -> tuple[list[dict], list[tuple[str, int]]]:
    """The plan's changes the user sees, with their next action in words, and how many of each."""
    seen = targets_seen(user, "changes_app.view_changerecord")
    rows = [
        {
            "stage": item.change.stage,
            "order": item.change.order,
            "id": item.change.id,
            "target": item.change.target,
            "action": item.action.value,
            "action_label": labels.label("action", item.action.value),
            "reason": item.reason,
        }
        for item in (plan.items if plan else [])
        if seen is None or item.change.target in seen
    ]
    counts = Counter(row["action"] for row in rows)
    return rows, [(labels.label("action", action.value), counts[action.value]) for action in Action if counts[action.value]]


def run_pipeline_view(model_admin, request):
    """Run the pipeline with a plan (operators of at least one target system): the plan and a
    reason, then a confirmation, then the run is queued on a worker."""
    if not operates_any(request.user):
        raise PermissionDenied
    form = ReasonForm(request.POST or None)
    confirming = request.method == "POST" and form.is_valid()
    if confirming and request.POST.get("confirm") == "yes":
        try:
            run = services.run_queue(actor=actor_of(request), source=Run.Source.UI, reason=form.cleaned_data["reason"])
        except services.FlamingockError as error:
            model_admin.message_user(request, str(error), messages.ERROR)
            return _back(model_admin, "changelist")
        model_admin.message_user(request, f"Run {run.id} queued.", messages.SUCCESS)
        return _back(model_admin, "change", run.pk)
    plan = plan_or_none(request)
    rows, summary = plan_rows(request.user, plan)
    context = _context(
        model_admin, request, _("Run the pipeline"), form=form, confirming=confirming, rows=rows, summary=summary, plan=plan,
        environment=current_environment(), will_run=sum(1 for row in rows if row["action"] in (Action.APPLY, Action.RECONCILE)),
    )  # fmt: skip
    return TemplateResponse(request, "admin/changes_app/run/run_plan.html", context)


def run_page(user, run: Run) -> dict:
    """What a run's page shows beside its fields: its results in words with links to their
    changes, its progress, the requests it executed and who approved them."""
    run = run_shown(run, change_targets_seen(user))
    records = dict(ChangeRecord.objects.filter(change_id__in={row.get("change_id") for row in run.results}).values_list("change_id", "pk"))
    results = [
        {
            **row,
            "record_pk": records.get(row.get("change_id")),
            "action_label": labels.result_action(run.kind, row.get("action", "")),
            "result_label": labels.label("result", row.get("result", "")),
        }
        for row in run.results
    ]
    requests = list(run.requests.prefetch_related("approvals").order_by("pk"))
    approvers = sorted({a.approver_name for r in requests for a in r.approvals.all() if a.decision == "APPROVE"})
    return {
        "flk_results": results,
        "flk_progress": labels.progress_text(run.progress_done, run.progress_total),
        "flk_status_label": labels.label("run_status", run.status),
        "subtitle": f"{labels.label('run_kind', run.kind)} {str(run.pk)[:8]} ({labels.label('run_status', run.status).lower()})",
        "flk_requests": requests,
        "flk_approvers": approvers,
        "flk_released": run.kind == Run.Kind.REAPPLY and run.status == Run.Status.SUCCEEDED,
        "may_run": operates_any(user),
    }


def run_progress_view(model_admin, request, object_id):
    """The run's progress as JSON, for the live progress bar; the same permission and the same
    visibility as its page (``RunAdmin.get_object``: hidden changes masked)."""
    run = model_admin.get_object(request, object_id) if _uuid(object_id) else None
    if run is None or not model_admin.has_view_permission(request, run):
        return JsonResponse({"error": "not found"}, status=404)
    return JsonResponse(
        {
            "status": run.status,
            "finished": run.finished,
            "progress_done": run.progress_done,
            "progress_total": run.progress_total,
            "progress_text": labels.progress_text(run.progress_done, run.progress_total),
            "status_label": labels.label("run_status", run.status),
            "current_change": run.current_change,
            "status_reason": run.status_reason,
        }
    )


def run_cancel_view(model_admin, request, object_id):
    # A run the user cannot see answers as a missing one: no existence oracle.
    run = model_admin.get_queryset(request).filter(pk=object_id).first() if _uuid(object_id) else None
    if run is None:
        hidden = bool(_uuid(object_id)) and Run.objects.filter(pk=object_id).exists()
        return absent(model_admin, request, object_id, hidden=hidden, action="cancel")
    if request.method != "POST":
        return _back(model_admin, "changelist")
    if not model_admin.may_cancel(request, run):
        raise PermissionDenied
    try:
        run = services.run_cancel(run_id=run.pk, actor=actor_of(request))
    except (services.FlamingockError, PermissionRefused) as error:
        model_admin.message_user(request, str(error), messages.ERROR)
    else:
        model_admin.message_user(request, f"Run {run.id}: cancellation requested.", messages.SUCCESS)
    return _back(model_admin, "change", object_id)


def _uuid(value) -> bool:
    import uuid

    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


class ForceReleaseForm(ReasonForm):
    pass


def lock_view(model_admin, request):
    """The lock: free, held, or held past its lease; platform admins force-release a held one
    with a reason, then confirm (audited). A free lock offers no release."""
    user = request.user
    if not (user.has_perm("changes_app.view_locklease") or user.has_perm("changes_app.change_locklease")):
        raise PermissionDenied
    may_release = user.has_perm("changes_app.change_locklease")
    form = ForceReleaseForm(request.POST or None)
    holder = services.lock_status()
    confirming = False
    if request.method == "POST":
        if not may_release:
            raise PermissionDenied
        if form.is_valid():
            # A held lock is confirmed first; a free one goes to the service, which says it is not held.
            confirming = holder is not None and request.POST.get("confirm") != "yes"
            if not confirming:
                try:
                    released = services.lock_force_release(actor=actor_of(request), reason=form.cleaned_data["reason"])
                except (services.FlamingockError, PermissionRefused) as error:
                    model_admin.message_user(request, str(error), messages.ERROR)
                else:
                    model_admin.message_user(request, f"Lock released (held by {released.holder}, run {released.run_id}).", messages.SUCCESS)
                return HttpResponseRedirect(request.path)
    state = "free" if holder is None else ("expired" if holder.expired else "held")
    return TemplateResponse(
        request,
        "admin/changes_app/lock.html",
        _context(model_admin, request, _("The pipeline lock"), holder=holder, state=state, may_release=may_release, form=form, confirming=confirming),
    )


# -- requests ----------------------------------------------------------------------------------------


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", _("Approve")), ("reject", _("Reject")), ("cancel", _("Cancel")), ("comment", _("Comment"))])
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 80}))


def request_decide_view(model_admin, request, object_id):
    """Approve, reject, cancel or comment on a request."""
    if request.method != "POST":
        return _back(model_admin, "change", object_id)
    # A request the user cannot see answers as a missing one: no existence oracle.
    visible = model_admin.get_queryset(request).select_related("target_system")
    change_request = visible.filter(pk=object_id).first() if str(object_id).isdigit() else None
    if change_request is None or not model_admin.has_view_permission(request, change_request):
        hidden = change_request is not None or (str(object_id).isdigit() and ChangeRequest.objects.filter(pk=object_id).exists())
        return absent(model_admin, request, object_id, _("No request #%(id)s: nothing was done.") % {"id": object_id}, hidden=hidden, action="decide")
    form = DecisionForm(request.POST)
    if not form.is_valid():
        model_admin.message_user(request, _("Choose approve, reject, cancel or comment."), messages.ERROR)
        return _back(model_admin, "change", object_id)
    decision, comment = form.cleaned_data["decision"], form.cleaned_data["comment"]
    if decision in ("approve", "reject") and not model_admin.may_decide(request, change_request):
        raise PermissionDenied
    if decision == "cancel" and not model_admin.may_cancel(request, change_request):
        raise PermissionDenied
    if decision == "comment" and not model_admin.may_comment(request, change_request):
        raise PermissionDenied
    actor = actor_of(request)
    try:
        if decision == "approve":
            done = services.request_approve(request_id=change_request.pk, actor=actor, comment=comment)
            text = f"Request #{done.pk}: your approval is recorded; the request is {done.get_status_display().lower()}."
            if done.run_id:
                text += f" Run {done.run_id} executes it."
        elif decision == "reject":
            done = services.request_reject(request_id=change_request.pk, actor=actor, comment=comment)
            text = f"Request #{done.pk} rejected."
        elif decision == "cancel":
            done = services.request_cancel(request_id=change_request.pk, actor=actor, comment=comment)
            text = f"Request #{done.pk} cancelled."
        else:
            services.request_comment(request_id=change_request.pk, actor=actor, body=comment)
            text = f"Comment added to request #{change_request.pk}."
    except (services.FlamingockError, PermissionRefused) as error:
        model_admin.message_user(request, str(error), messages.ERROR)
    else:
        model_admin.message_user(request, text, messages.SUCCESS)
    return _back(model_admin, "change", object_id)


# -- target systems ------------------------------------------------------------------------------------


class PolicyForm(ReasonForm):
    """The environment is chosen from the declared ones (a typo cannot create a policy); the
    service refuses any other all the same."""

    environment = forms.ChoiceField(
        label=_("Environment"),
        choices=(),
        error_messages={"invalid_choice": _("%(value)s is not a declared environment (FLAMINGOCK_ENVIRONMENTS); choose one from the list.")},
    )
    required_approvals = forms.IntegerField(label=_("Approvals required"), min_value=0, max_value=10, initial=1)
    fleet_canary_approval = forms.BooleanField(label=_("Fleet runs stop after their canary wave for a fresh approval"), required=False, initial=False)
    field_order = ["environment", "required_approvals", "fleet_canary_approval", "reason"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["environment"].choices = [(name, name) for name in environments_declared()]
        self.fields["environment"].initial = current_environment()


def policy_view(model_admin, request, object_id):
    """Set the approval policy of a target system in one environment (platform admins)."""
    # A target system the user cannot see answers as a missing one: no existence oracle.
    target = model_admin.get_queryset(request).filter(pk=object_id).first() if str(object_id).isdigit() else None
    if target is None:
        hidden = str(object_id).isdigit() and TargetSystem.objects.filter(pk=object_id).exists()
        return absent(model_admin, request, object_id, hidden=hidden, action="policy")
    if request.method != "POST":
        return _back(model_admin, "changelist")
    if not request.user.has_perm("changes_app.change_approvalpolicy"):
        raise PermissionDenied
    form = PolicyForm(request.POST)
    if not form.is_valid():
        problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())
        model_admin.message_user(request, f"The policy was not saved: {problems}", messages.ERROR)
        return _back(model_admin, "change", object_id)
    try:
        policy = services.policy_set(
            target_name=target.name,
            environment=form.cleaned_data["environment"],
            required_approvals=form.cleaned_data["required_approvals"],
            actor=actor_of(request),
            reason=form.cleaned_data["reason"],
            # Only a target group's form offers it; elsewhere it is left as it is.
            fleet_canary_approval=form.cleaned_data["fleet_canary_approval"] if target.name in group_names() else None,
        )
    except (services.FlamingockError, PermissionRefused) as error:
        model_admin.message_user(request, str(error), messages.ERROR)
    else:
        model_admin.message_user(request, f"Policy saved: {policy}.", messages.SUCCESS)
    return _back(model_admin, "change", object_id)


# -- Django migrations: adoption (docs/django-migrations.md, "Adoption") ------------------------------


def adoption_pending(request, target: TargetSystem | None):
    """The adoption the target page offers: the status of a Django database with recorder rows not yet
    adopted, if the user may operate it (``services.django_adoption_status``); ``None`` otherwise."""
    if target is None or target.kind != "django_migrations":
        return None
    try:
        status = services.django_adoption_status(alias=target.name, actor=actor_of(request))
    except (services.FlamingockError, PermissionRefused):
        return None
    return status if status.required else None


def adoption_view(model_admin, request, object_id):
    """Adopt the Django database of a target system (POST, with a reason): the same service as
    ``flamingock adopt django`` and the API; a request where a policy governs the target."""
    target = model_admin.get_queryset(request).filter(pk=object_id).first() if str(object_id).isdigit() else None
    if target is None:
        hidden = str(object_id).isdigit() and TargetSystem.objects.filter(pk=object_id).exists()
        return absent(model_admin, request, object_id, hidden=hidden, action="adopt")
    if request.method != "POST":
        return _back(model_admin, "change", object_id)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        model_admin.message_user(request, "Nothing was adopted: a reason is required.", messages.ERROR)
        return _back(model_admin, "change", object_id)
    try:
        submitted = services.django_adopt(
            alias=target.name, actor=actor_of(request), reason=form.cleaned_data["reason"], source=Run.Source.UI, inline=False
        )
    except (services.FlamingockError, PermissionRefused) as error:
        model_admin.message_user(request, str(error), messages.ERROR)
        return _back(model_admin, "change", object_id)
    return _submitted(model_admin, request, None, submitted)
