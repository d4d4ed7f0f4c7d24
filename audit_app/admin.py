"""The audit trail in the admin for compliance officers: read-only at every step (no add, change,
delete or bulk action), its place in the chain on every entry, the last verification, and the
evidence export of exactly what the list shows.

The list stays fast at millions of entries because no request reads the whole trail: the count of
the unfiltered list is the chain head's position, a filtered list is counted up to a cap, filter
choices come from index skip scans, the search matches exact values over indexes, and the date
hierarchy is drawn from the first and last entries only (``bench/suites/audit_admin.py``)."""

import datetime
import functools
import json
import uuid

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.templatetags.admin_list import admin_list_filter, result_headers
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.utils import display_for_field, display_for_value
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import FieldDoesNotExist, PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connections, models
from django.db.models import Q, Subquery
from django.db.models.functions import JSONObject
from django.http import Http404, HttpResponseBadRequest, HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import formats, timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.decorators import method_decorator
from django.utils.encoding import iri_to_uri
from django.utils.functional import cached_property
from django.utils.html import conditional_escape, escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import capfirst, smart_split, unescape_string_literal
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from audit_app.export import FORMATS, ExportFilters, audit_export
from audit_app.links import admin_link, admin_link_maker, admin_url, admin_url_maker, details_html
from audit_app.models import AuditCheckpoint, AuditEntry, ChainHead, ChangeState, EntrySubject, Verification, VerificationRequest
from audit_app.types import Actor, TrailClosed
from audit_app.verify_requests import VerifyRefused, coverage, verify_request, verify_request_status


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


def distinct_values(columns: list[tuple[type[models.Model], str]], *, using: str, limit: int) -> dict[tuple, list]:
    """The distinct values of indexed columns (``(model, column)``, of one table or several), in
    order, read in one statement: each value is found by one descent of its column's index (a skip
    scan written as a recursive query) instead of a DISTINCT that reads every row."""
    quote = connections[using].ops.quote_name
    ctes, selects = [], []
    for index, (model, name) in enumerate(columns):
        table, column = quote(model._meta.db_table), quote(name)
        ctes.append(
            f"found{index}(value, n) AS (SELECT MIN({column}), 1 FROM {table} UNION ALL "
            f"SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > found{index}.value), n + 1 FROM found{index} "
            f"WHERE found{index}.value IS NOT NULL AND n < %s)"
        )
        selects.append(f"SELECT {index}, n, value FROM found{index} WHERE value IS NOT NULL")
    with connections[using].cursor() as cursor:
        cursor.execute(f"WITH RECURSIVE {', '.join(ctes)} {' UNION ALL '.join(selects)}", [limit] * len(columns))
        rows = sorted(cursor.fetchall(), key=lambda row: row[:2])
    return {pair: [value for index, _, value in rows if columns[index] == pair] for pair in columns}


def _filter_values(request, model_admin) -> dict[tuple, list]:
    """The values every listed-value filter of the list offers, read in one statement once per request."""
    key = "_audit_filter_values"
    if not hasattr(request, key):
        tables = {IndexedValuesFilter: model_admin.model, SubjectValuesFilter: EntrySubject}
        columns = [
            (table, model_admin.model._meta.get_field(spec[0]).column)
            for spec in model_admin.get_list_filter(request)
            if isinstance(spec, tuple)
            for kind, table in tables.items()
            if issubclass(spec[1], kind)
        ]
        using = model_admin.get_queryset(request).db
        setattr(request, key, distinct_values(columns, using=using, limit=FILTER_CHOICES_MAX) if columns else {})
    return getattr(request, key)


class IndexedValuesFilter(admin.AllValuesFieldListFilter):
    """Every value of an indexed column, as Django's own filter offers them, read by a skip scan."""

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        # Replaces the parent's lazy DISTINCT queryset before anything evaluates it.
        self.lookup_choices = _filter_values(request, model_admin)[model, field.column]

    def choices(self, changelist):
        for choice in super().choices(changelist):
            yield {**choice, "display": choice["display"] or self.empty_value_display}


class SubjectValuesFilter(admin.AllValuesFieldListFilter):
    """The values of an entry's subject (its target or change, :mod:`audit_app.subjects`): read by a
    skip scan of the side index, and selecting through it, so that governance and drift entries, which
    name their subject in their details, are found with the others."""

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        self.lookup_choices = _filter_values(request, model_admin)[EntrySubject, field.column]

    def queryset(self, request, queryset):
        return _by_subject(queryset, self.used_parameters)

    def choices(self, changelist):
        for choice in super().choices(changelist):
            yield {**choice, "display": choice["display"] or self.empty_value_display}


