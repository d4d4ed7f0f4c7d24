"""What the API schema says of errors: one shape, with the codes each status carries."""

from drf_spectacular.utils import OpenApiResponse

from changes_app.api import serializers as s


def error_responses(*codes: int) -> dict:
    described = {
        400: "Invalid input (code `invalid` or `parse_error`).",
        401: "Not authenticated.",
        403: "Permission denied (`permission_denied`, `self_decision`).",
        404: "Not found, or not visible to you, or a page past the end (`not_found`).",
        409: "Refused in the current state (`action_refused`, `request_*`, `pipeline_invalid`, `idempotency_in_progress`).",
        422: "Idempotency-Key reused with another request (`idempotency_key_reused`).",
        429: "Throttled.",
    }
    return {code: OpenApiResponse(s.ErrorSerializer, description=described[code]) for code in (401, 429, *codes)}
