from __future__ import annotations

from rest_framework import serializers

from registry.models import BaseModelImport, ModelVersion
from registry.services import CHAT_TEMPLATE_MAX_CHARS


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


class BaseModelImportSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = BaseModelImport
        fields = [
            "id",
            "source_path",
            "name",
            "status",
            "error",
            "bytes_copied",
            "bytes_total",
            "progress",
            "model_version",
            "created_by",
            "created_at",
            "enqueued_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class BaseModelImportCreateSerializer(serializers.Serializer):
    """Add a base model, as "Add a base model" on /models/ does (admins): the folder is checked by a worker before
    anything is copied; poll the import until it has succeeded (`model_version`) or failed (`error`)."""

    path = serializers.CharField(
        max_length=1000,
        help_text="A Hugging Face model folder inside MODEL_IMPORT_ROOTS (default ARTIFACT_ROOT).",
    )
    name = serializers.CharField(
        max_length=200, required=False, default="", allow_blank=True, help_text="Empty: the folder's name."
    )
    chat_template = serializers.CharField(
        max_length=CHAT_TEMPLATE_MAX_CHARS,
        required=False,
        default="",
        allow_blank=True,
        trim_whitespace=False,
        help_text="A Jinja chat template, for a tokenizer without one.",
    )
