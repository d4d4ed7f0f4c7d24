"""schemathesis against the live schema: no server error, every response conforms to the schema.

Bounded: a few derandomized examples per operation, all in one test (pytest 9 and schemathesis'
lazy-fixture plugin do not combine, so the operations are driven here with hypothesis directly)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from flamingock_site.wsgi import application

#: No server error, documented status codes and media types, bodies that match the schema.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_api_answers_every_generated_call_without_server_error_and_as_documented(world, people):
    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", application)
    headers = {"Authorization": f"Bearer {people['engineer'].token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(headers=headers, checks=CHECKS)

        check()
