"""The API's views: parse, check visibility, call one service, translate its result.

An object the user may not see is a 404 exactly like a missing one; the services check every
action against the object and refuse with a named error, which ``errors`` turns into a stable code.
"""

from __future__ import annotations

import hashlib
import json

from django.db import IntegrityError, transaction
from django.http import Http404
from django.views.decorators.csrf import csrf_exempt
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from changes_app import services
from changes_app.api import permissions as access
from changes_app.api import serializers as s
from changes_app.api.errors import ApiError, error_body, exception_handler
from changes_app.api.filters import UtcIsoDateTimeFilter
from changes_app.api.schema import error_responses
from changes_app.drift import checks as drift
from changes_app.governance import visibility
from changes_app.governance.identity import user_actor
from changes_app.models import ChangeRequest, Finding, IdempotencyKey, Run, TargetSystem
from changes_app.pipeline.guidance import issue_details
from changes_app.pipeline.plan import Action, Plan, PlanItem

SOURCE = Run.Source.API


IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Repeat a POST safely: the same key with the same body returns the first response (kept per user).",
)


def actor_of(request):
    return user_actor(request.user, via="api")


# -- idempotency -----------------------------------------------------------------------------------


def idempotent(request, perform) -> Response:
    """Run ``perform`` once per ``Idempotency-Key``: a retry with the same body gets the first
    response (errors included); the same key with another body or path is refused."""
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        return perform()
    if len(key) > 255:
        raise ApiError("invalid", "Invalid input.", {"Idempotency-Key": ["At most 255 characters."]})
    body_hash = hashlib.sha256(json.dumps(request.data, sort_keys=True, default=str).encode()).hexdigest()
    try:
        with transaction.atomic():
            record = IdempotencyKey.objects.create(user=request.user, key=key, method=request.method, path=request.path, body_hash=body_hash)
    except IntegrityError:
        first = IdempotencyKey.objects.get(user=request.user, key=key)
        if (first.method, first.path, first.body_hash) != (request.method, request.path, body_hash):
            raise ApiError("idempotency_key_reused", "This Idempotency-Key was used with another request.") from None
        if first.status_code is None:
            raise ApiError("idempotency_in_progress", "The first request with this Idempotency-Key is still being handled.") from None
        return Response(first.response, status=first.status_code, headers={"Idempotent-Replayed": "true"})
    try:
        response = perform()
    except Exception as error:
        response = exception_handler(error, {"request": request})
        if response is None:
            record.delete()
            raise
    IdempotencyKey.objects.filter(pk=record.pk).update(status_code=response.status_code, response=json.loads(json.dumps(response.data, default=str)))
    return response


# -- target systems --------------------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(
        summary="List the target systems you may see", responses={200: s.TargetSystemSerializer(many=True), **error_responses(400, 404)}
    ),
)
class TargetSystemList(generics.ListAPIView):
    queryset = TargetSystem.objects.none()
    serializer_class = s.TargetSystemSerializer
    filterset_fields = ("kind", "owner_team")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return self.queryset
        return visibility.targets_visible(self.request.user).order_by("name")


@extend_schema_view(get=extend_schema(summary="A target system", responses={200: s.TargetSystemSerializer, **error_responses(404)}))
class TargetSystemDetail(generics.RetrieveAPIView):
    queryset = TargetSystem.objects.none()
    serializer_class = s.TargetSystemSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return self.queryset
        return visibility.targets_visible(self.request.user)


# -- changes, plan, issues -------------------------------------------------------------------------


def _visible_plan(request) -> tuple[Plan, set[str]]:
    return services.pipeline_plan(), visibility.target_names_visible(request.user)


def _visible_item(request, change_id: str) -> PlanItem:
    plan, visible = _visible_plan(request)
    item = plan.item(change_id)
    if item is None or item.change.target not in visible:
        raise Http404
    return item


CHANGE_FILTERS = [
    OpenApiParameter("stage", str, description="Only this stage."),
    OpenApiParameter("target", str, description="Only this target system."),
    OpenApiParameter("state", str, enum=[*s.ChangeStateName.values, "NONE"], description="Only this latest state (NONE: never run)."),
    OpenApiParameter("next_action", str, enum=[a.value for a in Action], description="Only this next action."),
]


