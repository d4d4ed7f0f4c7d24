"""Changes in the admin: the catalogue with each change's state, next action and history, and one
page per change that tells its whole story (state and next action at the top, then one timeline
from catalogued to drift findings, each step linked to its audit entries).

Everything that acts goes through a service (``admin.views``); nothing here saves a governed row
or writes the ledger. Lists are filtered to what the user may see and every ``has_*_permission``
checks the object."""

import json
from html import escape as _escape
from urllib.parse import urlencode

from django.contrib import admin
from django.db.models import TextField
from django.db.models.functions import Cast
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from audit_app.models import AuditEntry, ChangeState, Verification
from changes_app import services
from changes_app.admin import labels, views
from changes_app.admin.common import STATE_COLOURS, ReadOnlyMixin, admin_view, badge
from changes_app.models import ChangeRecord, ChangeRequest, Finding, Run
from changes_app.pipeline.discovery import pipeline_load
from changes_app.pipeline.plan import Plan

#: Colours of the next action at the top of a change's page.
ACTION_COLOURS = {"APPLY": "#1565c0", "SKIP": "#2e7d32", "MANUAL_INTERVENTION": "#c62828", "AWAITING_APPROVAL": "#ef6c00", "BLOCKED": "#ef6c00"}
#: Each step of a change's story, by the audit events that make it.
STORY_STEPS = {
    "request.created": "requested",
    "request.approved": "approved",
    "request.rejected": "rejected",
    "request.cancelled": "cancelled",
    "request.expired": "expired",
    "request.commented": "commented",
    "change.started": "run",
    "change.rollback_started": "run",
    "change.applied": "applied",
    "change.marked_applied": "applied",
    "change.failed": "failed",
    "change.rollback_failed": "failed",
    "change.rolled_back": "rolled back",
    "change.marked_rolled_back": "released",
    "change.skipped": "held",
    "change.checksum_accepted": "re-baselined",
    "drift.detected": "drift",
    "drift.resolved": "drift",
    "drift.acknowledged": "drift",
}


def escape_text(value) -> str:
    """``django.utils.html.escape`` without its wrapper: the text of ``value`` with ``& < > " '`` escaped."""
    return _escape(str(value))


def change_url(name: str):
    """The admin URL ``name`` of any primary key, reversed once: a page that links hundreds of rows
    (a change's history and timeline) substitutes the key instead of resolving each link."""
    pattern = reverse(name, args=["__pk__"])
    return lambda pk: pattern.replace("__pk__", str(pk))


def state_badge(state: str):
    """A change's latest state in words, its name kept in ``data-state``."""
    colour = STATE_COLOURS.get(state, "#757575")
    return format_html('<span data-state="{}">{}</span>', state or "NONE", badge(labels.label("state", state), colour))


def change_condition(change_id: str, plan: Plan | None) -> dict:
    """What the change page, Issues and the dashboard all say about a change: its latest state, its
    next action and the plan's reason, its checksum against the code, and its open drift findings.
    A checksum is "drifted" when the plan says so or a checksum-mismatch finding is open."""
    item = plan.item(change_id) if plan else None
    state = ChangeState.objects.filter(change_id=change_id).first()
    findings = list(Finding.objects.filter(change_id=change_id, status__in=Finding.ACTIVE).order_by("first_seen", "pk"))
    recorded = state.checksum if state else ""
    code = item.change.checksum if item else ""
    if not recorded:
        checksum = "not recorded yet"
    elif any(f.kind == Finding.Kind.CHECKSUM_MISMATCH for f in findings) or (code and recorded != code):
        checksum = "drifted"
    elif not code:
        checksum = "not in the code"
    else:
        checksum = "matches"
    action = item.action.value if item else ""
    return {
        "state": state.state if state else "",
        "action": action,
        "action_label": labels.label("action", action) if action else "Not in the code",
        "reason": item.reason if item else "the change is no longer in the code",
        "checksum": checksum,
        "recorded_checksum": recorded,
        "code_checksum": code,
        "code_source": item.change.source if item else "",
        "findings": [{"finding": f, "label": labels.label("finding_kind", f.kind)} for f in findings],
        # Issues lists the plan's issues: the same list decides here.
        "needs_human": bool(findings) or any(issue is item for issue in (plan.issues if item else [])),
    }


#: How many of a change's audit entries its page shows (the newest), in its history and in its
#: story alike; the others are one link away, in the audit trail filtered by the change.
HISTORY_SHOWN = 50
#: The columns of an entry that the history and the story show.
ENTRY_FIELDS = ("id", "seq", "event", "created_at", "state", "actor", "run_id", "reason", "error", "rollback_error", "details")


