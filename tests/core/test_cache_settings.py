"""The cache that throttles and lockouts share is never per-process: Redis when there is one, else the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.workers import REPO_ROOT

PROBE = """
import json, django
from django.conf import settings
django.setup()
print(json.dumps({"cache": settings.CACHES["default"], "proxies": settings.REST_FRAMEWORK["NUM_PROXIES"]}))
"""
NAMES = ("CACHE_URL", "REDIS_URL", "CELERY_BROKER_URL", "TRUSTED_PROXY_COUNT", "DATABASE_URL")


def _settings(tmp_path, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in NAMES}
    base.update(DJANGO_SETTINGS_MODULE="feedback_app.settings", VAR_DIR=str(tmp_path), **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=base, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_is_the_database_table_without_redis_and_redis_with_it(tmp_path):
    assert _settings(tmp_path)["cache"] == {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "django_cache",
    }
    broker = _settings(tmp_path, CELERY_BROKER_URL="redis://broker:6379/0")["cache"]
    assert broker["BACKEND"].endswith("RedisCache") and broker["LOCATION"] == "redis://broker:6379/0"
    explicit = _settings(
        tmp_path, CELERY_BROKER_URL="redis://broker:6379/0", CACHE_URL="redis://cache:6379/2"
    )
    assert explicit["cache"]["LOCATION"] == "redis://cache:6379/2"
    assert _settings(tmp_path, REDIS_URL="redis://r:6379/1")["cache"]["LOCATION"] == "redis://r:6379/1"
    with pytest.raises(RuntimeError, match="CACHE_URL='locmem://'"):
        _settings(tmp_path, CACHE_URL="locmem://")


def test_forwarded_for_is_not_trusted_unless_configured(tmp_path):
    assert _settings(tmp_path)["proxies"] == 0
    assert _settings(tmp_path, TRUSTED_PROXY_COUNT="1")["proxies"] == 1
