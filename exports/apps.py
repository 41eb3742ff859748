from django.apps import AppConfig


class ExportsConfig(AppConfig):
    """Preference datasets out of the labeling tables: filters, formats, files, dataset cards, the export job."""

    name = "exports"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Not at the top: models may only be imported once the app registry is ready, i.e. here.
        from exports import jobs  # noqa: F401  (registers exports with core.jobs)
