"""The audit trail in the admin for compliance officers: read-only at every step (no add, change,
delete or bulk action), its place in the chain on every entry, the last verification, and the
evidence export of exactly what the list shows.

The list stays fast at millions of entries because no request reads the whole trail: the count of
the unfiltered list is the chain head's position, a filtered list is counted up to a cap, filter
choices come from index skip scans, the search matches exact values over indexes, and the date
hierarchy is drawn from the first and last entries only (``bench/suites/audit_admin.py``)."""

import uuid

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Q, Subquery
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst, smart_split, unescape_string_literal
from django.utils.translation import gettext_lazy as _

from audit_app.export import FORMATS, ExportFilters, audit_export
from audit_app.models import AuditCheckpoint, AuditEntry, ChainHead, ChangeState, Verification


class ReadOnlyMixin:
    """A ModelAdmin that shows rows and never adds, edits or deletes one."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    actions = None


#: A filter offers at most this many values; a column with more is filtered by typing its value.
FILTER_CHOICES_MAX = 100


def distinct_values(model, columns: list[str], *, using: str, limit: int) -> dict[str, list]:
    """The distinct values of indexed columns, in order, read in one statement: each value is found by
    one descent of its column's index (a skip scan written as a recursive query) instead of a
    DISTINCT that reads every row."""
    quote = connections[using].ops.quote_name
    table = quote(model._meta.db_table)
    ctes, selects = [], []
    for index, column in enumerate(map(quote, columns)):
        ctes.append(
            f"found{index}(value, n) AS (SELECT MIN({column}), 1 FROM {table} UNION ALL "
            f"SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > found{index}.value), n + 1 FROM found{index} "
            f"WHERE found{index}.value IS NOT NULL AND n < %s)"
        )
        selects.append(f"SELECT {index}, n, value FROM found{index} WHERE value IS NOT NULL")
    with connections[using].cursor() as cursor:
        cursor.execute(f"WITH RECURSIVE {', '.join(ctes)} {' UNION ALL '.join(selects)}", [limit] * len(columns))
        rows = sorted(cursor.fetchall(), key=lambda row: row[:2])
    return {column: [value for index, _, value in rows if columns[index] == column] for column in columns}


class IndexedValuesFilter(admin.AllValuesFieldListFilter):
    """Every value of an indexed column, as Django's own filter offers them, read by a skip scan."""

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        # Replaces the parent's lazy DISTINCT queryset before anything evaluates it.
        self.lookup_choices = self.values(request, model, model_admin)[field.column]

    @staticmethod
    def values(request, model, model_admin) -> dict[str, list]:
        """The values of every such filter of the list, read in one statement once per request."""
        key = f"_indexed_filter_values_{model._meta.label_lower}"
        if not hasattr(request, key):
            columns = [
                model._meta.get_field(spec[0]).column
                for spec in model_admin.get_list_filter(request)
                if isinstance(spec, tuple) and issubclass(spec[1], IndexedValuesFilter)
            ]
            using = model_admin.get_queryset(request).db
            setattr(request, key, distinct_values(model, columns, using=using, limit=FILTER_CHOICES_MAX))
        return getattr(request, key)

    def choices(self, changelist):
        for choice in super().choices(changelist):
            yield {**choice, "display": choice["display"] or self.empty_value_display}


def _other_parameters(changelist, own: list[str]) -> list[tuple[str, str]]:
    """The list's other parameters (search, other filters, ordering), kept by a filter's form."""
    return [(name, value) for name, values in sorted(changelist.filter_params.items()) if name not in own for value in values]


