"""The product's own admin site: titled Flamingock, its index the dashboard, its error pages in its
own layout with a way back (docs/admin.md, "Accessibility and layout")."""

import logging

from django.contrib import admin
from django.http import HttpResponseServerError
from django.shortcuts import render
from django.template import loader
from django.templatetags.static import static
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import requires_csrf_token

from changes_app.admin.views import dashboard_context

logger = logging.getLogger("flamingock.admin")


class FlamingockAdminSite(admin.AdminSite):
    site_header = _("Flamingock")
    site_title = _("Flamingock")
    index_title = _("Dashboard")

    def each_context(self, request):
        # "View site" leads to the dashboard: the product has no public site of its own, and a host
        # project that mounts it elsewhere gets its own mount point here.
        return {**super().each_context(request), "site_url": reverse(f"{self.name}:index", current_app=self.name)}

    def index(self, request, extra_context=None):
        """The admin index is the dashboard: what needs attention, for the user who looks."""
        return super().index(request, {**dashboard_context(request), **(extra_context or {})})


#: The one instance: Django's default site (``admin.site``) is this object, whichever module
#: first asks for it.
site = FlamingockAdminSite()


def default_site() -> FlamingockAdminSite:
    """The callable ``FlamingockAdminConfig.default_site`` names."""
    return site


# -- error pages (the site's handler403, handler404 and handler500) ----------------------------------


def _error_context(request) -> dict:
    """The admin's frame for an error page; a bare one when even that cannot be built (the error
    page must never fail in its turn)."""
    try:
        return site.each_context(request)
    except Exception:  # noqa: BLE001 - an error page answers whatever broke
        logger.exception("the admin's context of an error page could not be built")
        return {"site_header": site.site_header, "site_title": site.site_title}


@requires_csrf_token
def permission_denied(request, exception=None):
    """403 in the admin's layout: what the user may not do, and the way back."""
    context = {**_error_context(request), "title": _("You may not open this page"), "request_path": request.path}
    return render(request, "403.html", context, status=403)


@requires_csrf_token
def page_not_found(request, exception=None):
    """404 in the admin's layout, with the way back. The missing path is shown escaped."""
    context = {**_error_context(request), "title": _("Page not found"), "request_path": request.path}
    return render(request, "404.html", context, status=404)


def _or_none(build):
    try:
        return build()
    except Exception:  # noqa: BLE001 - a broken URLconf or a missing static manifest must not hide the 500
        return None


@requires_csrf_token
def server_error(request):
    """500: the admin's look without the database, the session or any context processor, since
    any of them may be what failed."""
    context = {
        "site_header": str(site.site_header),
        "home": _or_none(lambda: reverse(f"{site.name}:index")) or "/",
        "stylesheets": [url for url in (_or_none(lambda: static("admin/css/base.css")), _or_none(lambda: static("changes_app/admin.css"))) if url],
        "favicon": _or_none(lambda: static("changes_app/favicon.svg")),
    }
    try:
        body = loader.get_template("500.html").render(context)
    except Exception:  # noqa: BLE001
        logger.exception("the 500 page could not be rendered")
        body = "<!DOCTYPE html><html lang='en'><title>Server error</title><h1>Server error</h1><p><a href='/'>Back</a></p></html>"
    return HttpResponseServerError(body)
