from __future__ import annotations

from rest_framework import serializers

from registry.models import ModelVersion


class ModelVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "kind",
            "base",
            "parent",
            "artifact_path",
            "sha256",
            "source",
            "config",
            "metrics",
            "num_parameters",
            "created_at",
        ]
