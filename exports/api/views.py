"""REST API of exports: authentication, permissions, (de)serialisation; every rule is in a service."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response as ApiResponse

from core.api.permissions import IsResearcherOrAdmin
from core.api.schema import BROKER_DOWN
from exports.api import serializers
from exports.api.filters import ExportFilter
from exports.downloads import download_response
from exports.models import Export
from exports.services import export_cancel, export_create, export_file_path, export_retry


class ExportViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Dataset exports: create one (a Celery task on the `default` queue writes it), watch it, download it."""

    queryset = Export.objects.select_related("project", "created_by")
    serializer_class = serializers.ExportSerializer
    permission_classes = [IsResearcherOrAdmin]
    filterset_class = ExportFilter
    ordering_fields = ["id", "created_at"]

    def perform_create(self, serializer):
        values = serializer.validated_data
        serializer.instance = export_create(
            project=values["project"],
            format=values["format"],
            file_type=values["file_type"],
            filters=values.get("filters") or {},
            created_by=self.request.user,
        )

    @extend_schema(
        responses={
            202: serializers.ExportSerializer,
            503: OpenApiResponse(description=BROKER_DOWN),
        }
    )
    def create(self, request, *args, **kwargs):
        response = super().create(request, *args, **kwargs)
        response.status_code = status.HTTP_202_ACCEPTED
        return response

    @extend_schema(
        request=None,
        responses={
            200: serializers.ExportSerializer,
            400: OpenApiResponse(description="The export has succeeded or failed already."),
        },
    )
    @action(detail=True, methods=["post"], filterset_class=None)
    def cancel(self, request, pk=None):
        """Cancel a queued or running export (a running one stops within about a second; its files are removed)."""
        export = export_cancel(export=self.get_object())
        return ApiResponse(self.get_serializer(export).data)

    @extend_schema(
        request=None,
        responses={
            202: serializers.ExportSerializer,
            400: OpenApiResponse(description="The export is running or has succeeded."),
            503: OpenApiResponse(description=BROKER_DOWN),
        },
    )
    @action(detail=True, methods=["post"], filterset_class=None)
    def retry(self, request, pk=None):
        """Run a failed or cancelled export again from the start (a queued one is sent to the workers again)."""
        export = export_retry(export=self.get_object())
        return ApiResponse(self.get_serializer(export).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            400: OpenApiResponse(description="The export is not finished."),
        }
    )
    @action(detail=True, methods=["get"], filterset_class=None)
    def download(self, request, pk=None):
        """The data file (JSONL or Parquet), or a tar of the Hugging Face dataset directory and its card."""
        export = self.get_object()
        return download_response(export, export_file_path(export=export))
