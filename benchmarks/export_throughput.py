"""Export throughput: N synthetic rankings in a scratch database, exported as pairwise JSONL.

    .venv/bin/python benchmarks/export_throughput.py                       # 1M rankings, scratch SQLite file
    .venv/bin/python benchmarks/export_throughput.py --rankings 200000
    DATABASE_URL=postgres://u@host:5432/db .venv/bin/python benchmarks/export_throughput.py   # scratch Postgres DB

The data: prompts with 4 responses each, all 6 pairs as comparisons, 2 votes per comparison (a strict preference
each), so N rankings give N pairwise rows with aggregation "all". With Postgres, a scratch database is created
next to the one in DATABASE_URL and dropped at the end. The export runs in a fresh child process so that its peak
RSS is the export's own; RSS is also sampled while it runs (flat memory = the samples stay level as rows grow).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESPONSES_PER_PROMPT = 4
PAIRS_PER_PROMPT = 6
VOTES_PER_COMPARISON = 2
ANNOTATORS = 24
BATCH = 20_000


def _django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")
    os.environ.setdefault("DB_CONN_MAX_AGE", "0")
    import django

    django.setup()


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _text(rng, words: int) -> str:
    vocabulary = (
        "the model answer question helpful correct safe explain step result because however example "
        "data value first second then therefore consider case simple method number reason"
    ).split()
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def create_data(rankings: int, seed: int = 0) -> dict:
    """Bulk-insert the synthetic project; returns counts and seconds."""
    import random
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from labeling.models import Assignment, Comparison, ComparisonResponse, Project, Prompt, Ranking, Response

    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    rng = random.Random(seed)
    User = get_user_model()
    if not connection.features.can_return_rows_from_bulk_insert:
        raise SystemExit(
            "the benchmark needs a database that returns ids from bulk inserts (SQLite 3.35+, Postgres)"
        )
    users = User.objects.bulk_create(User(username=f"bench-{i}") for i in range(ANNOTATORS))
    project = Project.objects.create(slug="bench", name="Export benchmark", mode="pairwise", k=2, overlap=2)
    comparisons_total = rankings // VOTES_PER_COMPARISON
    prompts_total = -(-comparisons_total // PAIRS_PER_PROMPT)
    now = timezone.now()
    prompt_texts = [_text(rng, 30) for _ in range(64)]
    response_texts = [_text(rng, 70) for _ in range(256)]
    made = {"prompts": 0, "responses": 0, "comparisons": 0, "rankings": 0}
    step = BATCH // PAIRS_PER_PROMPT
    for first in range(0, prompts_total, step):
        count = min(step, prompts_total - first)
        with transaction.atomic():
            prompts = Prompt.objects.bulk_create(
                Prompt(
                    project=project,
                    external_id=f"p{first + i}",
                    messages=[{"role": "user", "content": f"#{first + i} {prompt_texts[(first + i) % 64]}"}],
                    domain=("math", "code", "chat")[(first + i) % 3],
                )
                for i in range(count)
            )
            responses = Response.objects.bulk_create(
                Response(
                    prompt=prompt,
                    external_id=f"r{j}",
                    content=response_texts[rng.randrange(256)],
                    source_name=f"model-{j}",
                )
                for prompt in prompts
                for j in range(RESPONSES_PER_PROMPT)
            )
            groups = []
            for index, prompt in enumerate(prompts):
                mine = responses[index * RESPONSES_PER_PROMPT : (index + 1) * RESPONSES_PER_PROMPT]
                for a in range(RESPONSES_PER_PROMPT):
                    for b in range(a + 1, RESPONSES_PER_PROMPT):
                        if made["comparisons"] + len(groups) < comparisons_total:
                            groups.append((prompt, mine[a], mine[b]))
            comparisons = Comparison.objects.bulk_create(
                Comparison(
                    project=project,
                    prompt=prompt,
                    k=2,
                    response_key=f"{a.pk}-{b.pk}",
                    status=Comparison.Status.COMPLETE,
                )
                for prompt, a, b in groups
            )
            ComparisonResponse.objects.bulk_create(
                ComparisonResponse(comparison=comparison, response=response, position=position)
                for comparison, (_, a, b) in zip(comparisons, groups, strict=True)
                for position, response in enumerate((a, b))
            )
            assignments = []
            votes = []
            for comparison, (_, a, b) in zip(comparisons, groups, strict=True):
                for annotator in rng.sample(users, VOTES_PER_COMPARISON):
                    assignments.append(
                        Assignment(
                            comparison=comparison,
                            annotator=annotator,
                            project=project,
                            state=Assignment.State.SUBMITTED,
                            leased_at=now - timedelta(seconds=30),
                            leased_until=now + timedelta(seconds=600),
                            display_order=[a.pk, b.pk],
                            finished_at=now,
                        )
                    )
                    first_wins = rng.random() < 0.7
                    votes.append(
                        (
                            comparison,
                            annotator,
                            {str(a.pk): 1 if first_wins else 2, str(b.pk): 2 if first_wins else 1},
                        )
                    )
            assignments = Assignment.objects.bulk_create(assignments)
            Ranking.objects.bulk_create(
                Ranking(
                    comparison=comparison,
                    annotator=annotator,
                    assignment=assignment,
                    ranks=ranks,
                    seconds_spent=30.0,
                    display_order=assignment.display_order,
                )
                for (comparison, annotator, ranks), assignment in zip(votes, assignments, strict=True)
            )
        made["prompts"] += len(prompts)
        made["responses"] += len(responses)
        made["comparisons"] += len(comparisons)
        made["rankings"] += len(votes)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    made["seconds"] = round(time.perf_counter() - started, 1)
    return made


def run_export(out: Path, aggregation: str) -> dict:
    """The measured part (called in a fresh process)."""
    from labeling.models import Project
    from labeling.selectors.preferences import PreferenceFilters
    from labeling.services.exports import export_write

    samples: list[tuple[int, float]] = []
    state = {"rows": 0, "stop": False}

    def sample() -> None:
        while not state["stop"]:
            samples.append((state["rows"], round(_rss_mb(), 1)))
            time.sleep(0.25)

    project = Project.objects.get(slug="bench")
    rss_start = _rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = export_write(
        project=project,
        format="pairwise",
        file_type="jsonl",
        dest=out,
        filters=PreferenceFilters(aggregation=aggregation),
        on_progress=lambda rows: state.__setitem__("rows", rows),
    )
    seconds = time.perf_counter() - started
    state["stop"] = True
    sampler.join()
    step = max(1, len(samples) // 8)
    return {
        "rows": result.rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(result.rows / seconds),
        "bytes": result.size_bytes,
        "content_hash": result.content_hash,
        "rss_start_mb": round(rss_start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_samples_rows_mb": samples[::step] + samples[-1:],
    }


def _postgres_scratch(url: str) -> tuple[str, callable]:
    import psycopg
    from dj_database_url import parse

    params = parse(url)
    name = f"bench_export_{os.getpid()}"
    admin = dict(
        host=params["HOST"] or "localhost",
        port=params["PORT"] or 5432,
        user=params["USER"],
        password=params["PASSWORD"] or None,
        dbname=params["NAME"],
        autocommit=True,
    )
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url.rsplit("/", 1)[0] + "/" + name, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankings", type=int, default=1_000_000)
    parser.add_argument("--aggregation", choices=["all", "majority"], default="all")
    parser.add_argument("--workdir", type=Path, help="Scratch folder (default: a new temp folder, removed).")
    parser.add_argument("--export-only", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.export_only:
        _django(args.export_only)
        print(json.dumps(run_export(args.out, args.aggregation)))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="export-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VAR_DIR", str(workdir / "var"))
    url = os.environ.get("DATABASE_URL", "")
    drop = None
    if url.startswith("postgres"):
        url, drop = _postgres_scratch(url)
    else:
        url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    try:
        _django(url)
        from django.db import connection

        data = create_data(args.rankings)
        vendor = connection.vendor
        connection.close()
        out = workdir / "pairwise.jsonl"
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--export-only",
                url,
                "--out",
                str(out),
                "--aggregation",
                args.aggregation,
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ},
        )
        export = json.loads(child.stdout.strip().splitlines()[-1])
        out.unlink(missing_ok=True)
    finally:
        if drop is not None:
            drop()
    print(
        json.dumps(
            {
                "benchmark": "export_throughput",
                "database": vendor,
                "aggregation": args.aggregation,
                "created": data,
                "export": export,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            indent=1,
        )
    )
    if args.workdir is None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
