from django.contrib.admin.apps import SimpleAdminConfig


class FlamingockAdminConfig(SimpleAdminConfig):
    """Django's admin with the product's site as the default one (``admin.site``)."""

    default_site = "changes_app.admin.site.default_site"
