"""Settings the product reads at call time (never at import time)."""

from django.conf import settings


def current_environment() -> str:
    """The deployment this instance governs (``FLAMINGOCK_ENVIRONMENT``)."""
    return settings.FLAMINGOCK_ENVIRONMENT
