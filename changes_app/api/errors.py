"""One error format for the whole API, with stable codes clients can branch on.

Every error body is ``{"error": {"code": ..., "message": ..., "details": ...}}``. The codes are part
of the API contract (documented in the schema): messages may be reworded, codes never change.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from changes_app.api.throttling import anonymous_throttle_refusal
from changes_app.governance.permissions import PermissionRefused
from changes_app.services import requests as approvals
from changes_app.services import runs as services

#: code -> (HTTP status, what it means). The schema lists these.
CODES: dict[str, tuple[int, str]] = {
    "invalid": (400, "The request body or query has invalid or missing fields (see details)."),
    "parse_error": (400, "The request body is not valid JSON."),
    "payload_too_deep": (400, "The request body nests arrays and objects deeper than FLAMINGOCK_API_MAX_JSON_DEPTH."),
    "not_authenticated": (401, "No credentials were given."),
    "authentication_failed": (401, "The token or session is not valid."),
    "permission_denied": (403, "You may see this object but not do this to it."),
    "self_decision": (403, "Nobody decides their own request."),
    "not_found": (404, "No such object, or not one you may see."),
    "method_not_allowed": (405, "This method is not allowed here."),
    "not_acceptable": (406, "The requested format is not available."),
    "action_refused": (409, "The action cannot be done in the change's current state."),
    "request_duplicate": (409, "An equal request is already pending or approved."),
    "request_not_pending": (409, "The request was already decided, cancelled or executed."),
    "request_expired": (409, "The request expired."),
    "request_stale": (409, "The change was edited since the request."),
    "pipeline_invalid": (409, "The pipeline has validation problems."),
    "idempotency_key_reused": (422, "This Idempotency-Key was used with another request."),
    "idempotency_in_progress": (409, "The first request with this Idempotency-Key is still being handled."),
    "payload_too_large": (413, "The request body is larger than FLAMINGOCK_API_MAX_BODY_BYTES (or DATA_UPLOAD_MAX_MEMORY_SIZE)."),
    "unsupported_media_type": (415, "Send application/json."),
    "throttled": (429, "Too many requests; retry after the given seconds."),
}


class ApiError(exceptions.APIException):
    """An error of the API itself (idempotency) with one of the codes above."""

    def __init__(self, code: str, message: str, details=None):
        self.status_code = CODES[code][0]
        self.code = code
        self.details = details
        super().__init__(message, code)


def error_body(code: str, message: str, details=None) -> dict:
    return {"error": {"code": code, "message": str(message), "details": details if details is not None else {}}}


# Most specific first: the first match wins.
_DOMAIN_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (approvals.SelfDecisionRefused, "self_decision"),
    (PermissionRefused, "permission_denied"),
    (services.NotFound, "not_found"),
    (approvals.RequestDuplicate, "request_duplicate"),
    (approvals.RequestNotPending, "request_not_pending"),
    (approvals.RequestExpired, "request_expired"),
    (approvals.RequestStale, "request_stale"),
    (services.PipelineInvalid, "pipeline_invalid"),
    (services.FlamingockError, "action_refused"),
)

_DRF_CODES = {
    exceptions.ValidationError: "invalid",
    exceptions.ParseError: "parse_error",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
}


def exception_handler(exc, context):
    """DRF's exception handler: every refusal in the one format; anything else is a server error."""
    # An anonymous caller's refusals count against the anonymous rate (api/throttling.py).
    exc = anonymous_throttle_refusal(exc, context) or exc
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        # Django's own limit (DRF reads a JSON body through it): the API's code, not an HTML 400.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            error_body("payload_too_large", f"The request body is larger than {limit} bytes.", {"max_bytes": limit}),
            status=CODES["payload_too_large"][0],
        )
    for kind, code in _DOMAIN_ERRORS:
        if isinstance(exc, kind):
            message = str(exc)
            if code == "not_found":
                # The service's message may name the object; a 404 says no more than "not found".
                message = "Not found."
            return Response(error_body(code, message), status=CODES[code][0])
    if isinstance(exc, ApiError):
        return Response(error_body(exc.code, exc.detail, exc.details), status=exc.status_code)
    if not isinstance(exc, exceptions.APIException):
        return None
    code = next((code for kind, code in _DRF_CODES.items() if isinstance(exc, kind)), "invalid")
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    if isinstance(exc, exceptions.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response = Response(error_body(code, "Invalid input.", details), status=status.HTTP_400_BAD_REQUEST, headers=headers)
    else:
        response = Response(error_body(code, exc.detail), status=exc.status_code, headers=headers)
    return response
