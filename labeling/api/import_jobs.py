"""REST API of background imports: `POST /prompts/import/` answers a large file with its job; watch it here."""

from __future__ import annotations

from rest_framework import serializers, viewsets

from core.api.permissions import IsAdmin
from labeling.models import ImportJob
from labeling.services.import_jobs import import_job_messages


class ImportJobSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project_slug", read_only=True)
    errors = serializers.SerializerMethodField(help_text="Bad lines (line, field, message) when it failed.")

    class Meta:
        model = ImportJob
        fields = [
            "id",
            "project",
            "file_name",
            "file_format",
            "size_bytes",
            "build_k",
            "pairing",
            "status",
            "phase",
            "progress",
            "lines",
            "rows_total",
            "rows_done",
            "counts",
            "errors",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_errors(self, job: ImportJob) -> list[str]:
        return import_job_messages(job=job) if job.status == ImportJob.Status.FAILED else []


class ImportJobViewSet(viewsets.ReadOnlyModelViewSet):
    """Imports of prompts, responses and comparisons, newest first (admins): status, progress, counts, errors."""

    queryset = ImportJob.objects.all()
    serializer_class = ImportJobSerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["status", "project_slug"]
    ordering_fields = ["id", "created_at"]
