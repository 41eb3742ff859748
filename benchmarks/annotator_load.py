"""Annotator load: C concurrent annotators against the production server (gunicorn, DEBUG=0) on Postgres.

    scripts/test-services.sh .venv/bin/python benchmarks/annotator_load.py
    scripts/test-services.sh .venv/bin/python benchmarks/annotator_load.py --seconds 10 --concurrency 1,8 --json out.json
    scripts/test-services.sh .venv/bin/python benchmarks/annotator_load.py --only-browser --browser-items 60

Each annotator is a distinct user with its own API token and one keep-alive HTTP/1.1 connection, and loops
`POST /api/v1/rankings/next/` → `POST /api/v1/rankings/submit/` (choice a/b) with no think time. Every concurrency
gets a fresh project of `--comparisons` pairwise comparisons (300-character prompt and responses, overlap 1, no
gold) and runs `--seconds` after a short warm-up, or until its queue is empty. A round trip is next + submit.

The server is gunicorn with the repository's gunicorn.conf.py (worker model and size for this machine) in
production mode: DEBUG=0, a SECRET_KEY, persistent database connections. The only production settings relaxed are
the transport ones (no HTTPS redirect, cookies not marked Secure) because the benchmark talks plain HTTP on
loopback. CPU per round trip = CPU time of the gunicorn processes plus every Postgres process over the measured
window (from /proc via psutil; exited children are counted through their parent), divided by the round trips.
Load generator and browser CPU are reported separately and not counted.

Correctness is checked after every run from the client's records and the database: `lost` = submissions the
server acknowledged (201) without a stored ranking, `duplicated` = a (comparison, annotator) ranked twice or a
ranking acknowledged twice, `beyond_overlap` = comparisons with more rankings, or handed to more annotators, than
the overlap. The benchmark exits non-zero when any of them is not 0.

The browser path: Debian's Chromium (Playwright) logged in as an annotator on /annotate/<project>/ presses `1`
(A is better) `--browser-items` times; keypress → next item painted is the time from the keydown event to the
first animation frame after htmx put the next item's workspace into the page.

Prints the table and one JSON object (also written to `--json`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from scratch_db import postgres_scratch  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
TEXT_CHARS = 300
WARMUP_S = 2.0


# --- setup --------------------------------------------------------------------------------------------------


def _server_env(database_url: str, static_root: Path, var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        DJANGO_SETTINGS_MODULE="feedback_app.settings",
        DATABASE_URL=database_url,
        DEBUG="0",
        SECRET_KEY="annotator-load-benchmark-" + "k" * 40,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        # Plain HTTP on loopback: no redirect to HTTPS, cookies not marked Secure. Everything else is production.
        SECURE_SSL_REDIRECT="0",
        SESSION_COOKIE_SECURE="0",
        CSRF_COOKIE_SECURE="0",
        SECURE_HSTS_SECONDS="0",
        STATIC_ROOT=str(static_root),
        VAR_DIR=str(var_dir),
        LOG_LEVEL="WARNING",
    )
    return env


def _text(rng: random.Random, prefix: str) -> str:
    words = (
        "the model answer question helpful correct safe explain step result because however example data "
        "value first second then therefore consider case simple method number reason"
    ).split()
    text = prefix
    while len(text) < TEXT_CHARS:
        text += " " + rng.choice(words)
    return text[:TEXT_CHARS]


def create_project(slug: str, comparisons: int, seed: int) -> int:
    """A pairwise project with `comparisons` comparisons of 300-character texts, overlap 1, no gold."""
    from django.db import transaction

    from labeling.models import Comparison, ComparisonResponse, Project, Prompt, Response

    rng = random.Random(seed)
    with transaction.atomic():
        project = Project(slug=slug, name=slug, mode="pairwise", k=2, overlap=1, gold_ratio=0.0)
        project.full_clean()
        project.save()
        prompts = Prompt.objects.bulk_create(
            Prompt(
                project=project,
                external_id=f"q{i}",
                messages=[{"role": "user", "content": _text(rng, f"Question {i}:")}],
            )
            for i in range(comparisons)
        )
        responses = Response.objects.bulk_create(
            Response(
                prompt=prompt, external_id=f"r{j}", content=_text(rng, f"Answer {j}."), source_name=f"m{j}"
            )
            for prompt in prompts
            for j in range(2)
        )
        items = Comparison.objects.bulk_create(
            Comparison(
                project=project,
                prompt=prompt,
                k=2,
                response_key=f"{responses[2 * i].pk}-{responses[2 * i + 1].pk}",
            )
            for i, prompt in enumerate(prompts)
        )
        ComparisonResponse.objects.bulk_create(
            ComparisonResponse(comparison=comparison, response=responses[2 * i + position], position=position)
            for i, comparison in enumerate(items)
            for position in range(2)
        )
    return project.pk


def create_annotators(count: int) -> list[tuple[int, str]]:
    """(user id, API token) of `count` annotators."""
    from core.services import api_token_get_or_create, user_create_or_update

    out = []
    for i in range(count):
        user, _ = user_create_or_update(username=f"load-{i}", role="annotator", validate=False)
        out.append((user.pk, api_token_get_or_create(user=user).key))
    return out


# --- processes and CPU --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree_cpu_s(root: psutil.Process) -> float:
    """CPU seconds of a process, its live descendants and its exited (reaped) children."""
    total = 0.0
    try:
        times = root.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return total
    for child in children:
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass  # exited between the listing and the read: its time moved to the parent's children_* fields
    return total


def _postmaster() -> psutil.Process:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = psutil.Process(cursor.fetchone()[0])
    return backend.parent()


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def start_server(env: dict[str, str], port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "feedback_app.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
    ]
    server = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("gunicorn did not answer /healthz within 60 s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def gunicorn_config(env: dict[str, str]) -> dict:
    """The worker model and size that gunicorn.conf.py chose for this machine (read the same way gunicorn does)."""
    probe = (
        "import runpy, json; c = runpy.run_path('gunicorn.conf.py');"
        "print(json.dumps({k: c.get(k) for k in ('workers', 'worker_class', 'threads', 'keepalive')}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()[-300:]}


# --- the load generator -------------------------------------------------------------------------------------


class HttpError(Exception):
    pass


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection; just enough protocol for JSON requests to our own server."""

    def __init__(self, port: int, token: str):
        self.port = port
        self.headers = (
            f"Host: 127.0.0.1:{port}\r\nAuthorization: Token {token}\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: dict) -> tuple[int, dict | None]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        body = json.dumps(payload).encode()
        self.writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\n" + self.headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        closing = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                raise HttpError(f"unexpected Transfer-Encoding {value.strip()} on {path}")
            elif name == "connection" and value.strip().lower() == "close":
                closing = True
        data = await self.reader.readexactly(length) if length else b""
        if closing:  # a server without keep-alive (gunicorn's sync worker): reconnect for the next request
            await self.close()
        return status, (json.loads(data) if data else None)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class RunRecord:
    latencies_ms: list[float] = field(default_factory=list)  # measured round trips only
    leased: list[tuple[int, int, int]] = field(default_factory=list)  # (user, comparison, assignment)
    submitted: list[tuple[int, int, int]] = field(default_factory=list)  # (user, comparison, ranking id)
    errors: Counter = field(default_factory=Counter)
    empty: int = 0  # annotators that found the queue empty


async def _annotator(
    client: KeepAliveClient, user_id: int, slug: str, record: RunRecord, measure_from: float, stop_at: float
) -> None:
    rng = random.Random(user_id)
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        status, item = await client.post("/api/v1/rankings/next/", {"project": slug})
        if status == 204:
            record.empty += 1
            return
        if status != 200:
            record.errors[f"next {status}"] += 1
            await asyncio.sleep(0.05)
            continue
        record.leased.append((user_id, item["comparison"], item["assignment"]))
        choice = rng.choice("ab")
        status, ranking = await client.post(
            "/api/v1/rankings/submit/", {"assignment": item["assignment"], "choice": choice}
        )
        if status != 201:
            record.errors[f"submit {status}"] += 1
            continue
        record.submitted.append((user_id, ranking["comparison"], ranking["id"]))
        if started >= measure_from:
            record.latencies_ms.append((time.perf_counter() - started) * 1000)


async def _load(port: int, annotators: list[tuple[int, str]], slug: str, seconds: float, processes) -> dict:
    clients = [KeepAliveClient(port, token) for _, token in annotators]
    record = RunRecord()
    begin = time.perf_counter()
    measure_from = begin + WARMUP_S
    stop_at = measure_from + seconds
    tasks = [
        asyncio.create_task(_annotator(client, uid, slug, record, measure_from, stop_at))
        for client, (uid, _) in zip(clients, annotators, strict=True)
    ]
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu_before = [_tree_cpu_s(process) for process in processes]
    own_before = sum(os.times()[:2])
    busy_before = _machine_busy_s()
    wall_before = time.perf_counter()
    done_before = len(record.latencies_ms)
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - wall_before
    cpu_after = [_tree_cpu_s(process) for process in processes]
    own = sum(os.times()[:2]) - own_before
    busy = _machine_busy_s() - busy_before
    for client in clients:
        await client.close()
    return {
        "record": record,
        "wall_s": wall,
        "cpu_s": [after - before for before, after in zip(cpu_before, cpu_after, strict=True)],
        "client_cpu_s": own,
        "machine_cpu_s": busy,
        "counted_before": done_before,
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def check_correctness(project_id: int, record: RunRecord, overlap: int) -> dict:
    """Lost / duplicated / beyond-overlap counts from the client's records against the database."""
    from django.db.models import Count

    from labeling.models import Ranking

    stored = dict(
        Ranking.objects.filter(comparison__project_id=project_id).values_list("id", "comparison_id")
    )
    acknowledged = Counter(ranking_id for _, _, ranking_id in record.submitted)
    lost = sum(1 for ranking_id in acknowledged if ranking_id not in stored)
    pairs = Counter((user, comparison) for user, comparison, _ in record.submitted)
    duplicated = sum(n - 1 for n in acknowledged.values() if n > 1) + sum(
        n - 1 for n in pairs.values() if n > 1
    )
    duplicated += (
        Ranking.objects.filter(comparison__project_id=project_id)
        .values("comparison_id", "annotator_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    over_in_db = (
        Ranking.objects.filter(comparison__project_id=project_id)
        .values("comparison_id")
        .annotate(n=Count("annotator_id", distinct=True))
        .filter(n__gt=overlap)
        .count()
    )
    holders: dict[int, set[int]] = {}
    for user, comparison, _ in record.leased:
        holders.setdefault(comparison, set()).add(user)
    over_leased = sum(1 for users in holders.values() if len(users) > overlap)
    return {
        "lost": lost,
        "duplicated": duplicated,
        "beyond_overlap": over_in_db + over_leased,
        "stored_rankings": len(stored),
    }


def run_api(
    port: int, concurrency: int, annotators, comparisons: int, seconds: float, processes, seed: int
) -> dict:
    slug = f"load-c{concurrency}"
    project_id = create_project(slug, comparisons, seed)
    result = asyncio.run(_load(port, annotators[:concurrency], slug, seconds, processes))
    record: RunRecord = result["record"]
    measured = len(record.latencies_ms)
    server_cpu = sum(result["cpu_s"])
    checks = check_correctness(project_id, record, overlap=1)
    return {
        "concurrency": concurrency,
        "round_trips": measured,
        "seconds": round(result["wall_s"], 2),
        "round_trips_per_s": round(measured / result["wall_s"], 1),
        "p50_ms": round(_percentile(record.latencies_ms, 0.50), 1),
        "p95_ms": round(_percentile(record.latencies_ms, 0.95), 1),
        "p99_ms": round(_percentile(record.latencies_ms, 0.99), 1),
        "server_cpu_ms_per_round_trip": round(server_cpu * 1000 / max(measured, 1), 2),
        "gunicorn_cpu_ms_per_round_trip": round(result["cpu_s"][0] * 1000 / max(measured, 1), 2),
        "postgres_cpu_ms_per_round_trip": round(result["cpu_s"][1] * 1000 / max(measured, 1), 2),
        "client_cpu_ms_per_round_trip": round(result["client_cpu_s"] * 1000 / max(measured, 1), 2),
        "machine_cpu_s": round(result["machine_cpu_s"], 1),
        "queue_exhausted": record.empty > 0,
        "errors": dict(record.errors),
        "submitted_total": len(record.submitted),
        **checks,
    }


# --- the browser path ---------------------------------------------------------------------------------------

# Installed into the page by the benchmark (not part of the app): the time of each `1` keydown, and of the first
# animation frame after a workspace with a new assignment id appeared in the page. The sample count is mirrored
# into a DOM attribute because Playwright may poll `wait_for_function` in another JavaScript world. The next key
# is pressed once htmx has settled the new item (before that its form is not wired to htmx yet).
_PAGE_PROBE = """() => {
  window.__probe = {pressed: null, samples: []};
  let shown = document.getElementById("workspace").dataset.assignment;
  window.addEventListener("keydown", (e) => { if (e.key === "1") window.__probe.pressed = e.timeStamp; }, true);
  new MutationObserver(() => {
    const ws = document.getElementById("workspace");
    const now = ws ? ws.dataset.assignment : undefined;
    if (now === shown || window.__probe.pressed === null) return;
    shown = now;
    const pressed = window.__probe.pressed;
    window.__probe.pressed = null;
    requestAnimationFrame(() => {
      window.__probe.samples.push(performance.now() - pressed);
      document.documentElement.dataset.probeCount = window.__probe.samples.length;
    });
  }).observe(document.body, {childList: true, subtree: true});
  document.body.addEventListener("htmx:afterSettle", () => {
    const root = document.documentElement;
    root.dataset.probeSettled = Number(root.dataset.probeSettled || 0) + 1;
  });
}"""


def run_browser(port: int, comparisons: int, items: int, seed: int, processes) -> dict:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from playwright.sync_api import sync_playwright

    from core.services import user_create_or_update

    slug = "load-browser"
    project_id = create_project(slug, comparisons, seed)
    user, _ = user_create_or_update(username="load-browser", role="annotator", validate=False)
    client = Client()
    client.force_login(get_user_model().objects.get(pk=user.pk))
    session_key = client.cookies["sessionid"].value
    base = f"http://127.0.0.1:{port}"
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # sync Playwright runs an event loop in this thread
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            )  # fmt: skip
            context = browser.new_context()
            context.add_cookies([{"name": "sessionid", "value": session_key, "url": base}])
            page = context.new_page()
            failed: list[str] = []
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(f"{base}/annotate/{slug}/")
            page.wait_for_selector("#workspace[data-assignment]")
            page.evaluate(_PAGE_PROBE)
            if not page.evaluate("() => typeof window.htmx === 'object'"):
                raise SystemExit(f"htmx did not load on the annotator page: {failed}")
            page.on("console", lambda m: failed.append(f"console {m.text}"))
            for _ in range(5):  # warm-up: connections, templates, the JIT
                _press_and_wait(page)
            page.evaluate(
                "() => { window.__probe.samples = []; document.documentElement.dataset.probeCount = 0; }"
            )
            cpu_before = [_tree_cpu_s(process) for process in processes]
            started = time.perf_counter()
            for _ in range(items):
                _press_and_wait(page)
            wall = time.perf_counter() - started
            cpu = sum(_tree_cpu_s(process) for process in processes) - sum(cpu_before)
            samples = page.evaluate("() => window.__probe.samples")
            browser.close()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    from labeling.models import Ranking

    stored = Ranking.objects.filter(comparison__project_id=project_id, annotator_id=user.pk).count()
    return {
        "items": len(samples),
        "keypress_to_painted_p50_ms": round(_percentile(samples, 0.50), 1),
        "keypress_to_painted_p95_ms": round(_percentile(samples, 0.95), 1),
        "server_cpu_ms_per_item": round(cpu * 1000 / max(len(samples), 1), 2),
        "items_per_s": round(len(samples) / wall, 1),
        "stored_rankings": stored,
        "lost": (items + 5) - stored,
    }


def _press_and_wait(page) -> None:
    count, settled = page.evaluate(
        "() => [window.__probe.samples.length, Number(document.documentElement.dataset.probeSettled || 0)]"
    )
    page.keyboard.press("1")
    page.wait_for_function(
        f"() => Number(document.documentElement.dataset.probeCount || 0) > {count} "
        f"&& Number(document.documentElement.dataset.probeSettled || 0) > {settled}",
        timeout=15_000,
    )


# --- main ---------------------------------------------------------------------------------------------------


def _print_table(report: dict) -> None:
    print(f"\n{report['server']} on {report['hardware']}; load average {report['load_average_before']} before, "
          f"{report['load_average_after']} after")  # fmt: skip
    print("| C | round trips/s | p50 ms | p95 ms | server+Postgres CPU ms / round trip | errors |")
    print("|---|---|---|---|---|---|")
    for run in report["runs"]:
        print(
            f"| {run['concurrency']} | {run['round_trips_per_s']} | {run['p50_ms']} | {run['p95_ms']} "
            f"| {run['server_cpu_ms_per_round_trip']} | {sum(run['errors'].values())} |"
        )
    print(
        f"lost {report['lost']}, duplicated {report['duplicated']}, beyond overlap {report['beyond_overlap']}"
    )
    if report.get("browser"):
        b = report["browser"]
        print(
            f"browser: keypress → next item painted p50 {b['keypress_to_painted_p50_ms']} ms, "
            f"p95 {b['keypress_to_painted_p95_ms']} ms over {b['items']} items"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=40.0, help="measured seconds per concurrency")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument(
        "--comparisons", type=int, default=5000, help="pairwise comparisons per run's project"
    )
    parser.add_argument("--browser-items", type=int, default=200, help="0 skips the browser path")
    parser.add_argument(
        "--only-browser",
        action="store_true",
        help="skip the API runs (--concurrency): the browser path alone",
    )
    parser.add_argument("--json", type=Path, help="also write the JSON report here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    levels = [] if args.only_browser else [int(c) for c in args.concurrency.split(",") if c.strip()]

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit(
            "annotator_load needs Postgres in DATABASE_URL: run it under scripts/test-services.sh"
        )
    scratch_url, drop = postgres_scratch(url, "bench_annotator")
    workdir = Path(tempfile.mkdtemp(prefix="annotator-load-"))
    env = _server_env(scratch_url, workdir / "static", workdir / "var")
    os.environ.update({k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"})
    os.environ["DJANGO_SETTINGS_MODULE"] = "feedback_app.settings"
    os.environ["DB_CONN_MAX_AGE"] = "0"  # this process: setup and checks only
    server = None
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        # Manifest storage (DEBUG=0): the pages and the /healthz page check need it.
        call_command("collectstatic", verbosity=0, interactive=False)
        annotators = create_annotators(max(levels, default=0))
        port = _free_port()
        load_before = os.getloadavg()
        server = start_server(env, port)
        processes = [psutil.Process(server.pid), _postmaster()]
        runs = []
        for concurrency in levels:
            run = run_api(port, concurrency, annotators, args.comparisons, args.seconds, processes, args.seed)
            runs.append(run)
            print(json.dumps(run), flush=True)
        browser = (
            run_browser(port, args.comparisons, args.browser_items, args.seed, processes)
            if args.browser_items
            else None
        )
        load_after = os.getloadavg()
        report = {
            "benchmark": "annotator_load",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "hardware": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{platform.processor() or platform.machine()}",
            "python": platform.python_version(),
            "server": "gunicorn " + json.dumps(gunicorn_config(env)),
            "gunicorn_cmd_args": env.get("GUNICORN_CMD_ARGS", ""),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "seconds_per_run": args.seconds,
            "comparisons_per_run": args.comparisons,
            "runs": runs,
            "browser": browser,
            "lost": sum(r["lost"] for r in runs) + (browser["lost"] if browser else 0),
            "duplicated": sum(r["duplicated"] for r in runs),
            "beyond_overlap": sum(r["beyond_overlap"] for r in runs),
        }
    finally:
        if server is not None:
            stop_server(server)
        from django.db import connections

        connections.close_all()
        drop()
    _print_table(report)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if report["lost"] or report["duplicated"] or report["beyond_overlap"]:
        raise SystemExit("correctness violated: see lost / duplicated / beyond_overlap")


if __name__ == "__main__":
    main()
