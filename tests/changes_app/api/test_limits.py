"""Input limits of the API (docs/api.md, Limits): a body over ``FLAMINGOCK_API_MAX_BODY_BYTES`` (or
Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``) is 413 ``payload_too_large``, JSON nested deeper than
``FLAMINGOCK_API_MAX_JSON_DEPTH`` is 400 ``payload_too_deep``; both in the one error format, and
neither changes anything."""

from __future__ import annotations

import json

import pytest

from tests.changes_app.api.helpers import refused, state

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = "/api/v1/runs/"
REQUESTS = "/api/v1/requests/"


def post(client, path: str, body: bytes | str, **headers):
    return client.generic("POST", path, body, content_type="application/json", **headers)


def nested(depth: int) -> str:
    """A JSON value ``depth`` arrays/objects deep."""
    return '{"reason": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def test_deeply_nested_json_is_400_payload_too_deep_not_a_server_error(world, clients):
    before = state()
    for path in (RUNS, REQUESTS):
        for body in ("[" * 100_000 + "]" * 100_000, '{"a": ' * 50_000 + "1" + "}" * 50_000, nested(33)):
            details = refused(post(clients["engineer"], path, body), 400, "payload_too_deep")
            assert details["max_depth"] == 32
    assert state() == before


def test_json_at_the_depth_limit_is_parsed(world, clients):
    """32 levels are allowed: the body reaches the serializer, which names the field."""
    details = refused(post(clients["engineer"], RUNS, nested(32)), 400, "invalid")
    assert "reason" in details


def test_brackets_inside_strings_do_not_count_as_depth(world, clients):
    body = json.dumps({"kind": "UNDO", "change_id": "[" * 1000, "reason": '{"[\\"' * 200})
    details = refused(post(clients["engineer"], REQUESTS, body), 400, "invalid")
    assert "change_id" in details


def test_a_body_over_the_limit_is_413_payload_too_large(world, clients, settings):
    before = state()
    big = json.dumps({"reason": "x" * (1024 * 1024)})  # just over 1 MiB, under DATA_UPLOAD_MAX_MEMORY_SIZE
    details = refused(post(clients["engineer"], RUNS, big), 413, "payload_too_large")
    assert details["max_bytes"] == 1024 * 1024
    settings.FLAMINGOCK_API_MAX_BODY_BYTES = 100
    refused(post(clients["engineer"], RUNS, json.dumps({"reason": "y" * 200})), 413, "payload_too_large")
    assert state() == before


def test_a_body_over_djangos_upload_limit_is_413_payload_too_large_in_the_error_format(world, clients, settings):
    """Django's own limit (``DATA_UPLOAD_MAX_MEMORY_SIZE``) answers in the API's format too, not with
    Django's HTML 400."""
    before = state()
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"reason": "z" * 5000})
    for path in (RUNS, REQUESTS):
        refused(post(clients["engineer"], path, body, HTTP_IDEMPOTENCY_KEY="k-1"), 413, "payload_too_large")
        refused(post(clients["engineer"], path, body), 413, "payload_too_large")
    assert state() == before
