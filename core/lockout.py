"""Sign-in lockout shared by every process: the browser login, /django-admin/login/ and the API token endpoint.

Failed sign-ins are counted in the default cache (Redis in production, the database cache table otherwise, so
every gunicorn worker sees the same counts) per username and per client address. Past the allowed number of
failures each further failure doubles the wait (LOGIN_LOCKOUT_BASE_S, 2x, 4x, ... up to LOGIN_LOCKOUT_MAX_S);
while locked, `authenticate()` raises SignInLocked before the password is even checked. The client address is
REMOTE_ADDR unless TRUSTED_PROXY_COUNT proxies in front of the app append to X-Forwarded-For.
"""

from __future__ import annotations

import hashlib
import math
import time

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.dispatch import receiver


class SignInLocked(Exception):
    """Too many failed sign-ins for this username or address; `retry_after` seconds until the next try."""

    def __init__(self, retry_after: int):
        self.retry_after = retry_after
        super().__init__(f"Too many failed sign-ins. Try again in {retry_after} seconds.")


def client_address(request) -> str:
    """The client's IP: REMOTE_ADDR, or the address the outermost of TRUSTED_PROXY_COUNT proxies saw."""
    meta = request.META
    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = meta.get("HTTP_X_FORWARDED_FOR", "")
    if proxies > 0 and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-min(proxies, len(hops))]
    return meta.get("REMOTE_ADDR", "") or "unknown"


def _now() -> float:
    return time.time()


def _keys(*, username: str | None, address: str) -> list[tuple[str, int]]:
    """(cache key, failures allowed) for the address and, when given, the username."""
    keys = [(f"signin-fail:ip:{address}", settings.LOGIN_LOCKOUT_IP_FAILURES)]
    if username:
        digest = hashlib.sha256(username.strip().lower().encode("utf-8", "replace")).hexdigest()[:32]
        keys.append((f"signin-fail:user:{digest}", settings.LOGIN_LOCKOUT_USER_FAILURES))
    return keys


def _lock_seconds(*, failures: int, allowed: int) -> float:
    if failures < allowed:
        return 0.0
    return min(settings.LOGIN_LOCKOUT_BASE_S * 2 ** min(failures - allowed, 30), settings.LOGIN_LOCKOUT_MAX_S)


def signin_check(*, request, username: str | None) -> None:
    """Raise SignInLocked while this username or address is locked out."""
    now = _now()
    wait = 0.0
    for key, allowed in _keys(username=username, address=client_address(request)):
        record = cache.get(key)
        if record:
            wait = max(
                wait, record["last"] + _lock_seconds(failures=record["failures"], allowed=allowed) - now
            )
    if wait > 0:
        raise SignInLocked(retry_after=math.ceil(wait))


def signin_failed(*, request, username: str | None) -> None:
    """Count one failed sign-in for the username and the address (kept for LOGIN_LOCKOUT_WINDOW_S)."""
    now = _now()
    for key, _allowed in _keys(username=username, address=client_address(request)):
        record = cache.get(key) or {"failures": 0}
        cache.set(
            key, {"failures": record["failures"] + 1, "last": now}, timeout=settings.LOGIN_LOCKOUT_WINDOW_S
        )


def signin_succeeded(*, request, username: str) -> None:
    """A correct password clears the username's count (the address keeps its own)."""
    for key, _allowed in _keys(username=username, address=client_address(request))[1:]:
        cache.delete(key)


class LockoutBackend(ModelBackend):
    """First in AUTHENTICATION_BACKENDS: refuses to check any password while the sign-in is locked out.

    It never authenticates (ModelBackend, next in the list, checks the password) but loads users like ModelBackend,
    so a session that names it (`force_login` picks the first backend) stays signed in.
    """

    def authenticate(self, request, username=None, **credentials):
        if request is not None:
            signin_check(request=request, username=username)
        return None


@receiver(user_login_failed, dispatch_uid="core.lockout.failed")
def _count_failure(sender, credentials, request=None, **kwargs):
    if request is not None:
        signin_failed(request=request, username=credentials.get("username"))


@receiver(user_logged_in, dispatch_uid="core.lockout.succeeded")
def _clear_failures(sender, request, user, **kwargs):
    if request is not None:
        signin_succeeded(request=request, username=user.get_username())


class SignInLockedMiddleware:
    """A locked-out browser sign-in (login page or admin login) gets a 429 page with Retry-After, not a 500."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, SignInLocked):
            return None
        from django.shortcuts import render

        response = render(
            request, "registration/locked.html", {"retry_after": exception.retry_after}, status=429
        )
        response["Retry-After"] = str(exception.retry_after)
        return response
