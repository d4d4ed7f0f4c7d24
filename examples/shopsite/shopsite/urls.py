from django.http import HttpResponse
from django.urls import include, path


def home(request):
    return HttpResponse("shopsite")


urlpatterns = [
    path("", home, name="home"),
    # Flamingock's admin, API and health endpoints, mounted where this project chooses (docs/install.md).
    path("ops/", include("changes_app.urls")),
]

# The product's error pages (optional).
handler403 = "changes_app.admin.site.permission_denied"
handler404 = "changes_app.admin.site.page_not_found"
handler500 = "changes_app.admin.site.server_error"
