from django.contrib import admin

from labeling.models import (
    Adjudication,
    Assignment,
    Comparison,
    ComparisonResponse,
    ImportJob,
    Project,
    Prompt,
    Ranking,
    Response,
)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "mode", "k", "overlap", "gold_ratio", "allow_ties", "created_at")
    search_fields = ("slug", "name")


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "external_id", "domain", "created_at")
    list_filter = ("project", "domain")
    search_fields = ("external_id",)


@admin.register(Response)
class ResponseAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "external_id", "source_name", "model_version", "created_at")
    list_filter = ("prompt__project",)
    raw_id_fields = ("prompt", "model_version")


class ComparisonResponseInline(admin.TabularInline):
    model = ComparisonResponse
    raw_id_fields = ("response",)
    extra = 0


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "k", "priority", "is_gold", "status", "created_at")
    list_filter = ("project", "status", "is_gold", "k")
    raw_id_fields = ("prompt",)
    inlines = [ComparisonResponseInline]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "comparison", "annotator", "state", "leased_at", "leased_until")
    list_filter = ("project", "state")
    raw_id_fields = ("comparison", "annotator")


@admin.register(Ranking)
class RankingAdmin(admin.ModelAdmin):
    list_display = ("id", "comparison", "annotator", "both_bad", "seconds_spent", "created_at")
    list_filter = ("comparison__project",)
    raw_id_fields = ("comparison", "annotator", "assignment")


@admin.register(Adjudication)
class AdjudicationAdmin(admin.ModelAdmin):
    list_display = ("comparison", "adjudicator", "updated_at")
    raw_id_fields = ("comparison",)


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    list_display = ("id", "file_name", "project_slug", "status", "progress", "created_by", "created_at")
    list_filter = ("status",)
    readonly_fields = ("counts", "errors", "upload_path", "celery_task_id")
