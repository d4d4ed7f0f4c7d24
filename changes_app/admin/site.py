"""The product's own admin site: titled Flamingock, its index the dashboard."""

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from changes_app.admin.views import dashboard_context


class FlamingockAdminSite(admin.AdminSite):
    site_header = _("Flamingock")
    site_title = _("Flamingock")
    index_title = _("Dashboard")

    def index(self, request, extra_context=None):
        """The admin index is the dashboard: what needs attention, for the user who looks."""
        return super().index(request, {**dashboard_context(request), **(extra_context or {})})


#: The one instance: Django's default site (``admin.site``) is this object, whichever module
#: first asks for it.
site = FlamingockAdminSite()


def default_site() -> FlamingockAdminSite:
    """The callable ``FlamingockAdminConfig.default_site`` names."""
    return site
