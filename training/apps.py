from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Runs, stages, their pages, API and Celery tasks: thin adapters between the database and `engine`."""

    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: Django imports apps.py before any model can load, ready() once they all have.
        from training import jobs  # noqa: F401  (registers training stages with core.jobs)
