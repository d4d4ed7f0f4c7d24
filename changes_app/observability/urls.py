"""The monitoring endpoints, for a site's root URLconf: ``path("", include("changes_app.observability.urls"))``."""

from django.urls import path

from changes_app.observability import health, metrics

urlpatterns = [
    path("health/live/", health.live, name="health-live"),
    path("health/ready/", health.ready, name="health-ready"),
    path("health/detail/", health.detail, name="health-detail"),
    path("metrics", metrics.metrics, name="metrics"),
]
