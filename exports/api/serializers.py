"""Serializers of the exports API: the shape of requests and responses only; the rules live in the services."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from exports.filters import AGGREGATIONS
from exports.formats import FORMATS
from exports.models import Export
from exports.writers import FILE_TYPES
from labeling.models import Project

# What the export job writes: read-only, like the job's timestamps.
_OUTCOME = ["status", "rows", "progress", "size_bytes", "content_hash", "stats", "error"]
_TIMES = ["created_at", "enqueued_at", "started_at", "finished_at"]


class FiltersSerializer(serializers.Serializer):
    """exports.filters.PreferenceFilters."""

    date_from = serializers.CharField(
        required=False, allow_null=True, help_text="YYYY-MM-DD or ISO date-time."
    )
    date_to = serializers.CharField(
        required=False, allow_null=True, help_text="YYYY-MM-DD (inclusive) or ISO."
    )
    min_agreement = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    exclude_flagged = serializers.BooleanField(required=False, default=True)
    gold_qualified_only = serializers.BooleanField(required=False, default=False)
    adjudicated_only = serializers.BooleanField(required=False, default=False)
    aggregation = serializers.ChoiceField(choices=list(AGGREGATIONS), required=False, default="majority")


class ExportSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    format = serializers.ChoiceField(choices=list(FORMATS), default="pairwise")
    file_type = serializers.ChoiceField(choices=list(FILE_TYPES), default="jsonl")
    filters = FiltersSerializer(required=False)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Export
        fields = [
            "id",
            "project",
            "format",
            "file_type",
            "filters",
            *_OUTCOME,
            "download_url",
            "created_by",
            *_TIMES,
        ]
        read_only_fields = [*_OUTCOME, *_TIMES]

    @extend_schema_field(
        serializers.URLField(allow_null=True, help_text="Null until the export has succeeded.")
    )
    def get_download_url(self, export: Export) -> str | None:
        if export.status != Export.Status.SUCCEEDED:
            return None
        url = reverse("api:export-download", args=[export.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url
