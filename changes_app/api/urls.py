from django.urls import path, re_path

from changes_app.api import audit as audit_api
from changes_app.api import evidence as evidence_api
from changes_app.api import fleets as fleets_api
from changes_app.api import views

app_name = "api"

urlpatterns = [
    path("targets/", views.TargetSystemList.as_view(), name="target-list"),
    path("targets/<str:name>/", views.TargetSystemDetail.as_view(), name="target-detail"),
    path("changes/", views.ChangeList.as_view(), name="change-list"),
    path("changes/<str:change_id>/", views.ChangeDetail.as_view(), name="change-detail"),
    path("plan/", views.PlanView.as_view(), name="plan"),
    path("validate/", views.ValidateView.as_view(), name="validate"),
    path("issues/", views.IssueList.as_view(), name="issue-list"),
    path("issues/<str:change_id>/", views.IssueDetail.as_view(), name="issue-detail"),
    path("runs/", views.RunList.as_view(), name="run-list"),
    path("runs/<uuid:pk>/", views.RunDetail.as_view(), name="run-detail"),
    path("runs/<uuid:pk>/cancel/", views.RunCancel.as_view(), name="run-cancel"),
    path("requests/", views.RequestList.as_view(), name="request-list"),
    path("requests/<int:pk>/", views.RequestDetail.as_view(), name="request-detail"),
    path("requests/<int:pk>/approve/", views.RequestApprove.as_view(), name="request-approve"),
    path("requests/<int:pk>/reject/", views.RequestReject.as_view(), name="request-reject"),
    path("requests/<int:pk>/cancel/", views.RequestCancel.as_view(), name="request-cancel"),
    path("audit/entries/", audit_api.AuditEntryList.as_view(), name="audit-entry-list"),
    path("audit/entries/<int:pk>/", audit_api.AuditEntryDetail.as_view(), name="audit-entry-detail"),
    path("audit/export/", audit_api.AuditExport.as_view(), name="audit-export"),
    path("audit/verify/", audit_api.AuditVerify.as_view(), name="audit-verify"),
    path("audit/verify/<int:pk>/", audit_api.AuditVerifyStatus.as_view(), name="audit-verify-status"),
    path("evidence/", evidence_api.EvidencePackList.as_view(), name="evidence-list"),
    path("evidence/<int:pk>/", evidence_api.EvidencePackDetail.as_view(), name="evidence-detail"),
    path("evidence/<int:pk>/download/", evidence_api.EvidencePackDownload.as_view(), name="evidence-download"),
    path("findings/", views.FindingList.as_view(), name="finding-list"),
    path("findings/<int:pk>/", views.FindingDetail.as_view(), name="finding-detail"),
    path("findings/<int:pk>/acknowledge/", views.FindingAcknowledge.as_view(), name="finding-acknowledge"),
    path("findings/<int:pk>/resolve/", views.FindingResolve.as_view(), name="finding-resolve"),
    path("workers/", views.WorkerList.as_view(), name="worker-list"),
    path("fleets/", fleets_api.FleetRunList.as_view(), name="fleet-run-list"),
    path("fleets/<uuid:pk>/", fleets_api.FleetRunDetail.as_view(), name="fleet-run-detail"),
    path("fleets/plan/<str:target>/", fleets_api.FleetPlanView.as_view(), name="fleet-plan"),
    path("fleets/<uuid:pk>/matrix/", fleets_api.FleetRunMatrix.as_view(), name="fleet-run-matrix"),
    path("fleets/<uuid:pk>/retry/", fleets_api.FleetRunRetry.as_view(), name="fleet-run-retry"),
    path("fleets/<uuid:pk>/cancel/", fleets_api.FleetRunCancel.as_view(), name="fleet-run-cancel"),
    path("fleets/<uuid:pk>/resume/", fleets_api.FleetRunResume.as_view(), name="fleet-run-resume"),
    path("lock/", views.LockView.as_view(), name="lock"),
    path("lock/release/", views.LockRelease.as_view(), name="lock-release"),
    path("django/adoptions/<str:alias>/", views.DjangoAdoptionView.as_view(), name="django-adoption"),
    re_path(r"^.*$", views.unknown_path),
]
