"""CPU per annotator round trip (POST /api/v1/rankings/next/ then /submit/), in-process through Django's WSGI
handler: the CPU time of this Python process and of its Postgres backend, without gunicorn, HTTP or a client.

`--path htmx` measures the browser's keypress instead: the annotator page's htmx submit (POST
/annotate/<slug>/items/<id>/submit/ with the session cookie and CSRF token: the submission, the next lease and
the workspace partial), one per round trip.

On a shared machine this is steadier than annotator_load: another process's load slows both sides alike and
what is counted is CPU time, not wall time. With `--against DIR` (a checkout of another commit, e.g. made with
`git archive <ref> | tar -x -C DIR`) both trees are measured alternately, `--rounds` times each, and the
ratio this tree / DIR is printed. Needs Postgres in DATABASE_URL (run it under scripts/test-services.sh):

    scripts/test-services.sh .venv/bin/python benchmarks/hot_path_cpu.py --against /tmp/base
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _environ(path: str, body: bytes, headers: dict, *, method: str = "POST", content_type: str = "") -> dict:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "127.0.0.1",
        **headers,
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def _send(app, environ: dict) -> tuple[str, bytes]:
    got = {}

    def start_response(status, headers, exc_info=None):
        got["status"] = status

    body = b"".join(app(environ, start_response))
    return got["status"], body


def _call(app, path: str, payload: dict, token: str) -> tuple[str, bytes]:
    headers = {"HTTP_AUTHORIZATION": f"Token {token}", "HTTP_ACCEPT": "application/json"}
    return _send(app, _environ(path, json.dumps(payload).encode(), headers, content_type="application/json"))


def _api_round_trip(app, token: str):
    def round_trip() -> None:
        status, body = _call(app, "/api/v1/rankings/next/", {"project": "cpu"}, token)
        assert status.startswith("200"), (status, body[:300])
        assignment = json.loads(body)["assignment"]
        status, body = _call(
            app, "/api/v1/rankings/submit/", {"assignment": assignment, "choice": "a"}, token
        )
        assert status.startswith("201"), (status, body[:300])

    return round_trip


def _htmx_round_trip(app, user_id: int):
    """The keypress: the htmx submit of the item shown, answered with the next item's workspace."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(pk=user_id))
    csrf = "c" * 32  # an unmasked CSRF secret is a valid token: the same in the cookie and the header
    cookies = f"sessionid={client.cookies['sessionid'].value}; csrftoken={csrf}"
    headers = {"HTTP_COOKIE": cookies, "HTTP_X_CSRFTOKEN": csrf, "HTTP_HX_REQUEST": "true"}
    status, page = _send(app, _environ("/annotate/cpu/", b"", {"HTTP_COOKIE": cookies}, method="GET"))
    assert status.startswith("200"), (status, page[:300])
    shown = [page]

    def round_trip() -> None:
        assignment = shown[0].split(b'data-assignment="')[1].split(b'"')[0].decode()
        path = f"/annotate/cpu/items/{assignment}/submit/"
        environ = _environ(path, b"choice=a", headers, content_type="application/x-www-form-urlencoded")
        status, shown[0] = _send(app, environ)
        assert status.startswith("200") and b"Saved." in shown[0], (status, shown[0][:300])

    return round_trip


def _cpu_per_round_trip(round_trip, backend, round_trips: int) -> dict:
    pg0, py0, wall0 = backend.cpu_times(), time.process_time(), time.perf_counter()
    for _ in range(round_trips):
        round_trip()
    pg1, py1, wall1 = backend.cpu_times(), time.process_time(), time.perf_counter()
    per = 1000 / round_trips
    return {
        "python_ms": (py1 - py0) * per,
        "postgres_ms": (pg1.user + pg1.system - pg0.user - pg0.system) * per,
        "wall_ms": (wall1 - wall0) * per,
    }


