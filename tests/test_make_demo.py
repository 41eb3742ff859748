"""`make demo` on the zero-setup defaults: reaches a login page, the printed demo users log in, one worker per
queue runs, Ctrl-C stops all."""

import contextlib
import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_until(process: subprocess.Popen, marker: str, timeout: float) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{marker!r} not printed (exit code {process.poll()}):\n{''.join(seen)[-5000:]}")


def _login(base_url: str, username: str, password: str) -> str:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"{base_url}/accounts/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
    request = urllib.request.Request(
        f"{base_url}/accounts/login/", data=form.encode(), headers={"Referer": base_url}
    )
    return opener.open(request, timeout=10).read().decode()


def _wait_for_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def test_make_demo_serves_login_and_demo_users_log_in(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "MAKEFLAGS"}}
    env.update({"VAR_DIR": str(tmp_path / "var"), "PORT": str(port), "BASE_MODEL_FLAGS": "--tiny"})
    process = subprocess.Popen(
        ["make", "--no-print-directory", "demo"], cwd=REPO_ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        output = _read_until(process, "Press Ctrl-C to stop.", timeout=300)
        users = re.findall(r"^\s{2}(\w+)\s+(annotator|admin|researcher)\s+(\S+)$", output, re.M)
        assert {role for _, role, _ in users} == {"annotator", "admin", "researcher"}, output
        base_url = f"http://127.0.0.1:{port}"
        _wait_for_http(f"{base_url}/accounts/login/", timeout=60)
        for username, role, password in users:
            home = _login(base_url, username, password)
            assert f"Welcome, {username}" in home
            assert role in home
        health = urllib.request.urlopen(f"{base_url}/healthz", timeout=10).read().decode()
        assert '"status": "ok"' in health
        # Exports and sampling (queue `default`) must never wait behind a training stage (queue `gpu`).
        commands = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-g", str(process.pid)], capture_output=True, text=True
        ).stdout.splitlines()
        queues = sorted(
            re.search(r" -Q (\S+)", line).group(1) for line in commands if "celery" in line and " -Q " in line
        )
        assert set(queues) == {"default", "gpu"} and "default,gpu" not in queues, commands
    finally:
        # Only make gets SIGINT (a `kill -INT` or an IDE's stop button): make does not pass SIGINT on to its
        # recipe, so the demo script has to notice by itself. Ctrl-C in a terminal signals the whole group,
        # which the script's own trap handles.
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)
        try:
            rest = process.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert "Stopped" in rest
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    # No process of the demo's group (make, web, worker and its beat child) may outlive the shutdown.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        left = subprocess.run(
            ["ps", "-ww", "-o", "pid,args", "-g", str(process.pid)], capture_output=True, text=True
        ).stdout
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"processes left after Ctrl-C:\n{left}")
