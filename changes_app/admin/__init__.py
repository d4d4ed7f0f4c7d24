"""The product's admin, one module per area; importing the package registers every ModelAdmin
on the product's own site (``site.site``, Django's default admin site in the reference site).
"""

from changes_app.admin import changes, drift, requests, runs, site, targets, tokens  # noqa: F401
