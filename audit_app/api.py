"""The audit trail over the API: read-only (DOMAIN §8), newest first with cursor pagination on the
chain's sequence number (constant cost at any depth), the admin's filters, and the streamed
evidence export."""

from __future__ import annotations

from functools import partial
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils import timezone
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import fields, generics, pagination, serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.settings import ISO_8601, api_settings
from rest_framework.views import APIView

from changes_app.api import permissions as access
from changes_app.api import serializers as s
from changes_app.api.filters import UtcIsoDateTimeFilter
from changes_app.api.views import _errors

from .export import FORMATS, ExportFilters, audit_export
from .models import AuditEntry, ChangeStateName


class SeqCursorPagination(pagination.CursorPagination):
    ordering = "-seq"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request):
        # DRF accepts any text as the position; a position that is not a seq must be the documented
        # 404 (invalid cursor), not a server error when the database compares it with seq.
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                if not -(2**63) <= int(cursor.position) < 2**63:
                    raise ValueError(cursor.position)
            except ValueError:
                raise NotFound(self.invalid_cursor_message) from None
        return cursor


class AuditEntryFilter(filters.FilterSet):
    """The admin list's filters (event, state, environment, target, stage) and its searches."""

    event = filters.CharFilter()
    state = filters.ChoiceFilter(choices=ChangeStateName.choices)
    environment = filters.CharFilter()
    target = filters.CharFilter()
    stage = filters.CharFilter()
    change_id = filters.CharFilter()
    actor = filters.CharFilter()
    run_id = filters.UUIDFilter()
    created_at__gte = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_at__lt = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEntry
        fields: list[str] = []


def entries_visible(request):
    return access.audit_visible(request.user).exclude(seq=None)


#: DRF fields whose representation of a non-null value is a plain conversion (their own
#: ``to_representation``, without options that change it).
_PLAIN = {fields.CharField: str, fields.IntegerField: int, fields.FloatField: float}


def _conversion(field: fields.Field):
    """How the page serializer turns a non-null value of ``field`` into JSON: a function, ``None``
    for the value itself, or ``_in_zone`` for an ISO 8601 date-time in the current time zone."""
    if type(field) in _PLAIN:
        return _PLAIN[type(field)]
    if type(field) is fields.BigIntegerField and not getattr(field, "coerce_to_string", api_settings.COERCE_BIGINT_TO_STRING):
        return int
    if type(field) is fields.UUIDField and field.uuid_format == "hex_verbose":
        return str
    if type(field) is fields.JSONField and not field.binary:
        return None
    if (
        type(field) is fields.DateTimeField
        and str(getattr(field, "format", api_settings.DATETIME_FORMAT)).lower() == ISO_8601
        and not hasattr(field, "timezone")
        and settings.USE_TZ
    ):
        return _in_zone
    return field.to_representation


def _in_zone(value, zone, field: fields.DateTimeField) -> str:
    """DRF's ISO 8601 representation of an aware date-time, with the zone looked up once a page."""
    if value.utcoffset() is None:
        return field.to_representation(value)  # naive: DRF's own rules (made aware, or refused)
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class AuditEntryRows(serializers.ListSerializer):
    """A page of the list: the current time zone is read once for the page, not once per entry."""

    def to_representation(self, data):
        return self.child.rows(data)


class AuditEntryPageSerializer(s.AuditEntrySerializer):
    """The list's rows: exactly what :class:`AuditEntrySerializer` gives for an entry (same fields,
    same values; tests/audit_app/test_api_performance.py compares them), from the row's columns
    (a dict of ``.values(*columns())``) instead of a model instance, without DRF's per-field machinery.

    A page holds up to 500 entries of 25 fields: building the serializer's fields for each request,
    a model instance per row, then ``get_attribute`` and ``to_representation`` per field and row was
    the largest share of a list request's CPU time (bench/README.md, "API audit list"). How each field is
    read is worked out once per process from the parent's fields, which depend on nothing but its
    Meta; a field whose representation is more than a plain conversion keeps its own
    ``to_representation``.
    """

    class Meta(s.AuditEntrySerializer.Meta):
        list_serializer_class = AuditEntryRows

    _plan: list[tuple[str, str, Any, fields.Field]] | None = None

    @classmethod
    def plan(cls) -> list[tuple[str, str, Any, fields.Field]]:
        """(field name, column, conversion of a non-null value, the parent's field)."""
        if cls._plan is None:
            plan = []
            for field in s.AuditEntrySerializer()._readable_fields:
                if field.source_attrs != [field.source]:
                    raise TypeError(f"{field.field_name}: only a column of the entry can be read from its row")
                plan.append((field.field_name, field.source, _conversion(field), field))
            cls._plan = plan
        return cls._plan

    @classmethod
    def columns(cls) -> list[str]:
        return [column for _, column, _, _ in cls.plan()]

    def rows(self, rows) -> list[dict]:
        zone = timezone.get_current_timezone()
        plan = [
            (name, column, partial(_in_zone, zone=zone, field=field) if convert is _in_zone else convert)
            for name, column, convert, field in self.plan()
        ]
        out = []
        for row in rows:
            entry = {}
            for name, column, convert in plan:
                value = row[column]
                entry[name] = value if value is None or convert is None else convert(value)
            out.append(entry)
        return out

    def to_representation(self, instance: dict) -> dict:
        return self.rows([instance])[0]


