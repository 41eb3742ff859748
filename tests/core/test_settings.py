"""Settings are read from the environment: SQLite + file-system broker by default, Postgres + Redis when set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management.utils import get_random_secret_key

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": get_random_secret_key(),
    "ALLOWED_HOSTS": "feedback.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://feedback.example.org",
    "DATABASE_URL": "postgres://feedback:secret@db.internal:5432/feedback",
    "CELERY_BROKER_URL": "redis://redis.internal:6379/0",
}
PROBE = """
import json, django
from django.conf import settings
django.setup()
from feedback_app.celery import app
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "options": {k: str(v) for k, v in db.get("OPTIONS", {}).items()},
    "host": db.get("HOST"), "broker": app.conf.broker_url, "transport": app.connection_for_write().transport_cls,
    "queues": sorted(q.name for q in app.conf.task_queues), "routes": app.conf.task_routes,
    "acks_late": app.conf.task_acks_late, "prefetch": app.conf.worker_prefetch_multiplier,
    "debug": settings.DEBUG, "artifact_root": str(settings.ARTIFACT_ROOT),
    "secure_cookies": settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE,
}))
"""


def _settings_under(env: dict[str, str], tmp_path: Path) -> dict:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DEBUG", "SECRET_KEY"}
    }
    base.update({"DJANGO_SETTINGS_MODULE": "feedback_app.settings", "VAR_DIR": str(tmp_path / "var")}, **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=base, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_are_sqlite_in_wal_mode_and_filesystem_broker(tmp_path):
    values = _settings_under({}, tmp_path)
    assert values["engine"] == "django.db.backends.sqlite3"
    assert values["name"] == str(tmp_path / "var" / "db.sqlite3")
    assert "journal_mode=WAL" in values["options"]["init_command"]
    assert float(values["options"]["timeout"]) >= 5
    assert values["broker"].startswith("filesystem://")
    assert values["debug"] is True
    assert values["artifact_root"] == str(tmp_path / "var" / "artifacts")
    assert (tmp_path / "var" / "celery" / "queue").is_dir()


def test_production_env_selects_postgres_and_redis(tmp_path):
    values = _settings_under(PRODUCTION_ENV, tmp_path)
    assert values["engine"] == "django.db.backends.postgresql"
    assert values["host"] == "db.internal"
    assert values["broker"] == "redis://redis.internal:6379/0"
    assert values["debug"] is False
    assert values["secure_cookies"] is True


def test_queues_routes_and_delivery_guarantees(tmp_path):
    values = _settings_under({}, tmp_path)
    assert values["queues"] == ["default", "gpu"]
    assert values["routes"]["training.tasks.*"] == {"queue": "gpu"}
    assert values["routes"]["training.tasks.fail_stale_stages"] == {"queue": "default"}
    assert values["acks_late"] is True
    assert values["prefetch"] == 1


def test_production_without_secret_key_refuses_to_start(tmp_path):
    env = {**PRODUCTION_ENV, "SECRET_KEY": ""}
    with pytest.raises(subprocess.CalledProcessError) as excinfo:
        _settings_under(env, tmp_path)
    assert "SECRET_KEY must be set" in excinfo.value.stderr


def test_bad_boolean_is_a_clear_error(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as excinfo:
        _settings_under({"DEBUG": "maybe"}, tmp_path)
    assert "DEBUG='maybe' is not a boolean" in excinfo.value.stderr


def test_check_deploy_is_clean_with_production_env(tmp_path):
    env = {**os.environ, **PRODUCTION_ENV, "VAR_DIR": str(tmp_path / "var")}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
