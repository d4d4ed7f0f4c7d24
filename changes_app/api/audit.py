"""The audit trail over the API: read-only (docs/semantics.md §11), newest first with cursor pagination on the
chain's sequence number (constant cost at any depth), the admin's filters, and the streamed
evidence export."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from django.utils import timezone
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, pagination, permissions, serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from audit_app.export import FORMATS, ExportFilters, audit_export
from audit_app.models import AuditEntry, ChangeStateName, VerificationRequest
from audit_app.types import TrailClosed
from audit_app.verify_requests import coverage, verify_request, verify_request_status
from changes_app.api import serializers as s
from changes_app.api.errors import ApiError
from changes_app.api.filters import UtcIsoDateTimeFilter
from changes_app.api.schema import error_responses
from changes_app.governance import visibility
from changes_app.governance.identity import user_actor
from changes_app.services import representations


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
    # Through the side index (audit_app.subjects): governance and drift entries name theirs in details.
    target = filters.CharFilter(field_name="subject__target")
    stage = filters.CharFilter()
    change_id = filters.CharFilter(field_name="subject__change_id")
    actor = filters.CharFilter()
    run_id = filters.UUIDFilter()
    created_at__gte = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_at__lt = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEntry
        fields: list[str] = []


def entries_visible(request):
    return visibility.audit_visible(request.user).exclude(seq=None)


class AuditEntryRows(serializers.ListSerializer):
    """A page of the list, from the rows' columns in one pass (the time zone looked up once)."""

    def to_representation(self, data):
        return representations.audit_entry_rows(data)


class AuditEntryPageSerializer(s.AuditEntrySerializer):
    """The list's rows: exactly what :class:`AuditEntrySerializer` gives for an entry (the same
    ``services.representations`` function; tests/audit_app/test_api_performance.py compares them),
    from the row's columns (a dict of ``.values(*columns())``) instead of a model instance.

    A page holds up to 500 entries of 25 fields: a model instance per row and DRF's per-field
    machinery were the largest share of a list request's CPU time (bench/README.md, "API audit list").
    """

    class Meta(s.AuditEntrySerializer.Meta):
        list_serializer_class = AuditEntryRows

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return representations.AUDIT_ENTRY_FIELDS

    def to_representation(self, instance: dict) -> dict:
        return representations.audit_entry_rows([instance])[0]


@extend_schema(summary="Audit entries you may see, newest first", responses={200: s.AuditEntrySerializer(many=True), **error_responses(400, 404)})
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


class AuditEntryCoveredSerializer(s.AuditEntrySerializer):
    """One entry, with the verification and the signed checkpoint that cover it (as its admin page shows)."""

    covered_by = serializers.SerializerMethodField(
        help_text="The latest verification whose range includes the entry, and the first checkpoint at or after it."
    )

    class Meta(s.AuditEntrySerializer.Meta):
        fields = (*s.AuditEntrySerializer.Meta.fields, "covered_by")
        read_only_fields = fields

    def get_covered_by(self, instance) -> dict:
        covered = coverage([instance.seq]).get(instance.seq) if instance.seq else None
        verification, checkpoint = (covered or {}).get("verification"), (covered or {}).get("checkpoint")
        return {
            "verification": None
            if verification is None
            else {
                "id": verification.pk,
                "performed_at": verification.performed_at.isoformat(),
                "ok": verification.ok,
                "from_seq": verification.from_seq or 1,
                "head_seq": verification.head_seq,
                "first_broken_seq": verification.first_broken_seq,
            },
            "checkpoint": None if checkpoint is None else {"id": checkpoint.pk, "seq": checkpoint.seq, "key_id": checkpoint.key_id},
        }

    def to_representation(self, instance):
        return {**super().to_representation(instance), "covered_by": self.get_covered_by(instance)}


@extend_schema(summary="One audit entry", responses={200: AuditEntryCoveredSerializer, **error_responses(404)})
class AuditEntryDetail(generics.RetrieveAPIView):
    queryset = AuditEntry.objects.none()
    serializer_class = AuditEntryCoveredSerializer

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
            **error_responses(400),
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


# -- verification on request ----------------------------------------------------------------------------


class MayVerifyChain(permissions.BasePermission):
    """ "Verify now", as in the admin: ``audit_app.verify_chain``."""

    message = "You may not verify the audit chain (audit_app.verify_chain)."

    def has_permission(self, request, view):
        return request.user.has_perm("audit_app.verify_chain")


class VerificationRequestSerializer(serializers.Serializer):
    """A requested verification and how far it has got (the admin's progress view says the same)."""

    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=VerificationRequest.Status.choices)
    requested_by = serializers.CharField()
    requested_at = serializers.DateTimeField(allow_null=True)
    request_entry_id = serializers.IntegerField(allow_null=True, help_text="The audit.verify_requested entry.")
    entries_checked = serializers.IntegerField()
    total = serializers.IntegerField(allow_null=True)
    percent = serializers.IntegerField()
    finished = serializers.BooleanField()
    ok = serializers.BooleanField(allow_null=True)
    verification_id = serializers.IntegerField(allow_null=True)
    head_seq = serializers.IntegerField(allow_null=True)
    first_broken_seq = serializers.IntegerField(allow_null=True)
    problem = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_blank=True)
    message = serializers.CharField()

    def to_representation(self, instance: VerificationRequest) -> dict:
        return verify_request_status(instance)


class AuditVerify(APIView):
    permission_classes = [permissions.IsAuthenticated, MayVerifyChain]

    @extend_schema(
        summary="Verify the audit chain now, on a worker",
        description="Records who asked (`audit.verify_requested`) and queues the verification; the result is an `audit.verified` "
        "entry. While one is queued or running, asking again returns it (200) instead of queueing another (202).",
        request=None,
        responses={202: VerificationRequestSerializer, 200: VerificationRequestSerializer, **error_responses(403, 409)},
    )
    def post(self, request):
        try:
            found, created = verify_request(user=request.user, actor=user_actor(request.user, via="api"))
        except TrailClosed as closed:
            raise ApiError("action_refused", str(closed)) from None
        return Response(VerificationRequestSerializer(found).data, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK)


class AuditVerifyStatus(APIView):
    permission_classes = [permissions.IsAuthenticated, MayVerifyChain]

    @extend_schema(
        summary="A requested verification's progress and result", responses={200: VerificationRequestSerializer, **error_responses(403, 404)}
    )
    def get(self, request, pk: int):
        found = VerificationRequest.objects.select_related("verification").filter(pk=pk).first()
        if found is None:
            raise NotFound("no such verification request")
        return Response(VerificationRequestSerializer(found).data)
