from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Runs, stages, the model registry and Celery tasks: thin adapters between the database and `engine`."""

    name = "training"
    default_auto_field = "django.db.models.BigAutoField"