@extend_schema(summary="Audit entries you may see, newest first", responses={200: s.AuditEntrySerializer(many=True), **_errors(400, 404)})
class AuditEntryList(generics.ListAPIView):
    queryset = AuditEntry.objects.none()
    serializer_class = AuditEntryPageSerializer
    pagination_class = SeqCursorPagination
    filterset_class = AuditEntryFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return self.queryset
        return entries_visible(self.request)

    def filter_queryset(self, queryset):
        # Without any of the filters' parameters the filter set selects everything: skip building
        # and validating its form (a tenth of a request's time). Any filter parameter, valid or
        # not, still goes through it, and so does every other filter backend.
        filtering = bool(self.request.query_params.keys() & AuditEntryFilter.base_filters.keys())
        for backend in self.filter_backends:
            if filtering or not issubclass(backend, filters.DjangoFilterBackend):
                queryset = backend().filter_queryset(self.request, queryset, self)
        return queryset

    def paginate_queryset(self, queryset):
        # The page's rows as dicts of the serialized columns (no model instance per row); the
        # cursor reads its position (seq) from them.
        return super().paginate_queryset(queryset.values(*self.get_serializer_class().columns()))


@extend_schema(summary="One audit entry", responses={200: s.AuditEntrySerializer, **_errors(404)})
class AuditEntryDetail(generics.RetrieveAPIView):
    queryset = AuditEntry.objects.none()
    serializer_class = s.AuditEntrySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return self.queryset
        return entries_visible(self.request)


class AuditExport(APIView):
    """CSV or JSON Lines, streamed with constant memory, ending with the signed chain head."""

    # Errors are JSON whatever the client accepts; the export itself bypasses the renderers.
    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request, force=False):
        return JSONRenderer(), JSONRenderer.media_type

    @extend_schema(
        summary="Stream an evidence export of the entries you may see",
        parameters=[
            OpenApiParameter("format", str, enum=list(FORMATS), default="jsonl"),
            OpenApiParameter("event", str),
            OpenApiParameter("state", str, enum=ChangeStateName.values),
            OpenApiParameter("environment", str),
            OpenApiParameter("target", str),
            OpenApiParameter("stage", str),
            OpenApiParameter("change_id", str),
            OpenApiParameter("actor", str),
            OpenApiParameter("run_id", OpenApiTypes.UUID),
            OpenApiParameter("created_at__gte", OpenApiTypes.DATETIME),
            OpenApiParameter("created_at__lt", OpenApiTypes.DATETIME),
        ],
        responses={
            (200, "application/x-ndjson"): OpenApiResponse(OpenApiTypes.STR, description="JSON Lines; the last line is the signed trailer."),
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV; the last line is the signed trailer."),
            **_errors(400),
        },
    )
    def get(self, request):
        params = request.query_params
        fmt = params.get("format", "jsonl")
        if fmt not in FORMATS:
            raise ValidationError({"format": [f"One of {', '.join(FORMATS)}."]})
        selected = AuditEntryFilter(params, queryset=entries_visible(request), request=request)
        if not selected.is_valid():
            raise ValidationError(selected.errors)
        data = selected.form.cleaned_data
        recorded = ExportFilters(
            query=params.urlencode(),
            since=data.get("created_at__gte"),
            until=data.get("created_at__lt"),
            change_id=data.get("change_id") or "",
            target=data.get("target") or "",
            actor=data.get("actor") or "",
            environment=data.get("environment") or "",
            run_id=str(data["run_id"]) if data.get("run_id") else "",
            events=[data["event"]] if data.get("event") else [],
        )
        response = StreamingHttpResponse(
            audit_export(fmt=fmt, filters=recorded, entries=selected.qs), content_type="text/csv" if fmt == "csv" else "application/x-ndjson"
        )
        response["Content-Disposition"] = f'attachment; filename="flamingock-audit-{timezone.now():%Y%m%dT%H%M%SZ}.{fmt}"'
        return response
