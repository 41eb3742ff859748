"""django-filter FilterSet of the exports list (`?project=slug&status=…`)."""

from __future__ import annotations

import django_filters

from exports.models import Export


class ExportFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug")

    class Meta:
        model = Export
        fields = ["project", "status", "format", "file_type"]
