from django.apps import AppConfig


class LoopConfig(AppConfig):
    """Closing the loop: trained policies generate new comparisons (uncertain first), simulated annotators for
    headless runs, and the leaderboard of model versions from human rankings."""

    name = "loop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: Django imports apps.py before any model can load, ready() once they all have.
        from loop import jobs, signals  # noqa: F401  (sampling jobs for core.jobs; "sample after a training run")
