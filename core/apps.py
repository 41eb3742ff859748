from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Platform concerns shared by every domain app: roles, users, health, worker heartbeats."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"
