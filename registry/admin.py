from django.contrib import admin

from registry.models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "kind", "parent", "num_parameters", "created_at")
    readonly_fields = ("sha256", "artifact_path", "config", "created_at")
