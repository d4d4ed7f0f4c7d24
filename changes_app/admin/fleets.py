"""Fleet runs in the admin (docs/fleet.md, "The fleet view"): the list (in progress first), one fleet
run's page (per-wave progress that updates live, a members × changes matrix of states with counts per
change, a filter of failed or blocked members, each such member's issues with their guidance), and
cancel, resume and retry, each confirmed first.

A fleet run is shown to whoever sees its target group (``fleets.overview.fleets_visible``, the one
visibility rule); acting needs the operate permission on the group, checked again by the service.
"""

from __future__ import annotations

import uuid

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from changes_app.admin import labels, views
from changes_app.admin.common import ReadOnlyMixin, admin_view
from changes_app.errors import FlamingockError
from changes_app.fleets import overview
from changes_app.fleets.governance import fleet_subject
from changes_app.fleets.services import fleet_cancel, fleet_resume, fleet_retry
from changes_app.governance.permissions import PermissionRefused
from changes_app.governance.visibility import change_targets_seen
from changes_app.models import ChangeRequest, FleetMemberRun, FleetRun

Status = FleetMemberRun.Status

#: Colours of a member's state in the matrix: light backgrounds with dark text (readable at AA), and
#: each cell also says its state in words.
CELL_STYLES = {
    "": ("#f5f5f5", "#424242"),
    "APPLIED": ("#e8f5e9", "#1b5e20"),
    "MANUAL_MARKED_AS_APPLIED": ("#e8f5e9", "#1b5e20"),
    "STARTED": ("#fff3e0", "#7a3b00"),
    "ROLLBACK_STARTED": ("#fff3e0", "#7a3b00"),
    "FAILED": ("#ffebee", "#b71c1c"),
    "ROLLBACK_FAILED": ("#ffebee", "#b71c1c"),
    "ROLLED_BACK": ("#e3f2fd", "#0d47a1"),
    "MANUAL_MARKED_AS_ROLLED_BACK": ("#e3f2fd", "#0d47a1"),
    "SKIPPED": ("#eeeeee", "#212121"),
}
#: The short word of each state in a matrix cell (the legend gives the whole label).
CELL_WORDS = {
    "": "—",
    "APPLIED": "applied",
    "MANUAL_MARKED_AS_APPLIED": "marked applied",
    "STARTED": "started",
    "ROLLBACK_STARTED": "rollback started",
    "FAILED": "failed",
    "ROLLBACK_FAILED": "rollback failed",
    "ROLLED_BACK": "rolled back",
    "MANUAL_MARKED_AS_ROLLED_BACK": "released",
    "SKIPPED": "held",
}
#: The actions on a fleet run: the service, what the button says, and what will happen.
ACTIONS = {
    "cancel": (fleet_cancel, _("Cancel this fleet run")),
    "resume": (fleet_resume, _("Resume: start the members not started")),
    "retry": (fleet_retry, _("Retry the failed members")),
}


def actions_offered(fleet: FleetRun, counts: dict[str, int]) -> list[str]:
    """The actions whose service would accept this fleet run now (the services check it again)."""
    if fleet.status == FleetRun.Status.RUNNING:
        return ["cancel"]
    offered = []
    if counts.get(Status.NOT_STARTED):
        offered.append("resume")
    if counts.get(Status.FAILED) or counts.get(Status.NOT_STARTED):
        offered.append("retry")
    return offered


def what_will_happen(action: str, fleet: FleetRun, counts: dict[str, int]) -> str:
    """What the confirmation page says the action will do, in numbers."""
    running = counts.get(Status.QUEUED, 0) + counts.get(Status.RUNNING, 0)
    pending, failed, not_started = counts.get(Status.PENDING, 0), counts.get(Status.FAILED, 0), counts.get(Status.NOT_STARTED, 0)
    if action == "cancel":
        return str(
            _(
                "No more members start: the %(pending)s member(s) waiting for their wave are not started. The %(running)s member(s) "
                "queued or running stop before their next change (a change under way finishes). The fleet run then ends Cancelled; "
                "Resume starts the members not started."
            )
            % {"pending": pending, "running": running}
        )
    if action == "resume":
        return str(
            _(
                "The %(not_started)s member(s) not started are started again in their waves, under the run's policy "
                "(a canary of %(canary)s, waves of %(wave)s, %(concurrency)s at once). The %(failed)s failed member(s) stay failed."
            )
            % {"not_started": not_started, "canary": fleet.canary, "wave": fleet.wave_size, "concurrency": fleet.concurrency, "failed": failed}
        )
    return str(
        _(
            "The %(failed)s failed member(s) run again (a change left uncertain is settled from its marker first, never applied twice), "
            "and the %(not_started)s member(s) not started are started, in their waves, %(concurrency)s at once."
        )
        % {"failed": failed, "not_started": not_started, "concurrency": fleet.concurrency}
    )


