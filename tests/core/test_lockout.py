"""Sign-in lockout: shared by every process, blind to a forged X-Forwarded-For, on all three sign-in forms."""

from __future__ import annotations

import os
from contextlib import ExitStack

import pytest
import requests
from django.core.management import call_command

from core import lockout
from core.lockout import client_address
from tests.labeling.factories import make_user
from tests.workers import web_server

PASSWORD = "pw-for-tests-123"


CACHES = ["db://"] + ([os.environ["REDIS_TEST_URL"]] if os.environ.get("REDIS_TEST_URL") else [])


@pytest.mark.parametrize("cache_url", CACHES, ids=lambda url: url.split(":")[0])
def test_lockout_holds_across_two_processes_and_ignores_forged_forwarded_for(
    cache_url, transactional_db, settings, client
):
    # This process reads the very cache the two servers write (no per-test key prefix).
    if cache_url == "db://":
        settings.CACHES = {
            "default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "django_cache"}
        }
        call_command("createcachetable")
    else:
        settings.CACHES = {
            "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": cache_url}
        }
    make_user("victim", password=PASSWORD)
    env = {
        "CACHE_URL": cache_url,
        "LOGIN_LOCKOUT_USER_FAILURES": "5",
        "LOGIN_LOCKOUT_IP_FAILURES": "8",
    }
    with ExitStack() as stack:
        servers = [stack.enter_context(web_server(extra_env=env)) for _ in range(2)]

        def token(n: int, username: str, password: str = "wrong"):
            return requests.post(
                f"{servers[n % 2]}/api/v1/auth/token/",
                json={"username": username, "password": password},
                headers={"X-Forwarded-For": f"203.0.113.{n % 250}"},  # a new "address" every time
                timeout=30,
            )

        # Five failures for one user, alternating between the two processes: the sixth try is refused in both,
        # even with the right password.
        assert [token(n, "victim").status_code for n in range(5)] == [400] * 5
        for n in (5, 6):
            locked = token(n, "victim", PASSWORD)
            assert locked.status_code == 429, locked.text
            assert "Too many failed sign-ins" in locked.json()["detail"]
            assert int(locked.headers["Retry-After"]) > 0
        # The address (REMOTE_ADDR: X-Forwarded-For is not trusted) is locked after 8 failures, whatever the user.
        assert [token(n, f"guess{n}").status_code for n in range(3)] == [400] * 3
        assert token(3, "someone-else").status_code == 429

    # A third process (this test's) shares the lock: the browser login and the admin login refuse too.
    for path in ("/accounts/login/", "/django-admin/login/"):
        page = client.post(path, {"username": "victim", "password": PASSWORD}, REMOTE_ADDR="127.0.0.1")
        assert page.status_code == 429, path
        assert b"Too many failed sign-ins" in page.content and int(page["Retry-After"]) > 0


@pytest.mark.django_db
def test_browser_login_locks_per_user_with_doubling_backoff(client, settings, monkeypatch):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LOGIN_LOCKOUT_USER_FAILURES = 3
    settings.LOGIN_LOCKOUT_BASE_S = 60
    now = [1_000_000.0]
    monkeypatch.setattr(lockout, "_now", lambda: now[0])
    make_user("victim", password=PASSWORD)

    def login(password="wrong", address="198.51.100.7"):
        return client.post(
            "/accounts/login/", {"username": "victim", "password": password}, REMOTE_ADDR=address
        )

    assert [login().status_code for _ in range(3)] == [200] * 3  # the form again, with its error
    locked = login(PASSWORD, address="198.51.100.8")  # another address: the user is locked
    assert locked.status_code == 429 and locked["Retry-After"] == "60"
    now[0] += 61
    assert login().status_code == 200  # one more wrong try after the wait...
    assert login(PASSWORD)["Retry-After"] == "120"  # ...doubles it
    now[0] += 121
    assert login(PASSWORD).status_code == 302  # the right password once the wait is over
    assert login().status_code == 200  # and success forgot the count


@pytest.mark.django_db
def test_forwarded_for_is_used_only_behind_configured_proxies(rf, settings):
    request = rf.get("/", HTTP_X_FORWARDED_FOR="1.1.1.1, 10.0.0.5", REMOTE_ADDR="10.0.0.9")
    settings.TRUSTED_PROXY_COUNT = 0
    assert client_address(request) == "10.0.0.9"
    settings.TRUSTED_PROXY_COUNT = 1
    assert client_address(request) == "10.0.0.5"
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_address(request) == "1.1.1.1"
