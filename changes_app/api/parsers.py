"""The API's JSON parser, with limits: a body over ``FLAMINGOCK_API_MAX_BODY_BYTES`` (default 1 MiB)
is refused with ``payload_too_large`` (413), JSON nested deeper than ``FLAMINGOCK_API_MAX_JSON_DEPTH``
(default 32) with ``payload_too_deep`` (400). Both answer in the one error format (``api.errors``).

Django's own ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is checked first (DRF reads the body through it);
``api.errors`` answers it with ``payload_too_large`` too.
"""

from __future__ import annotations

import io

from django.conf import settings
from rest_framework.parsers import JSONParser

from changes_app.api.errors import ApiError

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_JSON_DEPTH = 32


def max_body_bytes() -> int:
    return int(getattr(settings, "FLAMINGOCK_API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


def max_json_depth() -> int:
    return int(getattr(settings, "FLAMINGOCK_API_MAX_JSON_DEPTH", DEFAULT_MAX_JSON_DEPTH))


def json_depth(value, limit: int) -> int:
    """How deep the arrays and objects of a parsed value nest (a scalar is 0), counted without
    recursion and given up as soon as it passes ``limit`` (then ``limit + 1``)."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _too_deep(limit: int) -> ApiError:
    return ApiError("payload_too_deep", f"The request body nests arrays and objects deeper than {limit} levels.", {"max_depth": limit})


class LimitedJSONParser(JSONParser):
    """DRF's JSON parser, refusing oversized and too deeply nested bodies in the API's error format.

    The C JSON decoder is linear and stops a runaway nesting with ``RecursionError`` (once a 500);
    the parsed value's depth is then counted iteratively."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = max_body_bytes()
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise ApiError("payload_too_large", f"The request body is larger than {limit} bytes.", {"max_bytes": limit})
        depth = max_json_depth()
        try:
            data = super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError:
            raise _too_deep(depth) from None
        if json_depth(data, depth) > depth:
            raise _too_deep(depth)
        return data