def _by_subject(queryset, parameters: dict):
    """Select on the side index's column of the same name (``target=x`` -> ``subject__target=x``)."""
    lookups = {f"subject__{name}": values[-1] if isinstance(values, list) else values for name, values in parameters.items()}
    if any(name.endswith("__isnull") for name in lookups):
        return queryset.none() if any(lookups.values()) else queryset
    return queryset.filter(**lookups)


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
            "inputs": [{"name": self.lookup_kwarg, "label": "", "value": self.value, "type": "text", "error": ""}],
            "hidden": _other_parameters(changelist, self.expected_parameters()),
            "clear_query_string": changelist.get_query_string(remove=self.expected_parameters()),
        }


class SubjectExactFilter(ExactValueFilter):
    """A typed change id, matched through the side index: a change's own entries and the governance and
    drift entries that name it in their details."""

    def queryset(self, request, queryset):
        if not self.value:
            return queryset
        return queryset.filter(**{f"subject__{self.lookup_kwarg}": self.value})


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


def _is_day(value: str) -> bool:
    try:
        return parse_date(value) is not None
    except ValueError:
        return False


class DateRangeFilter(admin.FieldListFilter):
    """Entries from a moment (inclusive) and before another (exclusive): the ``since`` and ``until`` of
    the evidence export, which reads the same two parameters."""

    template = "admin/audit_app/auditentry/input_filter.html"

    def __init__(self, field, request, params, model, model_admin, field_path):
        self.since_kwarg, self.until_kwarg = f"{field_path}__gte", f"{field_path}__lt"
        super().__init__(field, request, params, model, model_admin, field_path)
        self.values = {name: (self.used_parameters.get(name) or [""])[-1].strip() for name in self.expected_parameters()}
        self.errors: dict[str, str] = {}

    def expected_parameters(self):
        return [self.since_kwarg, self.until_kwarg]

    def queryset(self, request, queryset):
        bounds = {}
        for name, value in self.values.items():
            try:
                moment = _moment(value)
            except ValueError:
                # Said twice: at the top of the page and beside the box that holds it.
                self.errors[name] = _("“%(value)s” is not a date (YYYY-MM-DD, or YYYY-MM-DD HH:MM).") % {"value": value}
                messages.error(request, self.errors[name])
                return queryset.none()
            if moment is not None:
                bounds[name] = moment
        return queryset.filter(**bounds)

    def choices(self, changelist):
        def box(name, text):
            value = self.values[name]
            # A date picker; a value with a time, or one that is not a date, is kept in a text box
            # (a date input would show it empty and the error would seem to have no cause).
            kind = "date" if not value or (name not in self.errors and _is_day(value)) else "text"
            return {"name": name, "label": text, "value": value, "type": kind, "error": self.errors.get(name, "")}

        yield {
            "selected": any(self.values.values()),
            "inputs": [box(self.since_kwarg, _("from")), box(self.until_kwarg, _("before"))],
            "hidden": _other_parameters(changelist, self.expected_parameters()),
            "clear_query_string": changelist.get_query_string(remove=self.expected_parameters()),
        }


class TrailPaginator(Paginator):
    """Pages of the trail counted without reading it: the unfiltered list holds as many entries as
    the chain head's position (entries are numbered from 1 without gaps, which verification checks);
    a filtered list is counted up to ``cap`` entries and beyond that says "more than" (``capped``)."""

    cap = 10_000
    capped = False

    def __init__(self, *args, head=None, **kwargs):
        super().__init__(*args, **kwargs)
        #: The chain head's position when the caller has read it already (a callable), else read here.
        self.head = head or (lambda: ChainHead.objects.using(self.object_list.db).values_list("seq", flat=True).first() or 0)

    @cached_property
    def count(self):
        if not self.object_list.query.where:
            return self.head()
        counted = self.object_list.order_by()[: self.cap + 1].count()
        self.capped = counted > self.cap
        return min(counted, self.cap)


def _row(queryset) -> Subquery:
    """The first row of ``queryset``, every column, as one JSON value: a column of another query."""
    fields = queryset.model._meta.concrete_fields
    return Subquery(queryset.values(row=JSONObject(**{field.attname: field.attname for field in fields}))[:1])


