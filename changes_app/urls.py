"""The product's URLs for a host project, mounted where the host chooses (docs/install.md):

    path("flamingock/", include("changes_app.urls"))

gives ``flamingock/admin/`` (the product's admin site, which is Django's default site where the host
installs ``changes_app.apps.FlamingockAdminConfig``), ``flamingock/api/v1/`` (the API, its schema and
its docs), ``flamingock/health/...`` and ``flamingock/metrics``. The names are the reference site's
(``admin:...``, ``api:...``, ``api-schema``, ``health-live``...), so ``reverse`` finds them wherever
they are mounted. The host's error pages may be the product's: ``handler403``, ``handler404`` and
``handler500`` below, which the host's root URLconf imports.
"""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    # Single sign-on (docs/sso.md): answers 404 unless FLAMINGOCK_OIDC_CLIENT_ID is set.
    path("oidc/", include("mozilla_django_oidc.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("changes_app.api.urls")),
    # /health/live/, /health/ready/, /health/detail/ and /metrics (docs/operators.md).
    path("", include("changes_app.observability.urls")),
]

#: Error pages in the admin's layout with a way back, for the host's root URLconf to name (by these paths).
handler403 = "changes_app.admin.site.permission_denied"
handler404 = "changes_app.admin.site.page_not_found"
handler500 = "changes_app.admin.site.server_error"
