from __future__ import annotations

import django_filters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.response import Response

from core.api.permissions import IsAdmin, IsResearcherOrAdmin
from core.api.schema import BROKER_DOWN
from registry.api.serializers import (
    BaseModelImportCreateSerializer,
    BaseModelImportSerializer,
    ModelVersionSerializer,
)
from registry.models import BaseModelImport, ModelVersion
from registry.services import base_model_import_job_create


class ModelVersionFilter(django_filters.FilterSet):
    class Meta:
        model = ModelVersion
        fields = ["kind", "parent", "base", "name"]


class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = ModelVersion.objects.all()
    serializer_class = ModelVersionSerializer
    permission_classes = [IsResearcherOrAdmin]
    filterset_class = ModelVersionFilter
    ordering_fields = ["id", "created_at"]


class BaseModelImportViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Base model imports, newest first, with their progress (admins): add one, then watch it here."""

    queryset = BaseModelImport.objects.select_related("created_by")
    serializer_class = BaseModelImportSerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["status"]
    ordering_fields = ["id", "created_at"]

    @extend_schema(
        request=BaseModelImportCreateSerializer,
        responses={
            202: BaseModelImportSerializer,
            400: OpenApiResponse(
                description="Nothing queued: `path` (outside MODEL_IMPORT_ROOTS, or no folder there) or `name` "
                "(registered already)."
            ),
            503: OpenApiResponse(description=BROKER_DOWN),
        },
    )
    def create(self, request, *args, **kwargs):
        """Queue the import of a model folder on the `default` queue: checked, then copied into the registry."""
        data = BaseModelImportCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = base_model_import_job_create(**data.validated_data, created_by=request.user)
        return Response(self.get_serializer(job).data, status=status.HTTP_202_ACCEPTED)
