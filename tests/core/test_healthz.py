import os
import socket

import pytest
from django.contrib.auth.models import User

from core.services import user_create_or_update

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    client.force_login(User.objects.create_user("ops", password="ops-pass-123", is_staff=True))
    return client


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens here once the socket closes


def test_healthz_ok_with_filesystem_broker(staff_client, settings, tmp_path):
    queue = tmp_path / "queue"
    queue.mkdir()
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(queue), "data_folder_out": str(queue)}
    response = staff_client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["broker"] == {"ok": True, "detail": "filesystem"}


def test_healthz_503_when_filesystem_broker_folder_is_missing(client, settings, tmp_path):
    settings.CELERY_BROKER_URL = "filesystem://"
    missing = str(tmp_path / "gone")
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": missing, "data_folder_out": missing}
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["broker"]["ok"] is False


@pytest.mark.redis
def test_healthz_ok_with_redis(staff_client, settings):
    url = os.environ.get("REDIS_TEST_URL")
    if not url:
        pytest.skip("REDIS_TEST_URL is not set; `make test` starts Redis and sets it")
    settings.CELERY_BROKER_URL = url
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    response = staff_client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["broker"] == {"ok": True, "detail": "redis"}


def test_healthz_503_when_redis_broker_is_down(staff_client, settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    settings.HEALTH_BROKER_TIMEOUT_S = 1
    response = staff_client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"]["ok"] is True
    assert body["broker"]["ok"] is False
    assert "Error" in body["broker"]["detail"]


def test_healthz_is_public_and_not_cached(client):
    response = client.get("/healthz")
    assert "no-cache" in response.headers["Cache-Control"] or "max-age=0" in response.headers["Cache-Control"]


def test_anonymous_healthz_says_ok_or_fail_per_check_but_not_where_things_are(client, settings):
    port = _closed_port()
    settings.CELERY_BROKER_URL = f"redis://10.0.0.7:{port}/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    settings.HEALTH_BROKER_TIMEOUT_S = 0.5
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable", "database": {"ok": True}, "broker": {"ok": False}, "pages": {"ok": True}
    }  # fmt: skip
    assert b"10.0.0.7" not in response.content and str(port).encode() not in response.content


def test_admins_get_the_details(client, settings, tmp_path):
    queue = tmp_path / "queue"
    queue.mkdir()
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(queue), "data_folder_out": str(queue)}
    admin, _ = user_create_or_update(username="boss", role="admin", password="boss-pass-123", validate=False)
    client.force_login(admin)
    body = client.get("/healthz").json()
    assert body["broker"]["detail"] == "filesystem" and body["pages"]["detail"] == "login page renders"


def test_healthz_503_when_pages_cannot_render_static_files(client, settings, tmp_path):
    """DEBUG=0 storage and a STATIC_ROOT without collectstatic's manifest: every page would be a 500."""
    queue = tmp_path / "queue"
    queue.mkdir()
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(queue), "data_folder_out": str(queue)}
    settings.STATIC_ROOT = tmp_path / "static-root-without-manifest"
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["pages"] == {"ok": False}
