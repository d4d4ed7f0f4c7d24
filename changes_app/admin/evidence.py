"""The "Evidence" page: evidence packs asked for, made on a worker with their progress shown, and
downloaded through a permission check (``changes_app.generate_evidence``, the Compliance officer
role's). Every action calls a service; the API and the command line call the same ones."""

from __future__ import annotations

from datetime import UTC, datetime, time

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from changes_app import services
from changes_app.admin.common import admin_view, badge
from changes_app.governance.identity import user_actor
from changes_app.governance.permissions import PermissionRefused
from changes_app.models import EvidencePack, TargetSystem
from changes_app.services.evidence import GENERATE, evidence_controls, evidence_file, evidence_request, evidence_visible

STATUS_COLOURS = {"QUEUED": "#757575", "RUNNING": "#1565c0", "DONE": "#2e7d32", "FAILED": "#c62828"}
RESULT_COLOURS = {"PASS": "#2e7d32", "EXCEPTION": "#c62828", "NOT_APPLICABLE": "#757575"}


class EvidenceForm(forms.Form):
    period_from = forms.DateField(label="From", help_text="The period's first day (UTC).", widget=forms.DateInput(attrs={"type": "date"}))
    period_to = forms.DateField(
        label="To (exclusive)", help_text="The day after the period's last day (UTC).", widget=forms.DateInput(attrs={"type": "date"})
    )
    targets = forms.ModelMultipleChoiceField(
        queryset=TargetSystem.objects.order_by("name"), required=False, to_field_name="name", help_text="None selected: every target system."
    )
    members = forms.CharField(required=False, help_text="Members of target groups, comma-separated; empty: all of them.")

    def clean(self):
        data = super().clean()
        if data.get("period_from") and data.get("period_to") and data["period_to"] <= data["period_from"]:
            raise forms.ValidationError("The period's end (exclusive) must be after its start.")
        return data


def _may(request, obj=None) -> bool:
    user = request.user
    return user.is_active and user.is_staff and (user.has_perm(GENERATE) or (obj is not None and user.has_perm(GENERATE, obj)))


@admin.register(EvidencePack)
class EvidencePackAdmin(admin.ModelAdmin):
    list_display = ("id", "period", "environment", "scope", "status_badge", "progress_text", "results_badges", "requested_by", "download")
    list_filter = ("status", "environment")
    actions = None
    fields = ("requested_by", "requested_at", "environment", "targets", "members", "period_from", "period_to", "status", "progress", "total")
    readonly_fields = fields

    def get_queryset(self, request):
        return evidence_visible(user=request.user)

    @admin.display(description="period")
    def period(self, obj):
        return f"{obj.period_from:%Y-%m-%d} to {obj.period_to:%Y-%m-%d}"

    @admin.display(description="scope")
    def scope(self, obj):
        return ", ".join([*obj.targets, *obj.members]) or "all"

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(obj.get_status_display(), STATUS_COLOURS.get(obj.status, "#757575"))

    @admin.display(description="progress")
    def progress_text(self, obj):
        if obj.status == EvidencePack.Status.DONE:
            return f"{obj.total} entries"
        return f"{obj.progress} / {obj.total}" if obj.total else f"{obj.progress}"

    @admin.display(description="controls")
    def results_badges(self, obj):
        return (
            format_html_join(" ", "{}", ((badge(result, RESULT_COLOURS.get(result, "#757575")),) for result in obj.results.values()))
            if obj.results
            else "-"
        )

    @admin.display(description="file")
    def download(self, obj):
        if obj.status != EvidencePack.Status.DONE:
            return "-"
        return format_html('<a href="{}">Download</a>', reverse("admin:changes_app_evidencepack_download", args=[obj.pk]))

    def has_module_permission(self, request):
        return _may(request)

    def has_view_permission(self, request, obj=None):
        return _may(request, obj)

    def has_add_permission(self, request):
        return _may(request)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        return [path("<int:pk>/download/", admin_view(self, evidence_download_view), name="changes_app_evidencepack_download"), *super().get_urls()]

    def add_view(self, request, form_url="", extra_context=None):
        return evidence_generate_view(self, request)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        pack = self.get_queryset(request).filter(pk=object_id).first() if str(object_id).isdigit() else None
        if pack is None:
            if not _may(request):
                raise PermissionDenied
            raise Http404("no such evidence pack")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Evidence pack {pack.pk}",
            "pack": pack,
            "opts": self.model._meta,
            "running": pack.status in (EvidencePack.Status.QUEUED, EvidencePack.Status.RUNNING),
            "percent": int(100 * pack.progress / pack.total) if pack.total else (100 if pack.status == EvidencePack.Status.DONE else 0),
            "controls": evidence_controls(pack),
        }
        return TemplateResponse(request, "admin/changes_app/evidencepack/pack.html", context)


def _day(value) -> datetime:
    return datetime.combine(value, time.min, tzinfo=UTC)


def evidence_generate_view(model_admin, request):
    """Ask for a pack; the worker makes it, and its page shows the progress."""
    if not _may(request):
        raise PermissionDenied
    form = EvidenceForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            pack = evidence_request(
                actor=user_actor(request.user, via="ui"),
                since=_day(data["period_from"]),
                until=_day(data["period_to"]),
                targets=[target.name for target in data["targets"]],
                members=[name.strip() for name in data["members"].split(",") if name.strip()],
            )
        except PermissionRefused:
            raise PermissionDenied from None
        except services.FlamingockError as error:
            form.add_error(None, str(error))
        else:
            model_admin.message_user(request, f"Evidence pack {pack.pk} is queued: its page shows the progress.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:changes_app_evidencepack_change", args=[pack.pk]))
    context = {**model_admin.admin_site.each_context(request), "title": "Generate an evidence pack", "form": form, "opts": EvidencePack._meta}
    return TemplateResponse(request, "admin/changes_app/evidencepack/generate.html", context)


def evidence_download_view(model_admin, request, pk: int):
    try:
        _, file = evidence_file(pack_id=pk, actor=user_actor(request.user, via="ui"))
    except PermissionRefused:
        raise PermissionDenied from None
    except services.NotFound as error:
        raise Http404(str(error)) from None
    except services.FlamingockError as error:
        model_admin.message_user(request, str(error), messages.ERROR)
        return HttpResponseRedirect(reverse("admin:changes_app_evidencepack_change", args=[pk]))
    return FileResponse(file.open("rb"), as_attachment=True, filename=file.name, content_type="application/zip")