def fleet_cell(name: str) -> dict:
    """A matrix cell (or a legend's entry) of state ``name``: its colours, short word and label."""
    background, colour = CELL_STYLES.get(name, ("#eeeeee", "#212121"))
    return {
        "state": name,
        "word": CELL_WORDS.get(name, name.lower()),
        "label": labels.label("state", name),
        "background": background,
        "colour": colour,
    }


@admin.register(FleetRun)
class FleetRunAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("short_id", "target", "result_text", "wave_text", "members_text", "environment", "actor", "created_at")
    list_display_links = ("short_id",)
    list_filter = ("status", "result", "target", "environment")
    search_fields = ("=id", "target", "actor")
    # In progress first (RUNNING sorts after FINISHED), newest first within each.
    ordering = ("-status", "-created_at")
    show_full_result_count = False
    actions = None

    def get_queryset(self, request):
        finished = Q(members__status__in=overview.FINISHED)
        failed = Q(members__status=Status.FAILED)
        return overview.fleets_visible(request.user).annotate(
            n_members=Count("members"), n_finished=Count("members", filter=finished), n_failed=Count("members", filter=failed)
        )

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}), "title": _("Fleet runs")})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The fleet run's page (never a form: a fleet run is changed by its actions only)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        fleet = self.fleet_or_none(request, object_id)
        if fleet is None:
            return views.absent(self, request, object_id, hidden=_is_uuid(object_id) and FleetRun.objects.filter(pk=object_id).exists())
        member_filter = request.GET.get("status", "")
        try:
            overview.member_filter_check(member_filter)
        except overview.MemberFilterUnknown as error:
            self.message_user(request, _("%(error)s. All members are shown.") % {"error": error}, messages.ERROR)
            member_filter = ""
        number = request.GET.get("page", "1")
        shown = overview.fleet_overview(fleet, member_filter=member_filter, page=int(number) if number.isdigit() else 1)
        progress = shown["progress"]
        counts = progress.counts
        may_operate = views.may_operate(request.user, fleet.target)
        rows = [
            {
                "member": row["member"],
                "status_label": labels.label("fleet_member_status", row["member"].status),
                "cells": [fleet_cell(_state_of(row["states"][change_id])) for change_id in shown["changes"]],
                "issues": row["issues"],
            }
            for row in shown["members"]
        ]
        legend = [fleet_cell(name) for name in CELL_STYLES]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("Fleet run %(id)s on %(target)s") % {"id": str(fleet.pk)[:8], "target": fleet.target},
            "fleet": fleet,
            "result_label": labels.label("fleet_result", fleet.result)
            if fleet.status == FleetRun.Status.FINISHED
            else labels.label("fleet_result", ""),
            "progress": progress,
            "counts": [(labels.label("fleet_member_status", status), counts.get(status, 0)) for status in Status.values if counts.get(status)],
            "changes": [
                {
                    "id": change_id,
                    "counts": [{**fleet_cell(state), "n": n} for state, n in sorted(shown["counts"][change_id].items())],
                }
                for change_id in shown["changes"]
            ],
            "rows": rows,
            "issues": [row for row in rows if row["issues"]],
            "legend": legend,
            "filters": [(name, labels.label("fleet_member_filter", name)) for name in ("", *overview.MEMBER_FILTERS)],
            "member_filter": shown["filter"],
            "filter_label": labels.label("fleet_member_filter", shown["filter"]),
            "matched": shown["matched"],
            "page": shown["page"],
            "pages": shown["pages"],
            "page_numbers": _page_numbers(shown["page"], shown["pages"]),
            "may_operate": may_operate,
            # A member's child run opens for those who see every run (``visibility.runs_visible``: a
            # child run names no change, so an object permission on the group does not show it).
            "runs_linked": request.user.has_perm("changes_app.view_run"),
            "offered": [(name, ACTIONS[name][1]) for name in actions_offered(fleet, counts)] if may_operate else [],
            "progress_url": reverse("admin:changes_app_fleetrun_progress", args=[fleet.pk]),
        }
        return TemplateResponse(request, "admin/changes_app/fleetrun/fleet.html", context)

    @admin.display(description=_("fleet run"))
    def short_id(self, obj):
        return str(obj.pk)[:8]

    @admin.display(description=_("result"), ordering="result")
    def result_text(self, obj):
        return labels.label("fleet_result", obj.result if obj.status == FleetRun.Status.FINISHED else "")

    @admin.display(description=_("wave"))
    def wave_text(self, obj):
        if obj.wave < 0:
            return _("not started")
        return _("canary") if obj.wave == 0 else _("wave %(n)s") % {"n": obj.wave}

    @admin.display(description=_("members"))
    def members_text(self, obj):
        text = _("%(done)s of %(total)s finished") % {"done": obj.n_finished, "total": obj.n_members}
        return _("%(text)s, %(failed)s failed") % {"text": text, "failed": obj.n_failed} if obj.n_failed else text

    def fleet_or_none(self, request, object_id) -> FleetRun | None:
        return overview.fleet_visible(request.user, object_id)

    def has_view_permission(self, request, obj=None):
        seen = change_targets_seen(request.user)
        if obj is None:
            return seen is None or bool(seen)
        return seen is None or obj.target in seen

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def get_urls(self):
        return [
            path("<str:object_id>/progress/", admin_view(self, fleet_progress_view), name="changes_app_fleetrun_progress"),
            path("<str:object_id>/act/<str:action>/", admin_view(self, fleet_action_view), name="changes_app_fleetrun_act"),
            *super().get_urls(),
        ]


