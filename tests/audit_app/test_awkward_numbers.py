"""Numbers that a JSON or float column does not give back as written still verify."""

import pytest

from audit_app.integrity import audit_verify
from audit_app.models import AuditEntry
from audit_app.services import Actor, audit_record

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "details, duration",
    [
        ({"delta": -0.0}, -0.0),
        ({"big": 1e16, "bigger": -3.0e20, "nested": [{"x": 2.5e17}]}, 1.5),
        ({"small": 1e-7, "plain": 1.0}, 0.0),
    ],
)
def test_negative_zero_and_huge_integral_floats_are_stored_as_they_read_back_and_verify(details, duration):
    entry = audit_record(event="test.numbers", actor=Actor(name="tester"), environment="dev", details=details, duration_ms=duration)
    stored = AuditEntry.objects.get(pk=entry.pk)
    assert stored.details == entry.details
    assert stored.duration_ms == entry.duration_ms
    result = audit_verify()
    assert result.ok, result
