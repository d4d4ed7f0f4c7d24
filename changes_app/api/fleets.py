"""Fleet runs over the API (docs/fleet.md): start one on a target group, read it, retry its failed
members, cancel, resume. The JSON is ``services.representations.fleet_run_data``, the command line's
``fleet ... --json``. Starting, retrying, cancelling and resuming need the operate permission on the
group (checked by the service against the target); reading needs to see the group's changes."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from changes_app.api.schema import error_responses
from changes_app.errors import NotFound
from changes_app.fleets.overview import (
    MEMBER_FILTERS,
    MEMBERS_PER_PAGE,
    MemberFilterUnknown,
    fleet_members,
    fleet_overview,
    fleet_overview_data,
    member_filter_check,
)
from changes_app.fleets.services import fleet_cancel, fleet_get, fleet_plan, fleet_resume, fleet_retry, fleet_run_start
from changes_app.governance.identity import user_actor
from changes_app.governance.visibility import actor_change_targets_seen
from changes_app.models import FleetRun, Run
from changes_app.services.representations import FLEET_MEMBERS_PAGE, fleet_run_data


class FleetRunCreateSerializer(serializers.Serializer):
    target = serializers.CharField(max_length=200)
    canary = serializers.IntegerField(min_value=0, default=1)
    wave_size = serializers.IntegerField(min_value=1, default=10)
    concurrency = serializers.IntegerField(min_value=1, default=4)
    max_failures = serializers.IntegerField(min_value=1, default=1)


class FleetRunList(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        summary="Start a fleet run on a target group",
        request=FleetRunCreateSerializer,
        responses={202: OpenApiTypes.OBJECT, **error_responses(400, 403, 409)},
    )
    def post(self, request):
        body = FleetRunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fleet = fleet_run_start(actor=user_actor(request.user, via="api"), source=Run.Source.API, **body.validated_data)
        return Response(fleet_run_data(fleet), status=status.HTTP_202_ACCEPTED)


class FleetRunDetail(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        summary="A fleet run: its policy, wave, result, members by status and a page of members (``?status=failed`` and so on: only those)",
        parameters=[
            OpenApiParameter("status", str, enum=list(MEMBER_FILTERS), description="only the members that pass this filter"),
            OpenApiParameter("offset", int, description="the first member of the page, from 0"),
            OpenApiParameter("limit", int, description=f"members per page, 1 to 500 ({FLEET_MEMBERS_PAGE} by default)"),
        ],
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 404)},
    )
    def get(self, request, pk):
        fleet = fleet_get(fleet_run_id=pk, actor=user_actor(request.user, via="api"))
        offset, limit = request.query_params.get("offset", "0"), request.query_params.get("limit", str(FLEET_MEMBERS_PAGE))
        if not offset.isdigit() or not limit.isdigit() or not 1 <= int(limit) <= 500:
            raise serializers.ValidationError({"limit": "offset is 0 or more; limit is 1 to 500"})
        # The counts stay the whole run's; the page of members is of those the filter keeps.
        members = fleet_members(fleet, _member_filter(request)) if request.query_params.get("status") else None
        return Response(fleet_run_data(fleet, members, offset=int(offset), limit=int(limit)))


class FleetRunMatrix(APIView):
    """What the admin's fleet view shows: progress by wave, members per change by latest state, and a
    page of members (filtered) with their states and, for the failed and blocked, their issues."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        summary="A fleet run's view: progress by wave, members per change by state, a page of members with their issues",
        parameters=[
            OpenApiParameter("status", str, enum=list(MEMBER_FILTERS), description="only the members that pass this filter"),
            OpenApiParameter("page", int, description="the page of members, from 1"),
            OpenApiParameter("limit", int, description="members per page, 1 to 500 (100 by default)"),
        ],
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 404)},
    )
    def get(self, request, pk):
        fleet = fleet_get(fleet_run_id=pk, actor=user_actor(request.user, via="api"))
        page, limit = request.query_params.get("page", "1"), request.query_params.get("limit", str(MEMBERS_PER_PAGE))
        if not page.isdigit() or not limit.isdigit() or not 1 <= int(limit) <= 500:
            raise serializers.ValidationError({"limit": "page is 1 or more; limit is 1 to 500"})
        shown = fleet_overview(fleet, member_filter=_member_filter(request), page=int(page), limit=int(limit))
        return Response(fleet_overview_data(fleet, shown))


def _member_filter(request) -> str:
    try:
        return member_filter_check(request.query_params.get("status", ""))
    except MemberFilterUnknown as error:
        raise serializers.ValidationError({"status": str(error)}) from None


class FleetPlanView(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        summary="A target group's fleet plan: members per change and next action, and a page of members",
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 404, 409)},
    )
    def get(self, request, target: str):
        seen = actor_change_targets_seen(user_actor(request.user, via="api"))
        if seen is not None and target not in seen:
            raise NotFound(f"no target group {target}")
        offset, limit = request.query_params.get("offset", "0"), request.query_params.get("limit", "50")
        if not offset.isdigit() or not limit.isdigit() or not 1 <= int(limit) <= 500:
            raise serializers.ValidationError({"limit": "offset is 0 or more; limit is 1 to 500"})
        return Response(fleet_plan(target=target, offset=int(offset), limit=int(limit)))


class _FleetAction(APIView):
    permission_classes = [permissions.IsAuthenticated]
    service = staticmethod(fleet_get)

    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT, **error_responses(403, 404, 409)})
    def post(self, request, pk):
        actor = user_actor(request.user, via="api")
        fleet: FleetRun = fleet_get(fleet_run_id=pk, actor=actor)  # not visible: 404 before anything else
        return Response(fleet_run_data(type(self).service(fleet_run_id=fleet.pk, actor=actor)))


class FleetRunRetry(_FleetAction):
    service = staticmethod(fleet_retry)


class FleetRunCancel(_FleetAction):
    service = staticmethod(fleet_cancel)


class FleetRunResume(_FleetAction):
    service = staticmethod(fleet_resume)
