"""Read paths of the core domain: roles of a user, health of the database and the broker."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from kombu import Connection

from core import precompiled, token_cache
from core.roles import ALL_ROLES

# The role names are remembered on the user object, so one request asks the database once however many checks,
# views and templates ask for them (a request loads its user afresh, so a changed role counts from the next one).
_ROLES_CACHE = "_role_names"


def user_roles(*, user) -> set[str]:
    if not user.is_authenticated:
        return set()
    names = user.__dict__.get(_ROLES_CACHE)
    if names is None:
        names = user_roles_remember(
            user=user, names=user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True)
        )
    return set(names)


def user_roles_remember(*, user, names) -> frozenset[str]:
    """Remember role names loaded with the user (e.g. in the same query as an API token)."""
    names = frozenset(names) | ({"admin"} if user.is_superuser else frozenset())
    user.__dict__[_ROLES_CACHE] = names
    return names


def user_roles_forget(*, user) -> None:
    user.__dict__.pop(_ROLES_CACHE, None)


def user_with_roles_for_token(*, key: str):
    """(user, token created_at) for an API token key with the user's roles remembered, or None: one query with
    precompiled SQL (the API authenticates every request, and building the ORM query cost more than running it).
    A token seen in the last API_TOKEN_CACHE_SECONDS is not asked again (core.token_cache says when it is)."""
    rows = token_cache.get(key)
    if rows is None:
        rows = precompiled.fetch(_token_user_sql(), [key], prepare=True)
        if not rows:
            return None
        token_cache.put(key, rows)
    user = precompiled.instance(get_user_model(), rows[0], "u_")
    user_roles_remember(user=user, names=[row["role_name"] for row in rows if row["role_name"] in ALL_ROLES])
    return user, rows[0]["token_created"]


@cache
def _token_user_sql() -> str:
    from rest_framework.authtoken.models import Token

    User = get_user_model()
    membership = User.groups.through
    group = membership._meta.get_field("group").related_model
    pk = User._meta.pk.column
    return (
        f"SELECT {precompiled.columns(User, 'u', 'u_')}, t.created AS token_created, g.name AS role_name "
        f'FROM "{Token._meta.db_table}" t JOIN "{User._meta.db_table}" u ON u."{pk}" = t.user_id '
        f'LEFT JOIN "{membership._meta.db_table}" ug ON ug.user_id = u."{pk}" '
        f'LEFT JOIN "{group._meta.db_table}" g ON g.id = ug.group_id WHERE t.key = %s'
    )


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