def _is_uuid(value) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _state_of(row) -> str:
    return row.state if row is not None else ""


def _page_numbers(page: int, pages: int) -> list[int]:
    """The pages linked below the matrix: the first, the last and two either side of this one."""
    return sorted({1, pages, *range(max(1, page - 2), min(pages, page + 2) + 1)})


def fleet_progress_view(model_admin, request, object_id):
    """The fleet run's progress by wave as JSON, for the page's live progress: the same visibility."""
    fleet = model_admin.fleet_or_none(request, object_id)
    if fleet is None:
        return JsonResponse({"error": "not found"}, status=404)
    progress = overview.fleet_progress([fleet])[fleet.pk]
    return JsonResponse(
        {
            "status": fleet.status,
            "finished": fleet.status == FleetRun.Status.FINISHED,
            "result": fleet.result or None,
            "wave": fleet.wave,
            "progress": progress.text,
            "waves": [wave.as_dict() for wave in progress.waves],
            "counts": progress.counts,
        }
    )


def fleet_action_view(model_admin, request, object_id, action):
    """Cancel, resume or retry: a confirmation page that says what will happen, then (POST, with
    ``confirm=yes``) the service. Only holders of the operate permission on the group."""
    if action not in ACTIONS:
        return views.absent(model_admin, request, object_id, str(_("No such action on a fleet run: nothing was done.")))
    fleet = model_admin.fleet_or_none(request, object_id)
    if fleet is None:
        hidden = _is_uuid(object_id) and FleetRun.objects.filter(pk=object_id).exists()
        return views.absent(model_admin, request, object_id, hidden=hidden, action=f"fleet {action}")
    if not views.may_operate(request.user, fleet.target):
        raise PermissionDenied
    fleet_url = reverse("admin:changes_app_fleetrun_change", args=[fleet.pk])
    service, label = ACTIONS[action]
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        try:
            done = service(fleet_run_id=fleet.pk, actor=views.actor_of(request))
        except (FlamingockError, PermissionRefused) as error:
            model_admin.message_user(request, str(error), messages.ERROR)
        else:
            pending = (
                ChangeRequest.objects.filter(
                    change_id=fleet_subject(fleet.pk), kind=ChangeRequest.Kind.FLEET_RETRY, status=ChangeRequest.Status.PENDING
                )
                .order_by("-id")
                .first()
                if action == "retry"
                else None
            )
            if pending is not None:  # a policy governs the group: the retry waits for its approvals
                model_admin.message_user(
                    request,
                    format_html(
                        _(
                            '{action}: a policy governs {target}, so request #{id} was opened; it needs {n} approval(s). <a href="{url}">Open the request</a>.'
                        ),
                        action=label,
                        target=fleet.target,
                        id=pending.pk,
                        n=pending.required_approvals,
                        url=reverse("admin:changes_app_changerequest_change", args=[pending.pk]),
                    ),
                    messages.WARNING,
                )
            else:
                model_admin.message_user(
                    request,
                    _("%(action)s: the fleet run is %(status)s.") % {"action": label, "status": done.get_status_display().lower()},
                    messages.SUCCESS,
                )
        return HttpResponseRedirect(fleet_url)
    counts = overview.fleet_progress([fleet])[fleet.pk].counts
    refusal = "" if action in actions_offered(fleet, counts) else _("This action does not apply to the fleet run as it stands now.")
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": label,
        "fleet": fleet,
        "action": action,
        "label": label,
        "what": what_will_happen(action, fleet, counts),
        "refusal": refusal,
        "fleet_url": fleet_url,
    }
    return TemplateResponse(request, "admin/changes_app/fleetrun/action_confirm.html", context)
