from django.apps import AppConfig


class LabelingConfig(AppConfig):
    """Prompts, responses, comparisons, assignments, rankings, agreement, import/export, annotator views."""

    name = "labeling"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: Django imports apps.py before any model can load, ready() once they all have.
        from labeling import jobs  # noqa: F401  (registers exports with core.jobs)
