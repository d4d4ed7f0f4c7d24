from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

# The admin app is installed as SimpleAdminConfig (settings.INSTALLED_APPS): the ModelAdmins are
# registered here, when a process first resolves a URL, rather than by every process at start-up.
admin.autodiscover()

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("changes_app.api.urls")),
]
