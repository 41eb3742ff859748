"""A per-process memory of API token lookups (token → user row, roles, token created), for API_TOKEN_CACHE_SECONDS.

Every API request authenticates, and the annotator loop's two requests come back to back: the token query was a
fifth of the round trip's database work. What is remembered is the row, never a user object: each request builds
its own instance, so nothing one request sets on its user reaches another request or thread.

A change made through the ORM in this process (a token deleted or rotated, a user saved or deleted, their groups
or a group changed) forgets every entry at once, and once more when that transaction commits (a request between
the change and the commit could have remembered the old row). Changes made in another process, or with
QuerySet.update(), are seen when the entry expires: at most API_TOKEN_CACHE_SECONDS later. That is the price: a
revoked token or a removed role keeps working for that long in the other web processes. 0 turns the cache off.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

_entries: dict[str, tuple[float, object]] = {}
_lock = threading.Lock()  # guards clear-while-iterating only; single dict operations are atomic
_MAX_ENTRIES = 10_000  # far more than a process's concurrent annotators; reached, the memory starts over


def get(key: str):
    """The remembered value for `key`, or None when there is none or it expired."""
    entry = _entries.get(key)
    if entry is None:
        return None
    if entry[0] < time.monotonic():
        _entries.pop(key, None)
        return None
    return entry[1]


def put(key: str, value) -> None:
    seconds = settings.API_TOKEN_CACHE_SECONDS
    if seconds <= 0:
        return
    if len(_entries) >= _MAX_ENTRIES:
        forget_all()
    _entries[key] = (time.monotonic() + seconds, value)


def forget_all() -> None:
    with _lock:
        _entries.clear()


def _changed(**kwargs) -> None:
    forget_all()
    # Also after the commit: a lookup between this change and its commit still reads (and remembers) the old row.
    transaction.on_commit(forget_all, using=kwargs.get("using") or "default")


def connect_signals() -> None:
    """Forget on every ORM change that can change who a token is or what they may do (core.apps.ready)."""
    from rest_framework.authtoken.models import Token

    user_model = get_user_model()
    for sender in (Token, user_model, Group):
        post_save.connect(_changed, sender=sender, dispatch_uid=f"core.token_cache.save.{sender.__name__}")
        post_delete.connect(
            _changed, sender=sender, dispatch_uid=f"core.token_cache.delete.{sender.__name__}"
        )
    m2m_changed.connect(_changed, sender=user_model.groups.through, dispatch_uid="core.token_cache.m2m")
