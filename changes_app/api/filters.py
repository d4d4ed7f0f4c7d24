"""Query filters shared by the API's lists."""

from __future__ import annotations

from datetime import UTC

from django import forms
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, normalised to UTC: PostgreSQL refuses offsets beyond ±15:59 and a time near
    year 1 or 9999 may not shift at all; both are invalid input (400), not a server error."""

    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return value
        try:
            return value.astimezone(UTC)
        except (OverflowError, ValueError):
            raise forms.ValidationError("The time is out of range.", code="invalid") from None


class UtcIsoDateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField
