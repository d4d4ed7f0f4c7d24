from django.contrib import admin
from django.http import HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

# The admin app is installed as SimpleAdminConfig (settings.INSTALLED_APPS): the ModelAdmins are
# registered here, when a process first resolves a URL, rather than by every process at start-up.
admin.autodiscover()


def favicon(request):
    """/favicon.ico, which browsers ask for unprompted: the product's icon (a temporary redirect,
    since the static file's hashed name changes with its content in production)."""
    return HttpResponseRedirect(static("changes_app/favicon.svg"))


urlpatterns = [
    path("admin/", admin.site.urls),
    path("favicon.ico", favicon),
    # Single sign-on (docs/sso.md): answers 404 unless FLAMINGOCK_OIDC_CLIENT_ID is set.
    path("oidc/", include("mozilla_django_oidc.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("changes_app.api.urls")),
    # /health/live/, /health/ready/, /health/detail/ and /metrics (docs/operators.md).
    path("", include("changes_app.observability.urls")),
]

# Error pages in the admin's layout with a way back; the 500 page needs no database or session.
handler403 = "changes_app.admin.site.permission_denied"
handler404 = "changes_app.admin.site.page_not_found"
handler500 = "changes_app.admin.site.server_error"
