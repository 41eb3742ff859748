"""django-filter FilterSets of the list endpoints (`?project=slug&…`)."""

from __future__ import annotations

import datetime as dt

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField

from labeling.models import Comparison, Prompt, Ranking, Response

# Real UTC offsets span -12:00..+14:00; Postgres rejects anything past +-15:59 with a DataError.
MAX_UTC_OFFSET = dt.timedelta(hours=14)


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 datetime with a real-world UTC offset, converted to UTC before any query sees it."""

    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return value
        offset = value.utcoffset()
        if offset is not None and abs(offset) > MAX_UTC_OFFSET:
            raise forms.ValidationError(
                "The UTC offset must be between -14:00 and +14:00.", code="invalid_offset"
            )
        try:
            return value.astimezone(dt.UTC)
        except (OverflowError, ValueError) as exc:
            raise forms.ValidationError("The date is out of range.", code="overflow") from exc


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class PromptFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug")

    class Meta:
        model = Prompt
        fields = ["project", "domain", "external_id"]


class ResponseFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="prompt__project__slug")

    class Meta:
        model = Response
        fields = ["project", "prompt", "model_version", "source_name", "external_id"]


class ComparisonFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug")

    class Meta:
        model = Comparison
        fields = ["project", "prompt", "status", "is_gold"]


class RankingFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="comparison__project__slug")
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Ranking
        fields = ["project", "comparison", "both_bad", "created_after", "created_before"]