def _moment_of(value) -> datetime.datetime | None:
    """A time as a database or its JSON hands it over: aware, or text or naive in UTC (as stored)."""
    if value is None:
        return None
    moment = parse_datetime(value) if isinstance(value, str) else value
    return timezone.make_aware(moment, datetime.UTC) if timezone.is_naive(moment) else moment


def _from_row(model, row, using: str):
    """The instance of ``model`` that :func:`_row` read (``None`` for no row)."""
    if row is None:
        return None
    if isinstance(row, str):
        row = json.loads(row)
    fields, values = model._meta.concrete_fields, []
    for field in fields:
        value = row.get(field.attname)
        if isinstance(field, models.DateTimeField):
            value = _moment_of(value)
        elif value is not None:
            value = field.to_python(value)
        values.append(value)
    return model.from_db(using, [field.attname for field in fields], values)


@functools.lru_cache(maxsize=16)
def _facts_statement(using: str, field: str) -> tuple[str, tuple]:
    """The statement of :func:`trail_facts`, built once per database: the same every time, and its
    building (a JSON object of every column of three tables) cost more than the four statements it
    replaces."""
    dates = AuditEntry.objects.using(using).order_by().values(field)
    under_way = [VerificationRequest.Status.QUEUED, VerificationRequest.Status.RUNNING]
    # Each part an index lookup, as subqueries of the one-row chain head (MIN and MAX in one
    # aggregate would make SQLite read the whole index).
    facts = (
        ChainHead.objects.using(using)
        .order_by("id")
        .values(
            "seq",
            first=Subquery(dates.order_by(field)[:1]),
            last=Subquery(dates.order_by(f"-{field}")[:1]),
            verification=_row(Verification.objects.using(using).order_by("-performed_at", "-id")),
            checkpoint=_row(AuditCheckpoint.objects.using(using).order_by("-seq", "-id")),
            pending=_row(VerificationRequest.objects.using(using).filter(status__in=under_way).order_by("-id")),
            verified_to=Subquery(Verification.objects.using(using).filter(head_seq__isnull=False).order_by("-head_seq").values("head_seq")[:1]),
        )[:1]
    )
    return facts.query.get_compiler(using).as_sql()


def trail_facts(request, model_admin) -> dict:
    """What the list says of the trail as a whole, read in one statement once per request (five
    statements before; on a busy server each round trip costs): the chain head's position (the
    count of the unfiltered list), the first and last entries' times (the date hierarchy), the last
    verification, the last signed checkpoint, the verification under way, and how far verifications
    reached."""
    key = "_audit_trail_facts"
    if hasattr(request, key):
        return getattr(request, key)
    using = model_admin.get_queryset(request).db
    with connections[using].cursor() as cursor:
        cursor.execute(*_facts_statement(using, model_admin.date_hierarchy or "created_at"))
        head, first, last, verification, checkpoint, pending, verified_to = cursor.fetchone() or (0, None, None, None, None, None, None)
    facts = {
        "head": head or 0,
        "first": _moment_of(first),
        "last": _moment_of(last),
        "last_verification": _from_row(Verification, verification, using),
        "last_checkpoint": _from_row(AuditCheckpoint, checkpoint, using),
        "pending_verification": _from_row(VerificationRequest, pending, using),
        #: The furthest entry any verification reached (0: none), for what covers a page.
        "verified_to": verified_to or 0,
    }
    setattr(request, key, facts)
    return facts


def _number(value: str | None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class TrailChangeList(ChangeList):
    def __init__(self, request, *args, **kwargs):
        # What this request has read of the trail as a whole (the date hierarchy's ends).
        self.trail_facts = lambda: trail_facts(request, self.model_admin)
        super().__init__(request, *args, **kwargs)

    def get_results(self, request):
        super().get_results(request)
        # What covers each listed entry, for the page at once (a constant number of queries); none
        # when every entry is past the furthest verification and checkpoint (the newest entries).
        seqs = [entry.seq for entry in self.result_list if entry.seq]
        facts = self.trail_facts()
        if seqs and max(facts["verified_to"], facts["last_checkpoint"].seq if facts["last_checkpoint"] else 0) < min(seqs):
            covered = {seq: {"verification": None, "checkpoint": None} for seq in seqs}
        else:
            covered = coverage(seqs, using=self.root_queryset.db)
        marks: dict[tuple, str] = {}  # rows covered alike share their marks (most of a page)
        for entry in self.result_list:
            entry.coverage = covered.get(entry.seq)
            if entry.coverage is not None:
                verification, checkpoint = entry.coverage["verification"], entry.coverage["checkpoint"]
                intact = verification is not None and _intact(verification, entry.seq)
                key = (verification and verification.pk, intact, checkpoint and checkpoint.pk)
                if key not in marks:
                    marks[key] = _coverage_marks(entry.coverage, entry.seq, short=True)
                entry.evidence_marks = marks[key]

    @cached_property
    def trail_table(self) -> dict:
        """The result table's context, as Django's ``result_list`` tag builds it, with the rows drawn
        in one pass (:meth:`rows_html`) instead of Django's cell by cell."""
        headers = list(result_headers(self))
        return {
            "cl": self,
            "result_headers": headers,
            "num_sorted_fields": sum(1 for header in headers if header["sortable"] and header["sorted"]),
            "rows_html": self.rows_html(),
        }

    @cached_property
    def filters_html(self) -> SafeString:
        """The filters, the same markup as Django's ``admin_list_filter`` tag renders from each
        filter's template (a test compares them), drawn in Python: nine small templates were a tenth
        of the page's time. A filter with another template is rendered by it."""
        drawn = []
        for spec in self.filter_specs:
            draw = _FILTER_DRAWINGS.get(spec.template)
            drawn.append(draw(spec, list(spec.choices(self))) if draw else admin_list_filter(self, spec))
        return mark_safe("".join(drawn))

    def rows_html(self) -> SafeString:
        """The page's rows, the same markup as Django's ``items_for_result`` (a test compares them):
        how each column shows its value is worked out once for the page (:func:`_column_display`), and
        each entry's link is one URL with its id put in, where Django reverses and resolves it again
        for every row (on a page of 50 entries that cell-by-cell work was half the page's time,
        bench/suites/audit_admin.py)."""
        model_admin, opts = self.model_admin, self.lookup_opts
        empty = model_admin.get_empty_value_display()
        columns = []
        for name in self.list_display:
            try:
                field = opts.get_field(name)
            except FieldDoesNotExist:  # a method of the ModelAdmin, as Django looks it up
                columns.append((f"field-{name}", _method_display(model_admin, name, empty)))
                continue
            nowrap = isinstance(field, (models.DateField, models.TimeField, models.ForeignKey))
            columns.append((f"field-{name} nowrap" if nowrap else f"field-{name}", _field_display(field, empty)))
        marker = "9081726354453627"  # an id that no row has, replaced by each row's own
        try:
            link = add_preserved_filters(
                {"preserved_filters": self.preserved_filters, "opts": self.opts}, self.url_for_result(opts.model(pk=int(marker)))
            )
        except NoReverseMatch:
            link = ""
        (first_class, first_display), rest = columns[0], columns[1:]
        rows = []
        for result in self.result_list:
            shown = first_display(result)
            cells = [
                f'<th class="{first_class}"><a href="{escape(link.replace(marker, str(result.pk)))}">{shown}</a></th>'
                if link
                else f'<th class="{first_class}">{shown}</th>'
            ]
            cells.extend(f'<td class="{classes}">{display(result)}</td>' for classes, display in rest)
            rows.append(f"<tr>{''.join(cells)}</tr>")
        return mark_safe("\n".join(rows))

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
        # Both ends read with the list's other facts of the trail, in one statement (trail_facts).
        facts = self.trail_facts()
        first, last = facts["first"], facts["last"]
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


def _filter_summary(title) -> str:
    by = gettext(" By %(filter_title)s ") % {"filter_title": conditional_escape(title)}
    return f'\n<details data-filter-title="{conditional_escape(title)}" open>\n  <summary>\n    {by}\n  </summary>\n'


def _draw_list_filter(spec, choices: list[dict]) -> str:
    """Django's ``admin/filter.html``: a list of links, the selected one marked."""
    items = "".join(
        "\n    <li" + (' class="selected"' if choice["selected"] else "") + ">\n"
        f'    <a href="{escape(iri_to_uri(choice["query_string"]))}">{conditional_escape(choice["display"])}</a></li>\n  '
        for choice in choices
    )
    return f"{_filter_summary(spec.title)}  <ul>\n  {items}\n  </ul>\n</details>\n"


def _draw_input_filter(spec, choices: list[dict]) -> str:
    """``admin/audit_app/auditentry/input_filter.html``: typed values, with their errors."""
    title, forms = conditional_escape(spec.title), []
    for choice in choices:
        hidden = "".join(f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">' for name, value in choice["hidden"])
        boxes = []
        for box in choice["inputs"]:
            name, label, error = escape(box["name"]), conditional_escape(box["label"]), conditional_escape(box["error"])
            boxes.append(
                "\n      <div>\n        "
                + (f'<label for="filter-{name}">{label}</label>' if box["label"] else "")
                + f'\n        <input type="{escape(box["type"])}" id="filter-{name}" name="{name}" value="{escape(box["value"])}" size="18" aria-label="{title} {label}"'
                + (f' aria-invalid="true" aria-describedby="filter-{name}-error"' if box["error"] else "")
                + ">\n        "
                + (f'<p class="errornote flk-filter-error" id="filter-{name}-error" role="alert">{error}</p>' if box["error"] else "")
                + "\n      </div>\n    "
            )
        clear = (
            f'<a href="{escape(iri_to_uri(choice["clear_query_string"]))}" class="audit-filter-clear">&#10006; {escape(gettext("Clear"))}</a>'
            if choice["selected"]
            else ""
        )
        forms.append(
            '\n  <form method="get" class="audit-input-filter" style="padding: 5px 15px;">\n    '
            f"{hidden}\n    {''.join(boxes)}\n    "
            f'<input type="submit" value="{escape(gettext("Filter"))}">\n    {clear}\n  </form>\n  '
        )
    return f"{_filter_summary(spec.title)}  {''.join(forms)}\n</details>\n"


#: A filter's template -> how it is drawn in Python (TrailChangeList.filters_html).
_FILTER_DRAWINGS = {"admin/filter.html": _draw_list_filter, "admin/audit_app/auditentry/input_filter.html": _draw_input_filter}


def _field_display(field, empty: str):
    """How a model field's value shows in a row, escaped: what ``display_for_field`` returns, with
    the choices read once and each distinct time formatted once for the page."""
    attname = field.attname

    def value_of(result):
        value = getattr(result, attname)
        return "" if isinstance(value, str) and value.strip() == "" else value

    if getattr(field, "flatchoices", None):
        try:
            choices = {value: conditional_escape(text) for value, text in field.flatchoices}
        except TypeError:  # unhashable choices: as Django does it
            return lambda result: conditional_escape(display_for_field(value_of(result), field, empty))
        shown_empty = conditional_escape(empty)
        return lambda result: choices.get(value_of(result), shown_empty)
    if isinstance(field, models.DateTimeField):
        # A list shows times to the minute (DATETIME_FORMAT), or the second if its format has them:
        # rows that show alike share one formatting. A format letter that may show seconds or less
        # (even escaped) keeps them in the key.
        letters = set(formats.get_format("DATETIME_FORMAT"))
        precision = {} if letters & set("uvc") else {"microsecond": 0} if letters & set("sUr") else {"second": 0, "microsecond": 0}
        formatted: dict = {}

        def show(result):
            value = value_of(result)
            if value in field.empty_values:
                return conditional_escape(empty)
            key = value.replace(**precision)
            if key not in formatted:
                formatted[key] = conditional_escape(display_for_field(value, field, empty))
            return formatted[key]

        return show
    shown_empty = conditional_escape(empty)
    if isinstance(field, models.IntegerField) and formats.number_format(1234567) == "1234567":
        # Numbers shown as they are (no thousands separator configured), as number_format would.
        return lambda result: shown_empty if (value := value_of(result)) in field.empty_values else str(value)
    if type(field) in (models.CharField, models.TextField):
        return lambda result: escape(value) if (value := value_of(result)) not in field.empty_values else shown_empty
    return lambda result: conditional_escape(display_for_field(value_of(result), field, empty))


def _method_display(model_admin, name: str, empty: str):
    """How a ModelAdmin method's value shows in a row, escaped: what ``lookup_field`` and
    ``display_for_value`` return, with the method looked up once for the page."""
    method = getattr(model_admin, f"{name}_for_page", None)
    method = method() if method is not None else getattr(model_admin, name)
    shown_empty = getattr(method, "empty_value_display", empty)
    boolean = getattr(method, "boolean", False)

    def show(result):
        value = method(result)
        if isinstance(value, str) and not boolean:
            return conditional_escape(value if value.strip() else shown_empty)
        return conditional_escape(display_for_value(value, shown_empty, boolean))

    return show


def _drawn_once(display, key):
    """``display`` of a row, drawn once per distinct ``key(row)``."""
    drawn: dict = {}

    def show(obj):
        value = key(obj)
        if value not in drawn:
            drawn[value] = display(obj)
        return drawn[value]

    return show


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("seq", "created", "event", "change_link", "state", "actor_link", "environment", "target_link", "run_link", "evidence")
    # No filter reads the whole trail: values listed come from index skip scans, the others are typed.
    # Target and change select through the side index (audit_app.subjects): governance and drift too.
    list_filter = (
        ("event", IndexedValuesFilter), "state", ("environment", IndexedValuesFilter), ("target", SubjectValuesFilter),
        ("stage", IndexedValuesFilter), ("change_id", SubjectExactFilter), ("run_id", ExactValueFilter), ("actor", ExactValueFilter),
        ("created_at", DateRangeFilter),
    )  # fmt: skip
    # Matched by prefix, over their indexes (get_search_results).
    search_fields = ("change_id", "actor", "run_id")
    search_help_text = _("The start of a change id or an actor, or a whole run id (case matters); several words must all match.")
    date_hierarchy = "created_at"
    # Counting a million rows costs more than the page itself (TrailPaginator counts without reading them).
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = TrailPaginator
    # A trail is read in chain order; sorting a million rows by another column is a full sort.
    sortable_by = ("seq", "created")
    list_per_page = 50
    ordering = ("-seq",)
    fieldsets = (
        (None, {"fields": ("summary", "details_view")}),
        (_("Evidence"), {"fields": ("covered_by", "chain_position")}),
        (_("As stored"), {"classes": ("collapse",), "fields": (
            "seq", "id", "created_at", "event", "environment", "change_id", "stage", "order", "target", "state",
            "checksum", "transaction_strategy", "recovery_strategy", "run_id", "actor", "actor_user_id", "host", "pid",
            "fencing_token", "duration_ms", "reason", "error", "rollback_error", "details", "hash_version", "prev_hash", "entry_hash",
            "member",
        )}),
    )  # fmt: skip
    readonly_fields = tuple(name for title, options in fieldsets for name in options["fields"])
    change_list_template = "admin/audit_app/auditentry/change_list.html"
    change_form_template = "admin/audit_app/auditentry/change_form.html"

    @admin.display(description=_("created at"), ordering="created_at")
    def created(self, obj):
        # To the second, as the exports and the API write it (an auditor lines rows up across them);
        # in the site's time zone, sortable as text. Also a fifth of the page's time less than
        # Django's localized date format, drawn for each of 50 rows.
        return timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M:%S") if obj.created_at else self.get_empty_value_display()

    # The link columns take the page's link makers (the ``*_for_page`` variants below); alone, each
    # looks its page up for itself.
    @admin.display(description=_("change"), ordering=None)
    def change_link(self, obj, link=None):
        return (link or admin_link_maker("change"))(obj.change_id) if obj.change_id else self.get_empty_value_display()

    @admin.display(description=_("actor"))
    def actor_link(self, obj, link=None):
        return (link or admin_link_maker("user"))(obj.actor_user_id, obj.actor) if obj.actor_user_id else obj.actor

    @admin.display(description=_("target"))
    def target_link(self, obj, link=None):
        return (link or admin_link_maker("target"))(obj.target) if obj.target else self.get_empty_value_display()

    @admin.display(description=_("run"))
    def run_link(self, obj, url_of=None):
        # The first block of the id says which run; the whole id is the link's title.
        if not obj.run_id:
            return self.get_empty_value_display()
        url = (url_of or admin_url_maker("run"))(obj.run_id)
        short = str(obj.run_id)[:8]
        return (
            format_html('<a href="{}" title="{}">{}…</a>', url, obj.run_id, short)
            if url
            else format_html('<span title="{}">{}…</span>', obj.run_id, short)
        )

    # For a whole page (TrailChangeList.rows_html): the same links, each page's URL looked up once and
    # each distinct value drawn once (a page names a few changes, targets, actors and runs many times).
    def change_link_for_page(self):
        link = admin_link_maker("change")
        return _drawn_once(lambda obj: self.change_link(obj, link), lambda obj: obj.change_id)

    def actor_link_for_page(self):
        link = admin_link_maker("user")
        return _drawn_once(lambda obj: self.actor_link(obj, link), lambda obj: (obj.actor_user_id, obj.actor))

    def target_link_for_page(self):
        link = admin_link_maker("target")
        return _drawn_once(lambda obj: self.target_link(obj, link), lambda obj: obj.target)

    def run_link_for_page(self):
        url_of = admin_url_maker("run")
        return _drawn_once(lambda obj: self.run_link(obj, url_of), lambda obj: obj.run_id)

    @admin.display(description=_("verified · signed"))
    def evidence(self, obj):
        if hasattr(obj, "evidence_marks"):  # the page's, computed at once (TrailChangeList.get_results)
            return obj.evidence_marks
        covered = coverage([obj.seq]).get(obj.seq) if obj.seq else None
        return _coverage_marks(covered, obj.seq, short=True) if covered else self.get_empty_value_display()

    @admin.display(description=_("covered by"))
    def covered_by(self, obj):
        if not obj.seq:
            return _("Not in the chain: this row was not written by the one writer.")
        return _coverage_marks(coverage([obj.seq]).get(obj.seq), obj.seq, short=False)

    @admin.display(description=_("entry"))
    def summary(self, obj):
        rows = [
            (_("Event"), obj.event),
            (_("When"), formats.date_format(timezone.localtime(obj.created_at), "DATETIME_FORMAT") if obj.created_at else ""),
            (_("Who"), self.actor_link(obj)),
            (_("Environment"), obj.environment),
            (_("Change"), admin_link("change", obj.change_id) if obj.change_id else ""),
            (_("Target system"), admin_link("target", obj.target) if obj.target else ""),
            (_("Stage"), obj.stage),
            (_("State"), obj.get_state_display() if obj.state else ""),
            (_("Run"), admin_link("run", obj.run_id) if obj.run_id else ""),
            (_("Reason"), obj.reason),
            (_("Error"), obj.error),
            (_("Rollback error"), obj.rollback_error),
            (_("Host"), f"{obj.host} (pid {obj.pid})" if obj.host else ""),
        ]
        return format_html('<dl class="flk-details">{}</dl>', format_html_join("", "<dt>{}</dt><dd>{}</dd>", ((k, v) for k, v in rows if v)))

    @admin.display(description=_("details"))
    def details_view(self, obj):
        return details_html(obj.details)

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

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        # The unfiltered count is the chain head's position, read with the list's other facts.
        return self.paginator(queryset, per_page, orphans, allow_empty_first_page, head=lambda: trail_facts(request, self)["head"])

    def get_search_results(self, request, queryset, search_term):
        """Entries whose change id or actor starts with each word, or whose run id is the word (quoted
        words may hold spaces): a prefix over an index (``LIKE 'x%'``), where Django's
        case-insensitive match anywhere in the value reads every row."""
        vendor = connections[queryset.db].vendor
        for word in smart_split(search_term):
            if len(word) > 1 and word.startswith(('"', "'")) and word[0] == word[-1]:
                word = unescape_string_literal(word)
            if not word:
                continue
            match = _prefix("change_id", word, vendor) | _prefix("actor", word, vendor)
            try:
                match |= Q(run_id=uuid.UUID(word))
            except ValueError:
                pass
            queryset = queryset.filter(match)
        return queryset, False

    def has_verify_permission(self, request) -> bool:
        return request.user.has_perm("audit_app.verify_chain")

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("export/", view(self.export_view), name="audit_app_auditentry_export"),
            path("verify/", view(self.verify_view), name="audit_app_auditentry_verify"),
            path("verify/<int:pk>/", view(self.verify_progress_view), name="audit_app_auditentry_verify_progress"),
            path("verify/<int:pk>/status/", view(self.verify_status_view), name="audit_app_auditentry_verify_status"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        may_verify = self.has_verify_permission(request)
        facts = trail_facts(request, self)
        extra_context = {
            **(extra_context or {}),
            "last_verification": facts["last_verification"],
            "last_checkpoint": facts["last_checkpoint"],
            "export_formats": FORMATS,
            "may_verify": may_verify,
            "pending_verification": facts["pending_verification"] if may_verify else None,
        }
        return super().changelist_view(request, extra_context)

    @method_decorator(require_POST)
    def verify_view(self, request):
        """ "Verify now": record who asked and queue the verification on a worker, then show its progress."""
        if not self.has_verify_permission(request):
            raise PermissionDenied
        user = request.user
        try:
            verification, created = verify_request(user=user, actor=Actor(name=user.get_username(), user_id=user.pk, via="ui"))
        except VerifyRefused as refused:
            raise PermissionDenied(str(refused)) from None
        except TrailClosed as closed:
            # Nothing was written: the trail refuses every entry until the quarantine steps are followed.
            self.message_user(request, str(closed), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:audit_app_auditentry_changelist"))
        if created:
            self.message_user(request, _("Verification requested: a worker is recomputing the chain."), messages.SUCCESS)
        else:
            self.message_user(request, _("A verification is already under way; this is its progress."), messages.INFO)
        return HttpResponseRedirect(reverse("admin:audit_app_auditentry_verify_progress", args=[verification.pk]))

    def _verification_request(self, request, pk: int) -> VerificationRequest:
        if not self.has_verify_permission(request):
            raise PermissionDenied
        found = VerificationRequest.objects.select_related("verification").filter(pk=pk).first()
        if found is None:
            raise Http404
        return found

    def verify_progress_view(self, request, pk: int):
        verification = self._verification_request(request, pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Verification of the audit chain"),
            "status": verify_request_status(verification),
            "status_url": reverse("admin:audit_app_auditentry_verify_status", args=[verification.pk]),
            "request_entry_url": admin_url("entry", verification.request_entry_id),
        }
        return TemplateResponse(request, "admin/audit_app/auditentry/verify_progress.html", context)

    def verify_status_view(self, request, pk: int):
        """The progress of a requested verification, as JSON, for the progress page to poll."""
        status = verify_request_status(self._verification_request(request, pk))
        if status["verification_id"]:
            status["verification_url"] = admin_url("verification", status["verification_id"])
        return JsonResponse(status)

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


def _prefix(field: str, word: str, vendor: str) -> Q:
    """Values of ``field`` that start with ``word``, case-sensitively and over the column's index: on
    SQLite (whose LIKE ignores case and then reads every row) as the range of values from the word to
    the next word in code-point order; elsewhere ``LIKE 'word%'``, which PostgreSQL answers from the
    pattern indexes (migration 0007)."""
    if vendor == "sqlite" and ord(word[-1]) < 0x10FFFF:
        return Q(**{f"{field}__gte": word, f"{field}__lt": word[:-1] + chr(ord(word[-1]) + 1)})
    return Q(**{f"{field}__startswith": word})


def _intact(verification: Verification, seq: int) -> bool:
    """Whether a verification found the entry ``seq`` intact (everything before the first broken one)."""
    return verification.ok or (verification.first_broken_seq is not None and seq < verification.first_broken_seq)


def _coverage_marks(covered: dict | None, seq: int, *, short: bool):
    """The verification and the signed checkpoint that cover an entry, linked."""
    verification, checkpoint = (covered or {}).get("verification"), (covered or {}).get("checkpoint")
    parts = []
    if verification is None:
        parts.append(format_html('<span class="flk-mark flk-unverified">{}</span>', _("not verified yet")))
    else:
        intact = _intact(verification, seq)
        when = formats.date_format(timezone.localtime(verification.performed_at), "SHORT_DATETIME_FORMAT")
        text = (
            (_("✓ verified") if intact else _("✗ broken"))
            if short
            else format_html(
                "{} {} ({}, #{}–#{})",
                _("verified intact by") if intact else _("found BROKEN by"),
                _("verification %(pk)s") % {"pk": verification.pk},
                when,
                verification.from_seq or 1,
                verification.head_seq,
            )
        )
        parts.append(
            format_html(
                '<a class="flk-mark {}" href="{}" title="{}">{}</a>',
                "flk-verified" if intact else "flk-broken",
                admin_url("verification", verification.pk),
                when,
                text,
            )
        )
    if checkpoint is None:
        parts.append(format_html('<span class="flk-mark flk-unsigned">{}</span>', _("no checkpoint yet")))
    else:
        text = (
            _("signed #%(seq)s") % {"seq": checkpoint.seq}
            if short
            else _("signed checkpoint at #%(seq)s, key %(key)s") % {"seq": checkpoint.seq, "key": checkpoint.key_id}
        )
        parts.append(format_html('<a class="flk-mark flk-signed" href="{}">{}</a>', admin_url("checkpoint", checkpoint.pk), text))
    return format_html_join(" · " if short else "<br>", "{}", ((part,) for part in parts))


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
    list_display = ("performed_at", "mode", "ok", "entries_checked", "from_seq", "head_seq", "first_broken_seq", "duration_ms", "actor")
    list_filter = ("ok", "mode")
    readonly_fields = (
        "performed_at",
        "mode",
        "ok",
        "entries_checked",
        "from_seq",
        "head_seq",
        "first_broken_seq",
        "first_broken_id",
        "problem",
        "duration_ms",
        "actor",
    )