def change_entries(change_id: str) -> tuple[list[AuditEntry], int]:
    """The newest ``HISTORY_SHOWN`` audit entries of a change, newest first (one read, over the
    ``(change_id, id)`` index), and how many older ones the page leaves to the audit trail."""
    rows = list(AuditEntry.objects.filter(change_id=change_id).only(*ENTRY_FIELDS).order_by("-id")[: HISTORY_SHOWN + 1])
    if len(rows) <= HISTORY_SHOWN:
        return rows, 0
    return rows[:HISTORY_SHOWN], AuditEntry.objects.filter(change_id=change_id).count() - HISTORY_SHOWN


def trail_url(change_id: str) -> str:
    """The audit list filtered by the change (its change filter: the change's own entries and those that name it)."""
    return f"{reverse('admin:audit_app_auditentry_changelist')}?{urlencode({'change_id': change_id})}"


def more_text(more: int) -> str:
    return f"{more:,} older entr{'y' if more == 1 else 'ies'} in the audit trail"


def change_story(record: ChangeRecord, entries: tuple[list[AuditEntry], int] | None = None) -> list[dict]:
    """One timeline: catalogued, then the change's newest audit entries (requested, approved by whom,
    run, applied, ...; ``entries`` as :func:`change_entries` gives them, read here if not given) after
    a link to the older ones in the audit trail, its drift findings, and the chain verification that
    covers it; oldest first."""
    entries, more = change_entries(record.change_id) if entries is None else entries
    story = [{"when": record.first_seen_at, "step": "catalogued", "text": f"Catalogued from {record.path}", "event": "change.catalogued"}]
    if more:
        # Dated as the oldest entry shown, so that it sorts just before it (the sort is stable).
        story.append(
            {"when": entries[-1].created_at, "step": "earlier", "event": "", "text": more_text(more), "trail_url": trail_url(record.change_id)}
        )
    runs = {run.pk: run for run in Run.objects.filter(pk__in={e.run_id for e in entries if e.run_id}).only("id", "kind")}
    entry_url, run_url = change_url("admin:audit_app_auditentry_change"), change_url("admin:changes_app_run_change")
    for entry in reversed(entries):
        details = entry.details or {}
        text = labels.label("event", entry.event)
        if entry.event == "request.approved" and details.get("automatic"):
            text = "Approved automatically: the policy requires no approval"
        elif entry.state == "MANUAL_MARKED_AS_ROLLED_BACK" and (details.get("released")):
            text = "Released for re-apply: the next run applies it"
        run = runs.get(entry.run_id)
        story.append(
            {
                "when": entry.created_at,
                "step": STORY_STEPS.get(entry.event, entry.event.split(".")[0]),
                "event": entry.event,
                "text": text,
                "actor": entry.actor,
                "reason": entry.reason,
                "error": entry.error or entry.rollback_error,
                "entry_url": entry_url(entry.pk),
                "entry_seq": entry.seq or entry.pk,
                "request_id": details.get("request_id"),
                "run": run,
                "run_url": run_url(run.pk) if run else "",
                "run_label": ("pipeline run" if run.kind == Run.Kind.PIPELINE else f"{labels.label('run_kind', run.kind).lower()} run")
                if run
                else "",
                "approval": details.get("approval") or {},
            }
        )
    for finding in Finding.objects.filter(change_id=record.change_id).order_by("first_seen", "pk"):
        story.append(
            {
                "when": finding.first_seen,
                "step": "drift finding",
                "event": "finding",
                "text": f"{labels.label('finding_kind', finding.kind)} ({finding.get_status_display().lower()}, seen {finding.times_seen} time{'s' if finding.times_seen != 1 else ''})",
                "reason": finding.summary,
                "finding_url": reverse("admin:changes_app_finding_change", args=[finding.pk]),
            }
        )
    last_seq = max((e.seq or 0 for e in entries), default=0)
    verified = Verification.objects.filter(ok=True, head_seq__gte=last_seq).order_by("-performed_at").first() if last_seq else None
    if verified is not None:
        story.append(
            {
                "when": verified.performed_at,
                "step": "verified",
                "event": "audit.verified",
                "text": f"Audit chain verified up to #{verified.head_seq}: these entries are intact",
            }
        )
    return sorted(story, key=lambda step: step["when"])


