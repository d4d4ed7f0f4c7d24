"""URLs of the API latency benchmark's server: every URL of the product, plus the peer endpoint at
``/bench/audit/entries/``. The peer is the product's audit list (same authentication, visibility,
filters and serializer) with DRF's default page-number pagination instead of the cursor on seq, so
the two differ only by how they page: ``COUNT(*)`` of the visible trail and ``OFFSET`` for the peer,
an index range scan from a seq for the product. It is not in the product's URLs."""

from django.urls import include, path
from rest_framework.pagination import PageNumberPagination

from changes_app.api.audit import AuditEntryList

PEER_PATH = "bench/audit/entries/"


class PageNumberAuditList(AuditEntryList):
    pagination_class = PageNumberPagination

    def get_queryset(self):
        # The same order as the product's pages (newest first).
        return super().get_queryset().order_by("-seq")


urlpatterns = [
    path("", include("flamingock_site.urls")),
    path(PEER_PATH, PageNumberAuditList.as_view()),
]
