"""The product's own admin site: titled Flamingock, its index the dashboard, its error pages in its
own layout with a way back (docs/admin.md, "Accessibility and layout")."""

import logging
import threading
import time
from urllib.parse import quote

from django.contrib import admin
from django.http import HttpResponseServerError
from django.shortcuts import render
from django.template import loader
from django.templatetags.static import static
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils.functional import SimpleLazyObject
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import requires_csrf_token

from changes_app.admin.views import dashboard_context
from changes_app.governance.permission_version import permissions_version

logger = logging.getLogger("flamingock.admin")


class FlamingockAdminSite(admin.AdminSite):
    site_header = _("Flamingock")
    site_title = _("Flamingock")
    index_title = _("Dashboard")

    def each_context(self, request):
        # "View site" leads to the dashboard: the product has no public site of its own, and a host
        # project that mounts it elsewhere gets its own mount point here.
        context = {**super().each_context(request), "site_url": reverse(f"{self.name}:index", current_app=self.name)}
        # The sidebar drawn once per app list and current page (nav_sidebar_html), for the pages
        # whose template uses it; computed only if one does.
        apps = context["available_apps"]
        context["nav_sidebar_html"] = SimpleLazyObject(lambda: self.nav_sidebar_html(request, apps))
        return context

    def get_app_list(self, request, app_label=None):
        """Django's app list, computed once per user and permission state (every registered model's
        permissions and URLs: 3.6 ms of each admin page, docs/performance.md) and kept by this
        process for :data:`APP_LIST_TTL` seconds at most; a copy, so a caller may change it."""
        key = None if app_label is not None else _app_list_key(self, request)
        if key is None:
            return super().get_app_list(request, app_label)
        app_list = _memo(key, lambda: super(FlamingockAdminSite, self).get_app_list(request))
        return [{**app, "models": [{**model, "perms": dict(model["perms"])} for model in app["models"]]} for app in app_list]

    def nav_sidebar_html(self, request, available_apps) -> SafeString:
        """``admin/nav_sidebar.html`` as Django's base template includes it, drawn once per app list
        (user and permission state) and per current app and model of the page: the template reads
        only ``available_apps``, the request's path and the language."""
        key = _app_list_key(self, request)
        path = quote(request.path, safe="/")  # as the template's ``request.path|urlencode``
        urls = [url for app in available_apps for url in (app["app_url"], *(model["admin_url"] for model in app["models"]))]
        current = tuple(_within(url, path) for url in urls)

        def draw() -> SafeString:
            return mark_safe(loader.render_to_string("admin/nav_sidebar.html", {"available_apps": available_apps, "request": request}))

        return draw() if key is None else _memo(("nav_sidebar", key, current), draw)

    def index(self, request, extra_context=None):
        """The admin index is the dashboard: what needs attention, for the user who looks."""
        return super().index(request, {**dashboard_context(request), **(extra_context or {})})


#: The one instance: Django's default site (``admin.site``) is this object, whichever module
#: first asks for it.
site = FlamingockAdminSite()


# -- the app list, once per user and permission state ------------------------------------------------

#: Seconds a process keeps an app list at most: the bound on a change no signal reports (raw SQL,
#: ``bulk_create``), and on one made in a process that does not share the cache (the local-memory
#: cache is for one process only, settings.CACHES).
APP_LIST_TTL = 60.0
#: App lists and sidebars a process keeps (each a few kilobytes), the oldest dropped first.
APP_LISTS_KEPT = 512

_kept: dict[tuple, tuple[float, object]] = {}
_kept_lock = threading.Lock()


def _app_list_key(admin_site, request) -> tuple | None:
    """What an app list depends on besides the permission state: the user and their flags, the
    language, where the site is mounted, and the target system permission screens, which grant the
    change permission for their own requests (``_flk_permission_screen``, changes_app/admin/targets.py)."""
    version = permissions_version()
    if version is None:
        return None
    user = request.user
    return (
        admin_site.name, version, user.pk, user.is_active, user.is_staff, user.is_superuser,
        get_language(), get_script_prefix(), get_urlconf(), bool(getattr(request, "_flk_permission_screen", False)),
    )  # fmt: skip


def _memo(key: tuple, compute):
    """``compute()``, kept under ``key`` for :data:`APP_LIST_TTL` seconds."""
    now = time.monotonic()
    found = _kept.get(key)
    if found is not None and now - found[0] < APP_LIST_TTL:
        return found[1]
    value = compute()
    with _kept_lock:
        while len(_kept) >= APP_LISTS_KEPT:
            _kept.pop(next(iter(_kept)))
        _kept[key] = (now, value)
    return value


def _within(url, path: str) -> bool:
    """The template's ``url in request.path|urlencode`` (false for a model without a page)."""
    return isinstance(url, str) and url in path


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
