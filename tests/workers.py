"""Start a real Celery worker process against the test database, for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.db import connection

REPO_ROOT = Path(__file__).resolve().parent.parent


def session_database_url() -> str:
    """A DATABASE_URL naming the database this test session runs on (pytest-django's test_* database)."""
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    if connection.vendor == "postgresql":
        auth = params["USER"] or ""
        if params.get("PASSWORD"):
            auth += f":{params['PASSWORD']}"
        host = params.get("HOST") or "localhost"
        port = params.get("PORT") or 5432
        return f"postgres://{auth}@{host}:{port}/{params['NAME']}"
    raise RuntimeError(f"no worker support for database vendor {connection.vendor}")


@contextmanager
def celery_worker(
    *,
    broker_url: str,
    queues: str = "default,gpu",
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 60,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `celery worker` as a child process until the block ends; yields (worker hostname, process).

    The worker gets the test database and the given broker through the same environment variables production uses.
    """
    hostname = f"test-{uuid.uuid4().hex[:8]}@localhost"
    env = {
        **os.environ,
        "DATABASE_URL": session_database_url(),
        "CELERY_BROKER_URL": broker_url,
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log_path = Path(env.get("VAR_DIR", REPO_ROOT / "var")) / f"worker-{hostname.split('@')[0]}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "celery", "-A", "feedback_app", "worker",
        "-Q", queues, "-n", hostname, "--pool", "solo", "--concurrency", "1",
        "--without-gossip", "--without-mingle", "-l", "info",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout
        while "ready." not in log_path.read_text():
            if process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {process.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker not ready after {ready_timeout}s:\n{log_path.read_text()[-4000:]}"
                )
            time.sleep(0.2)
        yield hostname, process
    finally:
        stop_process(process)
        worker_log = log_path.read_text() if log_path.exists() else ""
        log_path.unlink(missing_ok=True)
        if process.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
            print(worker_log[-4000:])


def stop_process(process: subprocess.Popen, *, timeout: float = 20) -> None:
    """SIGTERM (a Celery worker's warm shutdown, gunicorn's graceful stop), then SIGKILL after `timeout`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(predicate, *, timeout: float = 30, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test alone, on a free loopback port, that the test stops and starts (an outage)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.folder),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self.answers, timeout=10, interval=0.05, message=f"redis-server on port {self.port}")

    def answers(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def queue_length(self, queue: str) -> int:
        import redis

        return redis.Redis.from_url(self.url).llen(queue)


@contextmanager
def private_redis(folder: Path, *, running: bool = True) -> Iterator[PrivateRedis]:
    """A PrivateRedis that this process's Celery app publishes to for the duration of the block."""
    import shutil

    from celery import current_app

    if shutil.which("redis-server") is None:
        import pytest

        pytest.skip("redis-server is not installed")
    server = PrivateRedis(folder)
    if running:
        server.start()
    # core.jobs opens a connection for writing per publish: this is the broker it connects to.
    previous = current_app.conf.broker_write_url
    current_app.conf.broker_write_url = server.url
    try:
        yield server
    finally:
        current_app.conf.broker_write_url = previous
        server.stop()


@contextmanager
def web_server(*, extra_env: dict[str, str] | None = None, ready_timeout: float = 60) -> Iterator[str]:
    """gunicorn serving feedback_app.wsgi with DEBUG=0 on a free port against the test database; yields its URL."""
    import urllib.error
    import urllib.request

    port = free_port()
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "test-" + "k" * 60,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "DATABASE_URL": session_database_url(),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log_path = Path(env.get("VAR_DIR", REPO_ROOT / "var")) / f"web-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "gunicorn", "feedback_app.wsgi:application", "--bind", f"127.0.0.1:{port}",
        "--workers", "1",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"web server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5):
                return True
        except urllib.error.HTTPError:
            return True  # it answers (a 503 only says what /healthz found)
        except OSError:
            return False

    try:
        wait_until(serving, timeout=ready_timeout, interval=0.3, message="the web server")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_path.unlink(missing_ok=True)