class ExactValueFilter(admin.FieldListFilter):
    """A box for a column with too many values to list (a change, a run, an actor): the entries whose
    value is exactly the one typed. An empty box filters nothing; a malformed value is said so."""

    template = "admin/audit_app/auditentry/input_filter.html"

    def __init__(self, field, request, params, model, model_admin, field_path):
        self.lookup_kwarg = field_path
        super().__init__(field, request, params, model, model_admin, field_path)
        self.value = (self.used_parameters.get(self.lookup_kwarg) or [""])[-1].strip()

    def expected_parameters(self):
        return [self.lookup_kwarg]

    def queryset(self, request, queryset):
        if not self.value:
            return queryset
        try:
            value = self.field.to_python(self.value)
        except ValidationError:
            messages.error(request, _("“%(value)s” is not a valid %(field)s.") % {"value": self.value, "field": self.title})
            return queryset.none()
        return queryset.filter(**{self.lookup_kwarg: value})

    def choices(self, changelist):
        yield {
            "selected": bool(self.value),
            "inputs": [{"name": self.lookup_kwarg, "label": "", "value": self.value, "type": "text"}],
            "hidden": _other_parameters(changelist, self.expected_parameters()),
            "clear_query_string": changelist.get_query_string(remove=self.expected_parameters()),
        }


def _moment(value: str):
    """A date or a date and time typed in a filter or an export link; naive values are UTC (as the
    list shows them). ``None`` for an empty value; ``ValueError`` for anything else unreadable."""
    value = value.strip()
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is None and (day := parse_date(value)) is not None:
        parsed = timezone.datetime.combine(day, timezone.datetime.min.time())
    if parsed is None:
        raise ValueError(value)
    return timezone.make_aware(parsed, timezone.get_fixed_timezone(0)) if timezone.is_naive(parsed) else parsed


class DateRangeFilter(admin.FieldListFilter):
    """Entries from a moment (inclusive) and before another (exclusive): the ``since`` and ``until`` of
    the evidence export, which reads the same two parameters."""

    template = "admin/audit_app/auditentry/input_filter.html"

    def __init__(self, field, request, params, model, model_admin, field_path):
        self.since_kwarg, self.until_kwarg = f"{field_path}__gte", f"{field_path}__lt"
        super().__init__(field, request, params, model, model_admin, field_path)
        self.values = {name: (self.used_parameters.get(name) or [""])[-1].strip() for name in self.expected_parameters()}

    def expected_parameters(self):
        return [self.since_kwarg, self.until_kwarg]

    def queryset(self, request, queryset):
        bounds = {}
        for name, value in self.values.items():
            try:
                moment = _moment(value)
            except ValueError:
                messages.error(request, _("“%(value)s” is not a date (YYYY-MM-DD, or YYYY-MM-DD HH:MM).") % {"value": value})
                return queryset.none()
            if moment is not None:
                bounds[name] = moment
        return queryset.filter(**bounds)

    def choices(self, changelist):
        yield {
            "selected": any(self.values.values()),
            "inputs": [
                {"name": self.since_kwarg, "label": _("from"), "value": self.values[self.since_kwarg], "type": "text"},
                {"name": self.until_kwarg, "label": _("before"), "value": self.values[self.until_kwarg], "type": "text"},
            ],
            "hidden": _other_parameters(changelist, self.expected_parameters()),
            "clear_query_string": changelist.get_query_string(remove=self.expected_parameters()),
        }


class TrailPaginator(Paginator):
    """Pages of the trail counted without reading it: the unfiltered list holds as many entries as
    the chain head's position (entries are numbered from 1 without gaps, which verification checks);
    a filtered list is counted up to ``cap`` entries and beyond that says "more than" (``capped``)."""

    cap = 10_000
    capped = False

    @cached_property
    def count(self):
        if not self.object_list.query.where:
            return ChainHead.objects.using(self.object_list.db).values_list("seq", flat=True).first() or 0
        counted = self.object_list.order_by()[: self.cap + 1].count()
        self.capped = counted > self.cap
        return min(counted, self.cap)