def story_html(story: list[dict]) -> str:
    """The timeline's items, built here rather than by per-item template logic (each value escaped once)."""
    request_url = change_url("admin:changes_app_changerequest_change")
    items = []
    for s in story:
        when = s["when"]
        parts = [
            '<li data-step="{0}" data-event="{1}"><span class="flk-step">{0}</span> {2} &ndash; {3}'.format(
                escape_text(s["step"]),
                escape_text(s["event"]),
                f"{timezone.localtime(when) if timezone.is_aware(when) else when:%Y-%m-%d %H:%M:%S}",
                escape_text(s["text"]),
            )
        ]
        if s.get("actor"):
            parts.append(f" by {escape_text(s['actor'])}")
        if s.get("trail_url"):
            parts.append(f' &middot; <a class="flk-more" href="{escape_text(s["trail_url"])}">see them</a>')
        if s.get("entry_url"):
            parts.append(f' <a href="{escape_text(s["entry_url"])}">audit entry #{escape_text(s["entry_seq"])}</a>')
        if s.get("request_id"):
            parts.append(f' &middot; <a href="{escape_text(request_url(s["request_id"]))}">request #{escape_text(s["request_id"])}</a>')
        if s.get("run"):
            parts.append(f' &middot; <a href="{escape_text(s["run_url"])}">{escape_text(s["run_label"])}</a>')
        approved_by = (s.get("approval") or {}).get("approved_by")
        if approved_by:
            approved_by = [approved_by] if isinstance(approved_by, str) else approved_by
            parts.append(f" &middot; approved by {', '.join(map(escape_text, approved_by))}")
        if s.get("finding_url"):
            parts.append(f' &middot; <a href="{escape_text(s["finding_url"])}">finding</a>')
        if s.get("reason"):
            parts.append(f"<br><em>{escape_text(s['reason'])}</em>")
        if s.get("error"):
            parts.append(f'<pre style="color:#c62828">{escape_text(s["error"])}</pre>')
        parts.append("</li>\n")
        items.append("".join(parts))
    return mark_safe("".join(items))


def verify_coverage(change_id: str) -> str:
    """Which steps carry a ``verify`` probe, in words: a probe proves the effect present only when
    every step has one (docs/semantics.md §4)."""
    change = pipeline_load().by_id.get(change_id)
    if change is None or not change.steps:
        return ""
    probed = [step.label for step in change.steps if step.verify is not None]
    if len(probed) == len(change.steps):
        return "yes" if len(probed) == 1 else f"yes, every step ({len(probed)})"
    if not probed:
        return "no"
    return f"{len(probed)} of {len(change.steps)} steps ({', '.join(probed)}): reconciliation needs every step to verify"


