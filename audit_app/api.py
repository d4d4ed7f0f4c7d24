"""The audit trail over the API: read-only (DOMAIN §8), newest first with cursor pagination on the
chain's sequence number (constant cost at any depth), the admin's filters, and the streamed
evidence export."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from django.utils import timezone
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, pagination
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import JSONRenderer
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


@extend_schema(summary="Audit entries you may see, newest first", responses={200: s.AuditEntrySerializer(many=True), **_errors(400, 404)})
class AuditEntryList(generics.ListAPIView):
    queryset = AuditEntry.objects.none()
    serializer_class = s.AuditEntrySerializer
    pagination_class = SeqCursorPagination
    filterset_class = AuditEntryFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return self.queryset
        return entries_visible(self.request)


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