class ChangeList(APIView):
    @extend_schema(
        summary="Changes with their latest state and next action",
        parameters=CHANGE_FILTERS,
        responses={200: s.ChangeSerializer(many=True), **error_responses(409)},
    )
    def get(self, request):
        plan, visible = _visible_plan(request)
        query = request.query_params
        items = [item for item in plan.items if item.change.target in visible]
        for name, value_of in (
            ("stage", lambda i: i.change.stage),
            ("target", lambda i: i.change.target),
            ("state", lambda i: i.latest_state or "NONE"),
            ("next_action", lambda i: i.action.value),
        ):
            if query.get(name):
                items = [item for item in items if value_of(item) == query[name]]
        return Response(s.ChangeSerializer(items, many=True).data)


class ChangeDetail(APIView):
    @extend_schema(summary="One change", responses={200: s.ChangeSerializer, **error_responses(404, 409)})
    def get(self, request, change_id: str):
        return Response(s.ChangeSerializer(_visible_item(request, change_id)).data)


class PlanView(APIView):
    @extend_schema(
        summary="What the next run would do (never touches a target)",
        description="With `?sql=1`, `rendered` lists each pending Django migration's SQL (as sqlmigrate prints it for its database) "
        "and RunPython code: that reads the migration's database.",
        parameters=[OpenApiParameter("sql", str, OpenApiParameter.QUERY, required=False, description="1: also render pending Django migrations")],
        responses={200: s.PlanSerializer, **error_responses(409)},
    )
    def get(self, request):
        plan, visible = _visible_plan(request)
        data = s.PlanSerializer(plan, context={"targets": visible}).data
        if request.query_params.get("sql") in ("1", "true"):
            # Only on request (``?sql=1``): rendering reads each Django migration's database.
            data = {**data, "rendered": [m for m in services.plan_render() if m["target"] in visible]}
        return Response(data)


class ValidateView(APIView):
    @extend_schema(
        summary="The deploy gate: what is drifted, blocked, awaiting approval or pending, with the exit code",
        description=(
            "The body `flamingock validate --json` prints, limited to the target systems you see. `exit_code` is the command's "
            "exit code by precedence: 6 drift (checksum drift, a change missing from code, an open drift finding), 3 blocked, "
            "4 awaiting approval, 7 pending, else 0; `exit_name` names it. The drift findings are those of the last check: "
            "unlike the command, a GET does not run the checks."
        ),
        responses={200: s.ValidationSerializer, **error_responses(409)},
    )
    def get(self, request):
        visible = visibility.target_names_visible(request.user)

        def findings():
            return drift.findings_open().filter(pk__in=visibility.findings_visible(request.user).values("pk"))

        return Response(s.ValidationSerializer(services.pipeline_validate(findings=findings, targets=visible)).data)


class IssueList(APIView):
    @extend_schema(summary="Changes that need a human, with guidance", responses={200: s.IssueSerializer(many=True), **error_responses(409)})
    def get(self, request):
        plan, visible = _visible_plan(request)
        return Response(s.IssueSerializer([issue_details(i) for i in plan.issues if i.change.target in visible], many=True).data)


class IssueDetail(APIView):
    @extend_schema(summary="One issue with its error and step-by-step guidance", responses={200: s.IssueSerializer, **error_responses(404, 409)})
    def get(self, request, change_id: str):
        item = _visible_item(request, change_id)
        if not item.needs_human:
            raise Http404
        return Response(s.IssueSerializer(issue_details(item)).data)


# -- runs ------------------------------------------------------------------------------------------


class RunFilter(filters.FilterSet):
    created_at__gte = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_at__lt = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Run
        fields = {"status": ["exact"], "kind": ["exact"], "source": ["exact"], "change_id": ["exact"], "created_at": ["gte", "lt"]}


