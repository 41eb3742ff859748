"""The web image, rebuilt without Docker and run the way compose runs it, in real Chromium.

The image's file set comes from docker/Dockerfile's COPY lines (in order, honouring .dockerignore), installed
non-editable into a fresh venv at the point where the Dockerfile runs `pip install .`; the Dockerfile's own
collectstatic step runs with its own environment. Then, with compose's production environment (DEBUG=0) against the
test Postgres and Redis: `check --deploy`, migrations, gunicorn from the image's CMD and the `worker-default` Celery
worker from compose. Chromium logs in as a real user and loads the pages; any HTTP error, console error (a CSP
violation is one) or script error fails the test. Last, the compose healthcheck must fail once pages fail.

Dependencies come from the shared venv through a .pth line (no editable finder of the project applies there): the
point is that the project's own files in the image are complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.browser import CHROMIUM, chromium_page
from tests.production import (
    DOCKER,
    REPO_ROOT,
    compose_substitute,
    copy_into,
    copy_sources,
    dockerfile_instructions,
    env_assignments,
    exec_form,
)
from tests.workers import stop_process, wait_until

DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_TEST_URL", "")

pytestmark = [
    pytest.mark.slow,  # 30-80 s on 2 busy cores: pip install, collectstatic (compression), migrate, two servers
    pytest.mark.redis,
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(
        not DATABASE_URL.startswith("postgres") or not REDIS_URL,
        reason="needs the Postgres and Redis of scripts/test-services.sh (DATABASE_URL, REDIS_TEST_URL)",
    ),
]

USERNAME, PASSWORD, EMAIL = "smoke-admin", "Smoke-test-pass-8361", "smoke-admin@example.org"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Image:
    """A folder standing for the container's file system: /app is root/app, /data is root/data."""

    root: Path
    venv: Path
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)  # the Dockerfile's ENV
    cmd: list[str] = field(default_factory=list)
    healthcheck: str = ""

    def path(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def remap(self, value: str) -> str:
        """A container path in a value (an argument, an ENV value) as its place under root."""
        for prefix in ("/app", "/data"):
            if value == prefix or value.startswith(prefix + "/"):
                return str(self.path(value))
        return value

    @property
    def app(self) -> Path:
        return self.path(self.workdir)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        relative = Path(sysconfig.get_paths()["purelib"]).relative_to(sys.prefix)
        return self.venv / relative


def _make_venv(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    relative = Path(sysconfig.get_paths()["purelib"]).relative_to(sys.prefix)
    (venv / relative / "shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The image's console scripts of the dependencies, as this venv's interpreter running them.
    for tool in ("gunicorn", "celery"):
        shim = venv / "bin" / tool
        shim.write_text(f'#!/bin/sh\nexec "{venv}/bin/python" -m {tool} "$@"\n')
        shim.chmod(0o755)


def build_image(dockerfile: Path, root: Path) -> Image:
    image = Image(root=root, venv=root / "venv")
    _make_venv(image.venv)
    for instruction in dockerfile_instructions(dockerfile):
        if instruction.keyword == "WORKDIR":
            image.workdir = instruction.arguments
            image.app.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "ENV":
            image.env.update({k: image.remap(v) for k, v in env_assignments(instruction.arguments).items()})
        elif instruction.keyword == "COPY":
            sources, destination = copy_sources(instruction)
            target = destination if destination.startswith("/") else f"{image.workdir}/{destination}"
            copy_into(
                context=REPO_ROOT, sources=sources, destination=image.path(target),
                into_folder=destination.endswith("/") or len(sources) > 1,
            )  # fmt: skip
        elif instruction.keyword == "RUN":
            for step in instruction.arguments.split("&&"):
                _run_build_step(image, step.strip())
        elif instruction.keyword == "CMD":
            image.cmd = exec_form(instruction.arguments)
        elif instruction.keyword == "HEALTHCHECK":
            image.healthcheck = instruction.arguments.split(" CMD ", 1)[1]
    return image


def _run_build_step(image: Image, step: str) -> None:
    """The RUN steps that put the project's files in place; the others (apt, torch, the model wheel) are the
    dependencies, which the shared venv provides."""
    env = {**image.env, "PATH": f"{image.venv}/bin:/usr/bin:/bin", "HOME": str(image.root)}
    if step == "pip install .":
        subprocess.run(
            [str(image.python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "."],
            cwd=image.app, env=env, check=True,
        )  # fmt: skip
    elif "manage.py collectstatic" in step:
        result = subprocess.run(["sh", "-c", step], cwd=image.app, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"`{step}` failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"


@dataclass
class Site:
    image: Image
    env: dict[str, str]
    url: str
    run_id: int
    database_url: str
    gunicorn: subprocess.Popen
    gunicorn_log: Path
    worker_name: str

    def manage(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.image.python), "manage.py", *args], cwd=self.image.app, env=env or self.env,
            capture_output=True, text=True,
        )  # fmt: skip

    def healthcheck(self, command: str) -> subprocess.CompletedProcess:
        port = self.url.rsplit(":", 1)[1]
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        return subprocess.run(["sh", "-c", command], env=self.env, capture_output=True, text=True, timeout=30)


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _production_env(image: Image, database_url: str) -> dict[str, str]:
    """The image's ENV plus compose's app environment, with this machine's Postgres, Redis and folders."""
    variables = {"SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "localhost,127.0.0.1"}
    compose_env = {
        name: compose_substitute(str(value), variables)
        for name, value in _compose()["services"]["web"]["environment"].items()
    }
    return {
        **image.env,
        **{name: image.remap(value) for name, value in compose_env.items()},
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": REDIS_URL,
        "PATH": f"{image.venv}/bin:/usr/bin:/bin",
        "HOME": str(image.root),
        "HOSTNAME": socket.gethostname(),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of its own on the test Postgres, dropped afterwards."""
    import psycopg

    name = f"smoke_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield DATABASE_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    return build_image(DOCKER / "Dockerfile", tmp_path_factory.mktemp("web-image"))


def _start(command: list[str], *, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_for_log(process: subprocess.Popen, log: Path, text: str, timeout: float = 90) -> None:
    def seen() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        return text in log.read_text()

    wait_until(seen, timeout=timeout, message=f"{text!r} in {log.name}")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0, b""  # not answering (yet)


OTHER_PAGES = [
    "/", "/projects/", "/projects/demo/dashboard/", "/projects/demo/review/", "/labeling/import/",
    "/training/launch/", "/training/runs/", "/models/", "/leaderboard/demo/", "/loop/sampling/", "/exports/",
    "/django-admin/login/",
]  # fmt: skip

SETUP = """
from labeling.services.seed import demo_project_seed
from registry.models import ModelVersion
from training.models import StageRun, TrainingRun

project = demo_project_seed(slug="demo").project
base = ModelVersion.objects.create(name="smoke-base", artifact_path="models/smoke-base", sha256="0" * 64)
run = TrainingRun.objects.create(project=project, preset="reward", base_model=base, status="running")
metrics = [{"step": step, "values": {"loss": 1.0 / step}} for step in (1, 2, 3)]
StageRun.objects.create(run=run, position=0, kind="reward", status="running", step=3, total_steps=5, metrics=metrics)
print(run.pk)
"""


@pytest.fixture(scope="module")
def site(image: Image, database_url: str) -> Iterator[Site]:
    env = _production_env(image, database_url)
    for folder in (env["VAR_DIR"], env["ARTIFACT_ROOT"]):
        Path(folder).mkdir(parents=True, exist_ok=True)

    def manage(*args: str) -> str:
        result = subprocess.run(
            [str(image.python), "manage.py", *args], cwd=image.app, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, (
            f"manage.py {' '.join(args)}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
        return result.stdout

    # compose's `migrate` service (its base-model import needs the model wheel, which tests do not load).
    migrate = _compose()["services"]["migrate"]["command"][-1].split("&&")[0].split()
    assert migrate[:3] == ["python", "manage.py", "migrate"], migrate
    manage(*migrate[2:])

    # Served over plain HTTP without a TLS proxy in front: the README's SECURE_SSL_REDIRECT=0.
    # One worker process: 2 shared cores; the number of workers is not under test (gunicorn.conf.py reads it).
    serve_env = {**env, "SECURE_SSL_REDIRECT": "0", "WEB_CONCURRENCY": "1"}
    port = _free_port()
    command = [f"127.0.0.1:{port}" if arg == "0.0.0.0:8000" else arg for arg in image.cmd]
    gunicorn_log = image.root / "gunicorn.log"
    gunicorn = _start(command, cwd=image.app, env=serve_env, log=gunicorn_log)

    worker_command = [image.remap(arg) for arg in _compose()["services"]["worker-default"]["command"]]
    worker_log = image.root / "worker.log"
    worker = _start(worker_command, cwd=image.app, env=env, log=worker_log)
    try:
        # While the servers start: a real user, the demo project and a run to look at.
        manage(
            "create_user", "--username", USERNAME, "--role", "admin", "--password", PASSWORD, "--email", EMAIL
        )
        run_id = int(manage("shell", "-c", SETUP).split()[-1])
        _wait_for_log(gunicorn, gunicorn_log, "Booting worker")
        url = f"http://localhost:{port}"
        wait_until(
            lambda: _get(f"{url}/healthz")[0] == 200, timeout=60, message="gunicorn answering /healthz"
        )
        _wait_for_log(worker, worker_log, "ready.")
        yield Site(
            image=image, env=env, url=url, run_id=run_id, database_url=database_url, gunicorn=gunicorn,
            gunicorn_log=gunicorn_log, worker_name=f"default@{socket.gethostname()}",
        )  # fmt: skip
    finally:
        stop_process(worker)
        stop_process(gunicorn)


def test_installed_distribution_holds_every_local_app(image):
    """Imported from outside /app, every installed app and the settings package come from the installed copy."""
    from django.conf import settings

    local = [app for app in settings.INSTALLED_APPS if (REPO_ROOT / app / "__init__.py").exists()]
    probe = "import importlib, json, sys; print(json.dumps({m: importlib.import_module(m).__file__ for m in sys.argv[1:]}))"
    result = subprocess.run(
        [str(image.python), "-c", probe, "feedback_app", *local],
        cwd=image.root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for module, path in json.loads(result.stdout).items():
        assert Path(path).is_relative_to(image.site_packages), (module, path)
    fixture = image.site_packages / "labeling" / "fixtures" / "demo_seed.jsonl"
    assert fixture.is_file(), "the demo seed file is package data"


def test_collectstatic_wrote_the_manifest_with_the_chartjs_source_map(image):
    static_root = Path(image.env["VAR_DIR"]) / "staticfiles"
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    assert "css/app.css" in manifest and "vendor/chartjs/chart.umd.min.js.map" in manifest


def test_check_deploy_passes_with_the_compose_environment(site):
    result = site.manage("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_worker_consumes_from_redis_and_answers_its_healthcheck(site):
    import psycopg

    healthcheck = _compose()["services"]["worker-default"]["healthcheck"]["test"]
    assert healthcheck[0] == "CMD-SHELL"
    result = site.healthcheck(compose_substitute(healthcheck[1], {}))
    assert result.returncode == 0, result.stdout + result.stderr
    sent = subprocess.run(
        ["celery", "-A", "feedback_app", "call", "core.ping", "--queue", "default"],
        cwd=site.image.app, env=site.env, capture_output=True, text=True,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr

    def heartbeat():
        with psycopg.connect(site.database_url) as conn:
            return conn.execute(
                "SELECT queue FROM core_workerheartbeat WHERE hostname = %s", [site.worker_name]
            ).fetchone()

    assert wait_until(heartbeat, timeout=60, message="the worker's heartbeat row") == ("default",)


def test_pages_load_in_chromium_without_errors(site):
    problems: list[str] = []
    with chromium_page() as page:
        page.set_default_timeout(20_000)
        page.on("console", lambda m: m.type == "error" and problems.append(f"{page.url}: console: {m.text}"))
        page.on("pageerror", lambda error: problems.append(f"{page.url}: script error: {error}"))
        page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed {r.url}: {r.failure}"))

        login = page.goto(f"{site.url}/accounts/login/")
        assert login.status == 200
        assert "script-src 'self'" in login.headers["content-security-policy"]
        # Password reset without a mail server: the console backend writes the message to the web log.
        page.click("text=Forgot your password?")
        page.wait_for_url(f"{site.url}/accounts/password_reset/")
        page.fill("input[name=email]", EMAIL)
        page.click("[type=submit]")
        page.wait_for_url(f"{site.url}/accounts/password_reset/done/")

        page.goto(f"{site.url}/accounts/login/")
        page.fill("#id_username", USERNAME)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{site.url}/")

        annotate = page.goto(f"{site.url}/annotate/demo/")
        assert annotate.status == 200
        assert {"private", "no-store"} <= {
            part.strip() for part in annotate.headers["cache-control"].split(",")
        }
        page.wait_for_selector("#workspace[data-kind]")
        page.wait_for_function("() => window.htmx !== undefined && document.readyState === 'complete'")
        # An htmx POST (CSRF header from the page, secure cookie) swaps in the next item.
        first = page.get_attribute("#workspace", "data-assignment")
        page.click("#skip-panel summary")
        page.click("#skip-form button[type=submit]")
        page.wait_for_selector("#workspace .notice")
        assert page.get_attribute("#workspace", "data-assignment") not in (None, first)

        run = page.goto(f"{site.url}/training/runs/{site.run_id}/")
        assert run.status == 200, site.gunicorn_log.read_text()[-6000:]
        page.wait_for_selector("figure canvas")  # drawn by Chart.js from run_charts.js

        docs = page.goto(f"{site.url}/api/docs/")
        assert docs.status == 200
        page.wait_for_selector(".swagger-ui .info .title")  # Swagger UI ran and loaded the schema

        # The other pages an admin opens, under the same policy (htmx `load` triggers and polling included).
        for path in OTHER_PAGES:
            response = page.goto(f"{site.url}{path}")
            assert response.status == 200, path
            page.wait_for_load_state("networkidle")

        staff_health = page.request.get(f"{site.url}/healthz").json()
        assert staff_health["database"]["detail"] == "postgresql", staff_health

    assert problems == []
    wait_until(
        lambda: f"To: {EMAIL}" in site.gunicorn_log.read_text(), timeout=10, message="the reset e-mail"
    )
    assert f"{site.url}/accounts/reset/" in site.gunicorn_log.read_text()

    status, body = _get(f"{site.url}/healthz")
    assert status == 200
    assert json.loads(body) == {
        "status": "ok", "database": {"ok": True}, "broker": {"ok": True}, "pages": {"ok": True}
    }  # fmt: skip


def test_healthchecks_fail_once_pages_fail(site, image):
    """Last in this module: it breaks the site. Without the static manifest every page is a 500."""
    compose_check = _compose()["services"]["web"]["healthcheck"]["test"]
    compose_command = compose_check[1] if compose_check[0] == "CMD-SHELL" else " ".join(compose_check[1:])
    for command in (compose_command, image.healthcheck):
        result = site.healthcheck(command)
        assert result.returncode == 0, (command, result.stdout + result.stderr)

    manifest = Path(site.env["VAR_DIR"]) / "staticfiles" / "staticfiles.json"
    manifest.rename(manifest.with_suffix(".moved"))
    boots = site.gunicorn_log.read_text().count("Booting worker")
    site.gunicorn.send_signal(signal.SIGHUP)  # new worker processes, which load the (now missing) manifest
    wait_until(
        lambda: site.gunicorn_log.read_text().count("Booting worker") > boots, timeout=60, message="reload"
    )
    wait_until(
        lambda: _get(f"{site.url}/accounts/login/")[0] == 500, timeout=30, message="the login page failing"
    )

    status, body = _get(f"{site.url}/healthz")
    assert status == 503
    assert json.loads(body)["pages"] == {"ok": False}
    for command in (compose_command, image.healthcheck):
        assert site.healthcheck(command).returncode != 0, command
