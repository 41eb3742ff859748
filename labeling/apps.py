from django.apps import AppConfig


class LabelingConfig(AppConfig):
    """Prompts, responses, comparisons, assignments, rankings, agreement, imports, annotator views."""

    name = "labeling"
    default_auto_field = "django.db.models.BigAutoField"