@extend_schema_view(
    get=extend_schema(summary="Runs you may see, newest first", responses={200: s.RunSerializer(many=True), **error_responses(400, 404)}),
    post=extend_schema(
        summary="Queue a run of the pipeline",
        request=s.RunCreateSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={202: s.RunSerializer, **error_responses(400, 403, 409, 422)},
        examples=[OpenApiExample("Deploy", value={"reason": "release 2024.06.1"}, request_only=True)],
    ),
)
class RunList(generics.ListAPIView):
    queryset = Run.objects.none()
    serializer_class = s.RunSerializer
    filterset_class = RunFilter
    permission_classes = [*generics.ListAPIView.permission_classes, access.MayStartRuns]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return self.queryset
        return visibility.runs_visible(self.request.user).order_by("-created_at", "-id")

    def post(self, request):
        body = s.RunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)

        def perform():
            run = services.run_queue(actor=actor_of(request), source=SOURCE, reason=body.validated_data["reason"])
            return Response(s.RunSerializer(run, context={"request": request}).data, status=status.HTTP_202_ACCEPTED)

        return idempotent(request, perform)


class RunDetail(generics.RetrieveAPIView):
    queryset = Run.objects.none()
    serializer_class = s.RunSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return self.queryset
        return visibility.runs_visible(self.request.user)

    @extend_schema(summary="A run with its live progress and per-change results", responses={200: s.RunSerializer, **error_responses(404)})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class RunCancel(APIView):
    @extend_schema(
        summary="Cancel a run (it stops before its next change)", request=None, responses={200: s.RunSerializer, **error_responses(403, 404, 409)}
    )
    def post(self, request, pk):
        run = visibility.runs_visible(request.user).filter(pk=pk).first()
        if run is None:
            raise Http404
        return Response(s.RunSerializer(services.run_cancel(run_id=run.pk, actor=actor_of(request)), context={"request": request}).data)


# -- requests --------------------------------------------------------------------------------------


class RequestFilter(filters.FilterSet):
    mine = filters.BooleanFilter(method="filter_mine", label="Only my requests")
    awaiting_me = filters.BooleanFilter(method="filter_awaiting", label="Only pending requests I may decide")

    class Meta:
        model = ChangeRequest
        fields = {"status": ["exact"], "kind": ["exact"], "change_id": ["exact"], "environment": ["exact"]}

    def filter_mine(self, queryset, name, value):
        return queryset.filter(requester=self.request.user) if value else queryset

    def filter_awaiting(self, queryset, name, value):
        if not value:
            return queryset
        return queryset.filter(pk__in=services.requests_awaiting(actor=actor_of(self.request)).values("pk"))


def _requests_visible(request):
    return services.requests_visible(actor=actor_of(request)).prefetch_related("approvals")


def _visible_request(request, pk) -> ChangeRequest:
    found = _requests_visible(request).filter(pk=pk).first()
    if found is None:
        raise Http404
    return found


@extend_schema_view(
    get=extend_schema(summary="Requests you may see, newest first", responses={200: s.RequestSerializer(many=True), **error_responses(400, 404)}),
    post=extend_schema(
        summary="Request (or, where nothing governs the target, perform) an undo, fix, skip, re-apply or re-baseline",
        request=s.RequestCreateSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: s.SubmissionSerializer, **error_responses(400, 403, 409, 422)},
        examples=[
            OpenApiExample("Undo", value={"kind": "UNDO", "change_id": "0003_add_index", "reason": "the index slows writes"}, request_only=True),
            OpenApiExample("Manual fix", value={"kind": "MARK_APPLIED", "change_id": "0004_flags", "reason": "verified by hand"}, request_only=True),
            OpenApiExample(
                "Break-glass undo",
                value={"kind": "UNDO", "change_id": "0003_add_index", "break_glass": {"reason": "writes time out", "incident": "INC-4711"}},
                request_only=True,
            ),
        ],
    ),
)
class RequestList(generics.ListAPIView):
    queryset = ChangeRequest.objects.none()
    serializer_class = s.RequestSerializer
    filterset_class = RequestFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return self.queryset
        return _requests_visible(self.request)

    def post(self, request):
        body = s.RequestCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        emergency = data.get("break_glass")
        if not data["reason"].strip() and emergency is None:
            raise serializers.ValidationError({"reason": ["This field may not be blank."]})
        plan, visible = _visible_plan(request)
        item = plan.item(data["change_id"])
        if item is None or item.change.target not in visible:
            # Missing and invisible read the same.
            raise serializers.ValidationError({"change_id": ["Unknown change."]})

        def perform():
            done = services.request_submit(
                kind=data["kind"],
                change_id=data["change_id"],
                actor=actor_of(request),
                reason=data["reason"],
                source=SOURCE,
                inline=False,
                break_glass=services.break_glass_of(**emergency) if emergency is not None else None,
            )
            return Response(s.SubmissionSerializer(done, context={"request": request}).data, status=status.HTTP_201_CREATED)

        return idempotent(request, perform)


