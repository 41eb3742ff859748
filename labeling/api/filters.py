"""django-filter FilterSets of the list endpoints (`?project=slug&…`)."""

from __future__ import annotations

import django_filters

from labeling.models import Comparison, Export, Prompt, Ranking, Response
from training.models import ModelVersion, TrainingRun


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
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Ranking
        fields = ["project", "comparison", "both_bad", "created_after", "created_before"]


class ExportFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug")

    class Meta:
        model = Export
        fields = ["project", "status", "format", "file_type"]


class TrainingRunFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug")

    class Meta:
        model = TrainingRun
        fields = ["project", "status", "preset"]


class ModelVersionFilter(django_filters.FilterSet):
    class Meta:
        model = ModelVersion
        fields = ["kind", "parent", "base", "name"]
