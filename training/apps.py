from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Runs, stages, the model registry and Celery tasks: thin adapters between the database and `engine`."""

    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from training import jobs  # noqa: F401  (registers training stages with core.jobs)