class RequestDetail(APIView):
    @extend_schema(
        summary="A request as an approver decides it: its decisions, what will run, the undo cascade, the diff, the gate and its approvers",
        responses={200: s.RequestDetailSerializer, **error_responses(404)},
    )
    def get(self, request, pk: int):
        review = services.request_review(request=_visible_request(request, pk), actor=actor_of(request))
        return Response(s.RequestDetailSerializer(review).data)


class _Decide(APIView):
    decide = None
    summary = ""

    def post(self, request, pk: int):
        target = _visible_request(request, pk)
        body = s.DecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)

        def perform():
            decided = type(self).decide(request_id=target.pk, actor=actor_of(request), comment=body.validated_data["comment"])
            decided = _requests_visible(request).get(pk=decided.pk)
            return Response(s.RequestSerializer(decided).data)

        return idempotent(request, perform)


def _approve(*, request_id, actor, comment):
    return services.request_approve(request_id=request_id, actor=actor, comment=comment, inline=False)


_DECISION_SCHEMA = {"request": s.DecisionSerializer, "responses": {200: s.RequestSerializer, **error_responses(400, 403, 404, 409, 422)}}


@extend_schema_view(
    post=extend_schema(summary="Approve a request (the last approval needed executes it)", parameters=[IDEMPOTENCY_HEADER], **_DECISION_SCHEMA)
)
class RequestApprove(_Decide):
    decide = staticmethod(_approve)


@extend_schema_view(post=extend_schema(summary="Reject a request", parameters=[IDEMPOTENCY_HEADER], **_DECISION_SCHEMA))
class RequestReject(_Decide):
    decide = staticmethod(services.request_reject)


@extend_schema_view(post=extend_schema(summary="Cancel your own request", parameters=[IDEMPOTENCY_HEADER], **_DECISION_SCHEMA))
class RequestCancel(_Decide):
    decide = staticmethod(services.request_cancel)


# -- drift findings --------------------------------------------------------------------------------


class FindingFilter(filters.FilterSet):
    class Meta:
        model = Finding
        fields = {"status": ["exact"], "kind": ["exact"]}


@extend_schema_view(
    get=extend_schema(
        summary="Drift findings you may see, most recently seen first", responses={200: s.FindingSerializer(many=True), **error_responses(400, 404)}
    ),
)
class FindingList(generics.ListAPIView):
    queryset = Finding.objects.none()
    serializer_class = s.FindingSerializer
    filterset_class = FindingFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return self.queryset
        return visibility.findings_visible(self.request.user).order_by("-last_seen", "-id")


@extend_schema_view(
    get=extend_schema(summary="A drift finding with its latest evidence", responses={200: s.FindingSerializer, **error_responses(404)})
)
class FindingDetail(generics.RetrieveAPIView):
    queryset = Finding.objects.none()
    serializer_class = s.FindingSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return self.queryset
        return visibility.findings_visible(self.request.user)


def _visible_finding(request, pk) -> Finding:
    found = visibility.findings_visible(request.user).filter(pk=pk).first()
    if found is None:
        raise Http404
    return found


class _FindingAction(APIView):
    act = None

    def post(self, request, pk: int):
        finding = _visible_finding(request, pk)
        body = s.ReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)

        def perform():
            done = type(self).act(finding_id=finding.pk, actor=actor_of(request), reason=body.validated_data["reason"])
            return Response(s.FindingSerializer(done).data)

        return idempotent(request, perform)


