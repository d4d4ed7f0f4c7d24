"""The audit trail in the admin for compliance officers: read-only at every step (no add, change,
delete or bulk action), its place in the chain on every entry, the last verification, and the
evidence export of exactly what the list shows."""

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from .export import FORMATS, ExportFilters, audit_export
from .models import AuditCheckpoint, AuditEntry, ChangeState, Verification


class ReadOnlyAdmin(admin.ModelAdmin):
    actions = None

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("seq", "created_at", "event", "change_id", "state", "actor", "environment", "target", "run_id")
    list_filter = ("event", "state", "environment", "target", "stage")
    search_fields = ("=change_id", "=actor", "=run_id")
    date_hierarchy = "created_at"
    # Counting a million rows costs more than the page itself.
    show_full_result_count = False
    list_per_page = 50
    ordering = ("-seq",)
    fields = (
        "chain_position", "seq", "id", "created_at", "event", "environment", "change_id", "stage", "order", "target", "state",
        "checksum", "transaction_strategy", "recovery_strategy", "run_id", "actor", "actor_user_id", "host", "pid",
        "fencing_token", "duration_ms", "reason", "error", "rollback_error", "details", "hash_version", "prev_hash", "entry_hash",
    )  # fmt: skip
    readonly_fields = fields
    change_list_template = "admin/audit_app/auditentry/change_list.html"

    @admin.display(description="place in the chain")
    def chain_position(self, obj):
        if not obj.seq:
            return "-"
        neighbours = dict(AuditEntry.objects.filter(seq__in=[obj.seq - 1, obj.seq + 1]).values_list("seq", "pk"))
        links = format_html_join(
            " · ",
            '<a href="{}">{} #{}</a>',
            (
                (reverse("admin:audit_app_auditentry_change", args=[neighbours[seq]]), label, seq)
                for seq, label in ((obj.seq - 1, "previous"), (obj.seq + 1, "next"))
                if seq in neighbours
            ),
        )
        return format_html("entry #{} follows #{} (whose hash is {}…) {}", obj.seq, obj.seq - 1, obj.prev_hash[:16], links)

    def get_urls(self):
        return [path("export/", self.admin_site.admin_view(self.export_view), name="audit_app_auditentry_export"), *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "last_verification": Verification.objects.order_by("-performed_at").first(),
            "last_checkpoint": AuditCheckpoint.objects.order_by("-seq", "-id").first(),
            "export_formats": FORMATS,
        }
        return super().changelist_view(request, extra_context)

    def export_view(self, request):
        """Stream the entries the list's filters select, with the signed chain head at the end."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        params = request.GET.copy()
        fmt = params.pop("format", ["csv"])[-1]
        if fmt not in FORMATS:
            fmt = "csv"
        # Exactly what the list shows: its filters, search and date hierarchy, read by the changelist.
        request.GET = params
        try:
            entries = self.get_changelist_instance(request).queryset
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("unknown filter")
        filters = ExportFilters(
            query=params.urlencode(),
            change_id=params.get("change_id", ""),
            target=params.get("target", ""),
            actor=params.get("actor", ""),
            environment=params.get("environment", ""),
            run_id=params.get("run_id", ""),
            events=[params["event"]] if params.get("event") else [],
            since=_date(params.get("created_at__gte")),
            until=_date(params.get("created_at__lt")),
        )
        response = StreamingHttpResponse(
            audit_export(fmt=fmt, filters=filters, entries=entries), content_type="text/csv" if fmt == "csv" else "application/x-ndjson"
        )
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response["Content-Disposition"] = f'attachment; filename="flamingock-audit-{stamp}.{fmt}"'
        return response


def _date(value):
    from django.utils.dateparse import parse_date, parse_datetime

    if not value:
        return None
    parsed = parse_datetime(value) or (parse_date(value) and timezone.datetime.combine(parse_date(value), timezone.datetime.min.time()))
    if parsed and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, timezone.get_fixed_timezone(0))
    return parsed or None


@admin.register(ChangeState)
class ChangeStateAdmin(ReadOnlyAdmin):
    list_display = ("change_id", "stage", "order", "target", "state", "updated_at", "applied_count")
    list_filter = ("state", "stage", "target")
    search_fields = ("=change_id",)


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyAdmin):
    list_display = ("seq", "created_at", "reason", "key_id", "entry_hash")
    readonly_fields = ("seq", "entry_hash", "created_at", "reason", "key_id", "public_key", "signature")


@admin.register(Verification)
class VerificationAdmin(ReadOnlyAdmin):
    list_display = ("performed_at", "mode", "ok", "entries_checked", "head_seq", "first_broken_seq", "duration_ms", "actor")
    list_filter = ("ok", "mode")
    readonly_fields = (
        "performed_at",
        "mode",
        "ok",
        "entries_checked",
        "head_seq",
        "first_broken_seq",
        "first_broken_id",
        "problem",
        "duration_ms",
        "actor",
    )
