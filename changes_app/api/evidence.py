"""Evidence packs over the API (docs/compliance.md, "Evidence packs"): ask for one (made on a
worker), follow its progress, download its zip. Every endpoint needs
``changes_app.generate_evidence``; a refusal is recorded (``access.refused``)."""

from __future__ import annotations

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, status
from rest_framework.response import Response
from rest_framework.views import APIView

from changes_app.api import serializers as s
from changes_app.api.schema import error_responses
from changes_app.governance.identity import user_actor
from changes_app.governance.permissions import PermissionRefused
from changes_app.governance.refusals import PERMISSION, refusal_record
from changes_app.services.evidence import GENERATE, evidence_controls, evidence_file, evidence_get, evidence_may, evidence_request, evidence_visible


def _reader(request, pk: int | None = None):
    """The actor, refused (and the refusal recorded) without the permission."""
    actor = user_actor(request.user, via="api")
    if not evidence_may(actor):
        message = f"{actor.name} may not see evidence packs ({GENERATE})"
        refusal_record(reason=PERMISSION, action="evidence.view", object=f"evidence pack {pk}" if pk else "", actor=actor, message=message)
        raise PermissionRefused(message)
    return actor


class EvidencePackList(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(summary="The evidence packs, newest first", responses={200: s.EvidencePackSerializer(many=True), **error_responses(403)})
    def get(self, request):
        _reader(request)
        packs = evidence_visible(user=request.user)[:200]
        return Response(s.EvidencePackSerializer(packs, many=True).data)

    @extend_schema(
        summary="Ask for an evidence pack of a period and a scope; it is made on a worker",
        request=s.EvidencePackRequestSerializer,
        responses={202: s.EvidencePackSerializer, **error_responses(400, 403, 409)},
    )
    def post(self, request):
        body = s.EvidencePackRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        pack = evidence_request(
            actor=user_actor(request.user, via="api"), since=data["from"], until=data["to"], targets=data["targets"], members=data["members"]
        )
        return Response(s.EvidencePackSerializer(pack).data, status=status.HTTP_202_ACCEPTED)


class EvidencePackDetail(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        summary="An evidence pack's progress and results, and once done each control with its exceptions (the pack's controls.json)",
        responses={200: s.EvidencePackSerializer, **error_responses(403, 404)},
    )
    def get(self, request, pk: int):
        _reader(request, pk)
        pack = evidence_get(pack_id=pk)
        return Response({**s.EvidencePackSerializer(pack).data, "controls": evidence_controls(pack)})


class EvidencePackDownload(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        summary="Download a finished evidence pack (zip)",
        responses={(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY), **error_responses(403, 404, 409)},
    )
    def get(self, request, pk: int):
        pack, path = evidence_file(pack_id=pk, actor=user_actor(request.user, via="api"))
        return FileResponse(path.open("rb"), as_attachment=True, filename=path.name, content_type="application/zip")
