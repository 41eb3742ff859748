from django.apps import AppConfig


class RegistryConfig(AppConfig):
    """The model registry (every model version with its lineage) and the layout of ARTIFACT_ROOT.

    At the bottom of the domain apps: labeling, training and loop point at model versions; the registry points at
    none of them (a training stage names the version it produced, not the reverse).
    """

    name = "registry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Not at the top: models may only be imported once the app registry is ready, i.e. here.
        from registry import jobs  # noqa: F401  (registers base model imports with core.jobs)
