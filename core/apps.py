from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _create_cache_table(sender, using="default", **kwargs):
    """The database cache (the shared store when there is no Redis) needs its table; `migrate` makes it."""
    from django.conf import settings
    from django.core.management import call_command

    if any(cache["BACKEND"].endswith("DatabaseCache") for cache in settings.CACHES.values()):
        call_command("createcachetable", database=using, verbosity=0)


class CoreConfig(AppConfig):
    """Platform concerns shared by every domain app: roles, users, health, worker heartbeats."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Here, not at the top: Django imports apps.py before any model can load, ready() once they all have.
        from core import (
            lockout,  # noqa: F401  (connects the sign-in signal receivers)
            token_cache,
        )

        token_cache.connect_signals()

        post_migrate.connect(_create_cache_table, sender=self, dispatch_uid="core.create_cache_table")
