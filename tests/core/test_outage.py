"""With the database unreachable, production (DEBUG=0, gunicorn) answers 503 + Retry-After, never a 500."""

from __future__ import annotations

import pytest
import requests

from core.outage import is_database_outage
from tests.workers import free_port, web_server


@pytest.fixture
def server_without_database():
    """gunicorn (DEBUG=0) whose DATABASE_URL points at a port nothing listens on: every query fails to connect."""
    env = {
        "DATABASE_URL": f"postgres://feedback@127.0.0.1:{free_port()}/feedback",
        "OUTAGE_RETRY_AFTER_S": "7",
        "CACHE_URL": "db://",
    }
    with web_server(extra_env=env) as url:
        yield url


def test_api_and_pages_answer_503_with_retry_after(server_without_database):
    url = server_without_database
    api = requests.get(f"{url}/api/v1/projects/", headers={"Authorization": "Token " + "a" * 40}, timeout=30)
    assert api.status_code == 503 and api.headers["Retry-After"] == "7"
    assert api.headers["Content-Type"] == "application/json"
    assert "database is unreachable" in api.json()["detail"]
    token = requests.post(f"{url}/api/v1/auth/token/", json={"username": "a", "password": "b"}, timeout=30)
    assert token.status_code == 503 and token.headers["Retry-After"] == "7"
    page = requests.get(f"{url}/projects/", cookies={"sessionid": "x" * 32}, timeout=30)
    assert page.status_code == 503 and page.headers["Retry-After"] == "7"
    assert page.headers["Content-Type"].startswith("text/html") and "Nothing you sent was lost" in page.text


def test_only_connection_failures_count_as_an_outage():
    from django.db import DataError, IntegrityError, OperationalError

    assert is_database_outage(OperationalError("connection refused"))
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = OperationalError("server closed the connection")
    assert is_database_outage(wrapped)
    assert not is_database_outage(IntegrityError("duplicate key"))
    assert not is_database_outage(DataError("NUL"))
    assert not is_database_outage(ValueError("nope"))