_FINDING_ACTION_SCHEMA = {
    "request": s.ReasonSerializer,
    "parameters": [IDEMPOTENCY_HEADER],
    "responses": {200: s.FindingSerializer, **error_responses(400, 403, 404, 409, 422)},
}


@extend_schema_view(
    post=extend_schema(
        summary="Acknowledge a finding (it stays active but quiet; audited)",
        examples=[OpenApiExample("Known", value={"reason": "looking at the worker"}, request_only=True)],
        **_FINDING_ACTION_SCHEMA,
    )
)
class FindingAcknowledge(_FindingAction):
    act = staticmethod(drift.finding_acknowledge)


@extend_schema_view(
    post=extend_schema(
        summary="Resolve a finding (a check that sees it again reopens it; audited)",
        examples=[OpenApiExample("Fixed", value={"reason": "fixed by hand"}, request_only=True)],
        **_FINDING_ACTION_SCHEMA,
    )
)
class FindingResolve(_FindingAction):
    act = staticmethod(drift.finding_resolve)


# -- lock ------------------------------------------------------------------------------------------


class LockView(APIView):
    @extend_schema(summary="Who holds the pipeline lock", responses={200: s.LockSerializer, **error_responses()})
    def get(self, request):
        return Response(s.LockSerializer(services.lock_status()).data)


# -- workers ---------------------------------------------------------------------------------------


class WorkerList(APIView):
    @extend_schema(
        summary="The workers of this environment: host, pid, pipeline digest, last heartbeat, current or stale",
        responses={200: s.WorkersSerializer, **error_responses(403)},
    )
    def get(self, request):
        return Response(s.WorkersSerializer(services.workers_report(user=request.user)).data)


class LockRelease(APIView):
    permission_classes = [*APIView.permission_classes, access.MayReleaseLock]

    @extend_schema(
        summary="Force-release a stale lock (audited)",
        request=s.ReasonSerializer,
        responses={200: s.LockSerializer, **error_responses(400, 403, 409)},
        examples=[OpenApiExample("Stale", value={"reason": "worker host lost"}, request_only=True)],
    )
    def post(self, request):
        body = s.ReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return Response(s.LockSerializer(services.lock_force_release(actor=actor_of(request), reason=body.validated_data["reason"])).data)


# -- Django migrations: adoption -------------------------------------------------------------------


class DjangoAdoptionView(APIView):
    """A database alias's adoption (docs/django-migrations.md, "Adoption"); the same service as
    ``flamingock adopt django``."""

    @extend_schema(
        summary="Whether a database needs adopting, and what adoption recorded or would record",
        responses={200: s.AdoptionSerializer, **error_responses(403, 409)},
    )
    def get(self, request, alias: str):
        return Response(s.AdoptionSerializer(services.django_adoption_status(alias=alias, actor=actor_of(request))).data)

    @extend_schema(
        summary="Adopt a database: record its Django migrations as applied outside governance (audited)",
        request=s.ReasonSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        description=(
            "Where no approval policy governs the database's target, the adoption runs now: 200 and its run. "
            "Where one governs, an ADOPT request on django:<alias> is made for its approvers: 202 and the request "
            "(its `rendered.adoption.migrations` lists what the adoption records); an approval executes it."
        ),
        responses={200: s.RunSerializer, 202: s.SubmissionSerializer, **error_responses(400, 403, 409)},
        examples=[OpenApiExample("Adopt", value={"reason": "migrated by plain migrate before governance"}, request_only=True)],
    )
    def post(self, request, alias: str):
        body = s.ReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)

        def perform():
            done = services.django_adopt(alias=alias, actor=actor_of(request), reason=body.validated_data["reason"], source=SOURCE, inline=False)
            if done.run is None:
                return Response(s.SubmissionSerializer(done, context={"request": request}).data, status=status.HTTP_202_ACCEPTED)
            return Response(s.RunSerializer(done.run, context={"request": request}).data)

        return idempotent(request, perform)


__all__ = ["error_body"]


@csrf_exempt
def unknown_path(request, *args, **kwargs):
    """Any other path under /api/v1/: the API's 404, in the API's format (not Django's HTML page)."""
    from django.http import JsonResponse

    return JsonResponse(error_body("not_found", "Not found."), status=404)
