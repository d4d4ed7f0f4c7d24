from django.contrib import admin
from django.http import HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path

# The admin app is installed as SimpleAdminConfig (settings.INSTALLED_APPS): the ModelAdmins are
# registered here, when a process first resolves a URL, rather than by every process at start-up.
admin.autodiscover()


def favicon(request):
    """/favicon.ico, which browsers ask for unprompted: the product's icon (a temporary redirect,
    since the static file's hashed name changes with its content in production)."""
    return HttpResponseRedirect(static("changes_app/favicon.svg"))


urlpatterns = [
    path("favicon.ico", favicon),
    # The product's admin, API (with its schema and docs), single sign-on, health and metrics: the
    # one include a host project uses too (docs/install.md).
    path("", include("changes_app.urls")),
]

# Error pages in the admin's layout with a way back; the 500 page needs no database or session.
handler403 = "changes_app.admin.site.permission_denied"
handler404 = "changes_app.admin.site.page_not_found"
handler500 = "changes_app.admin.site.server_error"
