"""The anonymous throttle, applied to the callers it is for.

DRF checks permissions before throttles, so an anonymous caller (no token, or a wrong one) is
refused with 401 before any throttle counts it: the anonymous rate never applied, and guessing
tokens had no limit. The exception handler therefore counts every authentication refusal against
the view's anonymous throttles, and answers 429 ``throttled`` once the rate is spent. The counts live
in the cache: Redis when REDIS_URL is set, so that every process counts together.
"""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.throttling import AnonRateThrottle

AUTHENTICATION_REFUSALS = (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)


def anonymous_throttle_refusal(exc, context) -> exceptions.Throttled | None:
    """The 429 for an authentication refusal once the caller's anonymous rate is spent; None while
    it lasts (the refusal then counts as one request)."""
    view, request = context.get("view"), context.get("request")
    if not isinstance(exc, AUTHENTICATION_REFUSALS) or view is None or request is None:
        return None
    waits = [
        throttle.wait() for throttle in view.get_throttles() if isinstance(throttle, AnonRateThrottle) and not throttle.allow_request(request, view)
    ]
    if not waits:
        return None
    return exceptions.Throttled(wait=max((wait for wait in waits if wait is not None), default=None))