@admin.register(ChangeRecord)
class ChangeRecordAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_filter = ("stage", "target", "kind", "transactional")
    search_fields = ("change_id", "author", "description")
    ordering = ("stage", "order")
    actions = None
    fields = (
        "change_id", "stage", "order", "author", "target", "kind", "template", "description", "path", "line",
        "checksum", "transactional", "recovery_display", "environments", "has_rollback", "verify_display",
        "first_seen_at", "synced_at", "removed_at", "source_code", "history", "requests", "results",
    )  # fmt: skip
    readonly_fields = fields
    change_list_template = "admin/changes_app/changerecord/change_list.html"
    change_form_template = "admin/changes_app/changerecord/change_form.html"

    def get_queryset(self, request):
        rows = super().get_queryset(request)
        seen = views.targets_seen(request.user, "changes_app.view_changerecord")
        return rows if seen is None else rows.filter(target__in=seen)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "may_run": views.operates_any(request.user)}
        return super().changelist_view(request, extra_context)

    def get_list_display(self, request):
        """The state, next action and checksum columns read one plan and one read of the states
        per page, kept in this request's columns (a ModelAdmin is shared by every thread)."""
        states = {row.change_id: row for row in ChangeState.objects.all()}
        plan = views.plan_or_none(request)
        items = {item.change.id: item for item in plan.items} if plan else {}
        mismatched = set(Finding.objects.filter(kind=Finding.Kind.CHECKSUM_MISMATCH, status__in=Finding.ACTIVE).values_list("change_id", flat=True))

        @admin.display(description="state")
        def latest_state(obj):
            state = states.get(obj.change_id)
            return state_badge(state.state if state else "")

        @admin.display(description="next action")
        def next_action(obj):
            item = items.get(obj.change_id)
            if item is None:
                return "removed from code" if obj.removed_at else "-"
            return format_html(
                '<span title="{}" data-action="{}">{}</span>', item.reason, item.action.value, labels.label("action", item.action.value)
            )

        @admin.display(description="checksum")
        def checksum_status(obj):
            state = states.get(obj.change_id)
            if state is None or not state.checksum:
                return "-"
            item = items.get(obj.change_id)
            code = item.change.checksum if item else obj.checksum
            if state.checksum == code and obj.change_id not in mismatched:
                return "matches"
            return format_html('<strong style="color:#c62828">{}</strong>', "drifted")

        return ("change_id", "stage", "order", "target", latest_state, next_action, checksum_status)

    def get_object(self, request, object_id, from_field=None):
        """The record ``change_view`` already read for this request (it carries the entries its
        history shows: read once for the history and the story), else Django's read."""
        record = getattr(request, "_flk_change_record", None)
        if record is not None and from_field is None and str(record.pk) == str(object_id):
            return record
        return super().get_object(request, object_id, from_field)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        record = self.get_object(request, object_id)
        extra = {}
        if record is not None:
            record._flk_entries = change_entries(record.change_id)
            request._flk_change_record = record
            plan = views.change_plan_or_none(request, record.change_id)
            condition = change_condition(record.change_id, plan)
            extra = {
                "flk_actions": views.offered_actions(request.user, record, plan),
                "may_run": views.operates_any(request.user),
                "flk_condition": condition,
                "flk_state_badge": state_badge(condition["state"]),
                "flk_action_colour": ACTION_COLOURS.get(condition["action"], "#757575"),
                "flk_story": story_html(change_story(record, record._flk_entries)),
                "flk_diff": services.source_diff(
                    old_checksum=condition["recorded_checksum"],
                    new_checksum=condition["code_checksum"] or record.checksum,
                    new_source=condition["code_source"] or record.source,
                )
                if condition["checksum"] == "drifted"
                else None,
            }
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    @admin.display(description="recovery")
    def recovery_display(self, obj):
        return labels.label("recovery", obj.recovery)

    @admin.display(description="has verify")
    def verify_display(self, obj):
        return verify_coverage(obj.change_id) or ("yes" if obj.has_verify else "no")

    @admin.display(description="source")
    def source_code(self, obj):
        return format_html('<pre style="white-space:pre-wrap;max-width:100ch">{}</pre>', obj.source)

    @admin.display(description="audit history")
    def history(self, obj):
        """The change's newest ``HISTORY_SHOWN`` entries, newest first, then a link to the others."""
        rows, more = getattr(obj, "_flk_entries", None) or change_entries(obj.change_id)
        entry_url = change_url("admin:audit_app_auditentry_change")
        event_labels = {}
        # What format_html would give, its arguments escaped once each.
        lines = [
            '<li data-event="{}"><a href="{}">#{}</a> {} {} by {}{}{}</li>'.format(
                *map(
                    escape_text,
                    (
                        e.event,
                        entry_url(e.pk),
                        e.seq or e.pk,
                        f"{e.created_at:%Y-%m-%d %H:%M:%S}",
                        event_labels.get(e.event) or event_labels.setdefault(e.event, labels.label("event", e.event)),
                        e.actor,
                        f": {e.reason}" if e.reason else "",
                        f" ERROR: {e.error}" if e.error else "",
                    ),
                )
            )
            for e in rows
        ]
        if more:
            lines.append(f'<li class="flk-more"><a href="{escape_text(trail_url(obj.change_id))}">{more_text(more)}</a></li>')
        return format_html('<ul class="flk-history">{}</ul>', mark_safe("".join(lines))) if lines else "no entries"

    @admin.display(description="requests")
    def requests(self, obj):
        rows = ChangeRequest.objects.filter(change_id=obj.change_id).order_by("-id")[:50]
        lines = [
            format_html(
                '<li><a href="{}">#{} {}</a> {} by {}: {}</li>',
                reverse("admin:changes_app_changerequest_change", args=[r.pk]),
                r.pk,
                r.get_kind_display(),
                labels.label("request_status", r.status),
                r.requester_name,
                r.reason,
            )
            for r in rows
        ]
        return format_html("<ul>{}</ul>", mark_safe("".join(lines))) if lines else "none"

    @admin.display(description="results")
    def results(self, obj):
        lines = []
        # The latest 200 runs; only the results that name the change are decoded (change ids are
        # JSON-safe, so their text holds the id in quotes; the match below is exact).
        needle = f'"{obj.change_id}"'
        latest = Run.objects.order_by("-created_at").values_list("pk", "created_at", "kind", Cast("results", TextField()))[:200]
        for pk, created_at, kind, text in latest:
            if needle not in text:
                continue
            for row in json.loads(text):
                if row.get("change_id") == obj.change_id:
                    lines.append(
                        format_html(
                            '<li data-result="{}"><a href="{}">{}</a> {}: {} &ndash; {}</li>',
                            row.get("result", ""),
                            reverse("admin:changes_app_run_change", args=[pk]),
                            f"{created_at:%Y-%m-%d %H:%M}",
                            labels.result_action(kind, row.get("action", "")),
                            labels.label("result", row.get("result", "")),
                            row.get("error") or row.get("reason", ""),
                        )
                    )
        return format_html("<ul>{}</ul>", mark_safe("".join(lines))) if lines else "none"

    def has_view_permission(self, request, obj=None):
        seen = views.targets_seen(request.user, "changes_app.view_changerecord")
        if seen is None:
            return True
        return bool(seen) if obj is None else obj.target in seen

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def get_urls(self):
        return [
            path("issues/", admin_view(self, views.issues_view), name="changes_app_changerecord_issues"),
            path("act/<str:kind>/<str:change_id>/", admin_view(self, views.change_action_view), name="changes_app_changerecord_act"),
            *super().get_urls(),
        ]