def _number(value: str | None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class TrailChangeList(ChangeList):
    def date_periods(self) -> dict:
        """The date hierarchy's links (the context of ``admin/date_hierarchy.html``), drawn from the
        first and last entries of the trail (two index lookups) instead of the distinct dates of the
        listed entries (a scan of all of them): a period between the two without entries is offered
        too, and lists nothing."""
        field = self.date_hierarchy
        names = {part: f"{field}__{part}" for part in ("year", "month", "day")}
        year, month, day = (_number(self.params.get(name)) for name in names.values())

        def link(**parts):
            return self.get_query_string({names[part]: value for part, value in parts.items()}, list(names.values()))

        if day and month and year:
            chosen = timezone.datetime(year, month, day).date()
            back = {"link": link(year=year, month=month), "title": capfirst(formats.date_format(chosen, "YEAR_MONTH_FORMAT"))}
            return {"show": True, "back": back, "choices": [{"title": capfirst(formats.date_format(chosen, "MONTH_DAY_FORMAT"))}]}
        # Both ends in one round trip, each an index lookup: two subqueries on the one-row chain head
        # (MIN and MAX in one aggregate would make SQLite read the whole index).
        dates = self.root_queryset.order_by().values(field)
        bounds = (
            ChainHead.objects.using(self.root_queryset.db)
            .values(first=Subquery(dates.order_by(field)[:1]), last=Subquery(dates.order_by(f"-{field}")[:1]))
            .first()
        )
        first, last = (bounds["first"], bounds["last"]) if bounds else (None, None)
        if first is None or last is None:
            return {"show": False}
        first, last = (timezone.localtime(moment).date() if timezone.is_aware(moment) else moment.date() for moment in (first, last))
        if not (year or month) and first.year == last.year:
            year = first.year
            if first.month == last.month:
                month = first.month
        if year and month:
            start = max(first, timezone.datetime(year, month, 1).date())
            end = min(last, (timezone.datetime(year + month // 12, month % 12 + 1, 1) - timezone.timedelta(days=1)).date())
            days = [start + timezone.timedelta(days=offset) for offset in range((end - start).days + 1)]
            return {
                "show": True,
                "back": {"link": link(year=year), "title": str(year)},
                "choices": [
                    {"link": link(year=year, month=month, day=d.day), "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT"))} for d in days
                ],
            }
        if year:
            months = [m for m in range(1, 13) if (first.year, first.month) <= (year, m) <= (last.year, last.month)]
            return {
                "show": True,
                "back": {"link": link(), "title": _("All dates")},
                "choices": [
                    {
                        "link": link(year=year, month=m),
                        "title": capfirst(formats.date_format(timezone.datetime(year, m, 1).date(), "YEAR_MONTH_FORMAT")),
                    }
                    for m in months
                ],
            }
        return {"show": True, "choices": [{"link": link(year=y), "title": str(y)} for y in range(first.year, last.year + 1)]}


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("seq", "created_at", "event", "change_id", "state", "actor", "environment", "target", "run_id")
    # No filter reads the whole trail: values listed come from index skip scans, the others are typed.
    list_filter = (
        ("event", IndexedValuesFilter), "state", ("environment", IndexedValuesFilter), ("target", IndexedValuesFilter),
        ("stage", IndexedValuesFilter), ("change_id", ExactValueFilter), ("run_id", ExactValueFilter), ("actor", ExactValueFilter),
        ("created_at", DateRangeFilter),
    )  # fmt: skip
    # Matched exactly, over their indexes (get_search_results).
    search_fields = ("change_id", "actor", "run_id")
    search_help_text = _("An exact change id, actor or run id; several words must all match.")
    date_hierarchy = "created_at"
    # Counting a million rows costs more than the page itself (TrailPaginator counts without reading them).
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = TrailPaginator
    # A trail is read in chain order; sorting a million rows by another column is a full sort.
    sortable_by = ("seq", "created_at")
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

    def get_ordering(self, request):
        # Narrowed by date, the list is read newest first by time over the created_at index: in chain
        # order the database would walk back from the head through every later entry to find the period.
        if any(name.startswith("created_at__") for name in request.GET):
            return ("-created_at", "-seq")
        return super().get_ordering(request)

    def get_changelist(self, request, **kwargs):
        return TrailChangeList

    def get_search_results(self, request, queryset, search_term):
        """Entries whose change id, actor or run id is exactly each word (quoted words may hold spaces):
        equality over an index, where Django's case-insensitive match reads every row."""
        for word in smart_split(search_term):
            if len(word) > 1 and word.startswith(('"', "'")) and word[0] == word[-1]:
                word = unescape_string_literal(word)
            if not word:
                continue
            match = Q(change_id=word) | Q(actor=word)
            try:
                match |= Q(run_id=uuid.UUID(word))
            except ValueError:
                pass
            queryset = queryset.filter(match)
        return queryset, False

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
    try:
        return _moment(value or "")
    except ValueError:
        return None


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