def worker(round_trips: int, warmup: int, path: str, functions_blocks: int = 0) -> dict:
    """Measure in this process (cwd = the tree measured); prints one JSON line. With `functions_blocks`, the
    round trips are split into that many blocks, alternately with DB_HOT_PATH_FUNCTIONS on and off (the Postgres
    functions for the lease and the submission, or the Python transactions), in this one process."""
    sys.path.insert(0, str(Path.cwd()))
    sys.path.insert(0, str(Path.cwd() / "benchmarks"))
    from annotator_load import _server_env, create_annotators, create_project
    from scratch_db import postgres_scratch

    scratch_url, drop = postgres_scratch(os.environ["DATABASE_URL"], "bench_hot_path")
    workdir = Path(tempfile.mkdtemp(prefix="hot-path-cpu-"))
    # The benchmark server's environment (production settings, DEBUG=0), with persistent connections as
    # gunicorn's threads keep theirs.
    os.environ.update(_server_env(scratch_url, workdir / "static", workdir / "var"), DB_CONN_MAX_AGE="600")
    try:
        import django
        import psutil

        django.setup()
        from django.core.handlers.wsgi import WSGIHandler
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0, interactive=False)
        create_project("cpu", round_trips + 2 * warmup + 10, seed=0)
        [(user_id, token)] = create_annotators(1)
        if path == "htmx":
            call_command("collectstatic", verbosity=0, interactive=False)  # the page's manifest (DEBUG=0)
        connection.close()
        app = WSGIHandler()
        round_trip = _htmx_round_trip(app, user_id) if path == "htmx" else _api_round_trip(app, token)

        from django.conf import settings

        for on in (True, False) if functions_blocks else (None,):
            if on is not None:
                settings.DB_HOT_PATH_FUNCTIONS = on
            for _ in range(warmup):
                round_trip()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = psutil.Process(cursor.fetchone()[0])
        if functions_blocks:
            blocks: dict[str, list[dict]] = {"functions": [], "transactions": []}
            for block in range(functions_blocks):
                settings.DB_HOT_PATH_FUNCTIONS = block % 2 == 0
                side = "functions" if block % 2 == 0 else "transactions"
                blocks[side].append(_cpu_per_round_trip(round_trip, backend, round_trips // functions_blocks))
            result = {
                side: {key: statistics.median(b[key] for b in runs) for key in runs[0]}
                for side, runs in blocks.items()
            }
        else:
            result = _cpu_per_round_trip(round_trip, backend, round_trips)
        with connection.cursor() as cursor:  # the same backend served every request (persistent connection)
            cursor.execute("SELECT pg_backend_pid()")
            assert cursor.fetchone()[0] == backend.pid
        connection.close()
    finally:
        from django.db import connections

        connections.close_all()
        drop()
    print(json.dumps(result), flush=True)
    return result


def _measure(tree: Path, round_trips: int, warmup: int, path: str) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "hot_path_cpu.py"),
            "--worker",
            f"--round-trips={round_trips}",
            f"--warmup={warmup}",
            f"--path={path}",
        ],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--round-trips", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements of each tree")
    parser.add_argument("--against", type=Path, help="another checkout to compare with (the 'before')")
    parser.add_argument(
        "--path", choices=["api", "htmx"], default="api", help="the API's next + submit, or the htmx submit"
    )
    parser.add_argument(
        "--functions-blocks",
        type=int,
        default=0,
        help="in one process: this many blocks of the round trips, alternately with the Postgres functions "
        "(DB_HOT_PATH_FUNCTIONS) on and off; prints the median of each side",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        raise SystemExit("hot_path_cpu needs Postgres in DATABASE_URL: run it under scripts/test-services.sh")
    if args.worker or args.functions_blocks:
        worker(args.round_trips, args.warmup, args.path, args.functions_blocks)
        return
    trees = {"this tree": HERE.parent} | ({"against": args.against.resolve()} if args.against else {})
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            result = _measure(tree, args.round_trips, args.warmup, args.path)
            results[name].append(result)
            print(f"{name:9}  " + "  ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    for name, median in medians.items():
        total = median["python_ms"] + median["postgres_ms"]
        print(
            f"median {name}: python {median['python_ms']:.2f} ms + postgres {median['postgres_ms']:.2f} ms "
            f"= {total:.2f} ms CPU per round trip (wall {median['wall_ms']:.2f} ms)"
        )
    if args.against:
        now, before = medians["this tree"], medians["against"]
        for key in ("python_ms", "postgres_ms"):
            print(f"ratio this tree / against, {key}: {now[key] / before[key]:.2f}")
        total_now = now["python_ms"] + now["postgres_ms"]
        total_before = before["python_ms"] + before["postgres_ms"]
        print(f"ratio this tree / against, CPU: {total_now / total_before:.2f}")


if __name__ == "__main__":
    main()
