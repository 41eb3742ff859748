from __future__ import annotations

import django_filters
from rest_framework import viewsets

from core.api.permissions import IsResearcherOrAdmin
from registry.api.serializers import ModelVersionSerializer
from registry.models import ModelVersion


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
