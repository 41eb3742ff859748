"""Read paths of the core domain: roles of a user, health of the database and the broker."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import connections
from kombu import Connection

from core.roles import ALL_ROLES


def user_roles(*, user) -> set[str]:
    if not user.is_authenticated:
        return set()
    names = set(user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True))
    if user.is_superuser:
        names.add("admin")
    return names


def user_has_role(*, user, role: str) -> bool:
    return role in user_roles(user=user)


@dataclass(frozen=True)
class ComponentHealth:
    ok: bool
    detail: str


def database_health() -> ComponentHealth:
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "down"; the detail says which
        return ComponentHealth(ok=False, detail=f"{type(exc).__name__}: {exc}".strip())
    return ComponentHealth(ok=True, detail=connections["default"].vendor)


def broker_health() -> ComponentHealth:
    """Open a real connection to the configured broker (Redis, or the file-system transport's folders)."""
    url = settings.CELERY_BROKER_URL
    transport_options = dict(getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {})
    timeout = settings.HEALTH_BROKER_TIMEOUT_S
    transport_options.setdefault("socket_connect_timeout", timeout)
    transport_options.setdefault("socket_timeout", timeout)
    try:
        with Connection(url, transport_options=transport_options, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
            if url.startswith("filesystem://"):
                _check_filesystem_folders(transport_options)
    except Exception as exc:
        return ComponentHealth(ok=False, detail=f"{type(exc).__name__}: {exc}".strip())
    return ComponentHealth(ok=True, detail=url.split("://", 1)[0])


def pages_health() -> ComponentHealth:
    """Render the login page's template the way a real page is rendered: with DEBUG=0 a missing static manifest
    (collectstatic not run, or run with DEBUG=1), a missing template folder or a broken template fails here, so the
    container healthcheck sees what a browser would see, not just a live process."""
    from django.contrib.auth.forms import AuthenticationForm
    from django.template.loader import render_to_string

    try:
        render_to_string("registration/login.html", {"form": AuthenticationForm()})
    except Exception as exc:
        return ComponentHealth(ok=False, detail=f"{type(exc).__name__}: {exc}".strip())
    return ComponentHealth(ok=True, detail="login page renders")


def _check_filesystem_folders(transport_options: dict) -> None:
    import os

    for key in ("data_folder_in", "data_folder_out"):
        folder = transport_options.get(key)
        if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            raise OSError(f"broker folder {folder} is missing or not writable")
