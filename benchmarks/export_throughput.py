"""Export throughput: N synthetic rankings in a scratch database, exported as pairwise JSONL.

    .venv/bin/python benchmarks/export_throughput.py                       # 1M rankings, scratch SQLite file
    .venv/bin/python benchmarks/export_throughput.py --rankings 200000
    DATABASE_URL=postgres://u@host:5432/db .venv/bin/python benchmarks/export_throughput.py   # scratch Postgres DB

The data: prompts with 4 responses each, all 6 pairs as comparisons, 2 votes per comparison (a strict preference
each), so N rankings give N pairwise rows with aggregation "all". With Postgres, a scratch database is created
next to the one in DATABASE_URL and dropped at the end. The export runs once per `--workers` count (default 1 and
the machine's cores; more than 1 = parallel export processes over one Postgres snapshot), each in a fresh child
process so that its peak RSS is the export's own; RSS is also sampled while it runs (flat memory = the samples stay
level as rows grow). `machine_cpu_s` is the CPU time of every process of the machine meanwhile, Postgres included.
In the same process a raw reference loop then runs as the baseline (one SQL query + `json.dumps` per pairwise row
to /dev/null): `export_vs_baseline` = reference seconds / export seconds, i.e. how close the export is to it.
Postgres data is generated inside the database (`INSERT … SELECT generate_series`, then `VACUUM ANALYZE`);
`--keep-db` keeps the scratch database and `--reuse-db URL` exports from it again. Prints one JSON object.
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
sys.path.insert(0, str(REPO / "benchmarks"))

from scratch_db import postgres_scratch  # noqa: E402

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


def create_data_postgres(rankings: int, seed: int = 0) -> dict:
    """The same shape of data as `create_data`, generated inside Postgres (INSERT … SELECT generate_series):
    ~10x faster than bulk_create for a million rankings."""
    import random

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction

    from labeling.models import Project

    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    rng = random.Random(seed)
    User = get_user_model()
    users = User.objects.bulk_create(User(username=f"bench-{i}") for i in range(ANNOTATORS))
    project = Project.objects.create(slug="bench", name="Export benchmark", mode="pairwise", k=2, overlap=2)
    comparisons_total = rankings // VOTES_PER_COMPARISON
    prompts_total = -(-comparisons_total // PAIRS_PER_PROMPT)
    params = {
        "project": project.pk,
        "prompts": prompts_total,
        "comparisons": comparisons_total,
        "ptexts": [_text(rng, 30) for _ in range(64)],
        "rtexts": [_text(rng, 70) for _ in range(256)],
        "users": [user.pk for user in users],
        "nusers": len(users),
    }
    # Pair index 0..5 of a prompt's 4 responses: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3).
    pairs = "(VALUES (0,0,1),(1,0,2),(2,0,3),(3,1,2),(4,1,3),(5,2,3)) AS pr(n, a, b)"
    statements = [
        """INSERT INTO labeling_prompt (id, external_id, messages, domain, metadata, created_at, project_id)
        SELECT i + 1, 'p' || i,
               jsonb_build_array(jsonb_build_object('role', 'user',
                   'content', '#' || i || ' ' || (%(ptexts)s::text[])[1 + i %% 64])),
               (ARRAY['math', 'code', 'chat'])[1 + i %% 3], '{}', now(), %(project)s
        FROM generate_series(0, %(prompts)s - 1) AS i""",
        """INSERT INTO labeling_response (id, external_id, content, source_name, generation_params, created_at,
                                          prompt_id)
        SELECT n + 1, 'r' || (n %% 4), (%(rtexts)s::text[])[1 + ((n * 2654435761) %% 4294967296) %% 256],
               'model-' || (n %% 4), '{}', now(), n / 4 + 1
        FROM generate_series(0, %(prompts)s * 4 - 1) AS n""",
        f"""INSERT INTO labeling_comparison (id, external_id, k, response_key, priority, is_gold, status, created_at,
                                            project_id, prompt_id)
        SELECT c + 1, '', 2, ((c / 6) * 4 + pr.a + 1) || '-' || ((c / 6) * 4 + pr.b + 1), 0, false, 'complete',
               now(), %(project)s, c / 6 + 1
        FROM generate_series(0, %(comparisons)s - 1) AS c JOIN {pairs} ON pr.n = c %% 6""",
        f"""INSERT INTO labeling_comparisonresponse (id, position, comparison_id, response_id)
        SELECT c * 2 + p + 1, p, c + 1, (c / 6) * 4 + (CASE WHEN p = 0 THEN pr.a ELSE pr.b END) + 1
        FROM generate_series(0, %(comparisons)s - 1) AS c JOIN {pairs} ON pr.n = c %% 6
        CROSS JOIN generate_series(0, 1) AS p""",
        # Two distinct annotators per comparison; the first response wins 70 %% of the votes.
        f"""CREATE TEMP TABLE bench_votes AS
        SELECT c * 2 + v + 1 AS id, c + 1 AS comparison_id,
               (%(users)s::int[])[1 + ((c * 7) %% %(nusers)s + v * (1 + c %% (%(nusers)s - 1))) %% %(nusers)s]
                   AS annotator_id,
               (c / 6) * 4 + pr.a + 1 AS ra, (c / 6) * 4 + pr.b + 1 AS rb,
               (((c * 2 + v) * 2654435761) %% 4294967296) %% 10 < 7 AS first_wins
        FROM generate_series(0, %(comparisons)s - 1) AS c JOIN {pairs} ON pr.n = c %% 6
        CROSS JOIN generate_series(0, 1) AS v""",
        """INSERT INTO labeling_assignment (id, state, leased_at, leased_until, display_order, skip_reason,
                                            finished_at, annotator_id, comparison_id, project_id)
        SELECT id, 'submitted', now() - interval '30 seconds', now() + interval '600 seconds',
               jsonb_build_array(ra, rb), '', now(), annotator_id, comparison_id, %(project)s
        FROM bench_votes""",
        """INSERT INTO labeling_ranking (id, ranks, both_bad, flags, rationale, seconds_spent, display_order,
                                         created_at, annotator_id, assignment_id, comparison_id)
        SELECT id, jsonb_build_object(ra::text, CASE WHEN first_wins THEN 1 ELSE 2 END,
                                      rb::text, CASE WHEN first_wins THEN 2 ELSE 1 END),
               false, '[]', '', 30.0, jsonb_build_array(ra, rb), now(), annotator_id, id, comparison_id
        FROM bench_votes""",
        "DROP TABLE bench_votes",
    ]
    tables = [
        "labeling_prompt",
        "labeling_response",
        "labeling_comparison",
        "labeling_comparisonresponse",
        "labeling_assignment",
        "labeling_ranking",
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"SELECT count(*) FROM {table}")
            if cursor.fetchone()[0]:
                raise SystemExit(f"{table} is not empty: the generator needs a fresh scratch database")
        for sql in statements:
            cursor.execute(sql, params)
        for table in tables:
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
    with connection.cursor() as cursor:
        # VACUUM sets the hint bits and the visibility map now, so the first measured read does not pay for it.
        cursor.execute("VACUUM ANALYZE")
    return {
        "prompts": prompts_total,
        "responses": prompts_total * RESPONSES_PER_PROMPT,
        "comparisons": comparisons_total,
        "rankings": comparisons_total * VOTES_PER_COMPARISON,
        "method": "postgres INSERT ... SELECT generate_series",
        "seconds": round(time.perf_counter() - started, 1),
    }


_REFERENCE_SQL = """
SELECT r.comparison_id, r.annotator_id, CAST(r.ranks AS text), c.prompt_id, CAST(p.messages AS text), p.domain,
       a.response_id, ra.content, b.response_id, rb.content
FROM labeling_ranking r
JOIN labeling_comparison c ON c.id = r.comparison_id
JOIN labeling_prompt p ON p.id = c.prompt_id
JOIN labeling_comparisonresponse a ON a.comparison_id = c.id AND a.position = 0
JOIN labeling_response ra ON ra.id = a.response_id
JOIN labeling_comparisonresponse b ON b.comparison_id = c.id AND b.position = 1
JOIN labeling_response rb ON rb.id = b.response_id
WHERE c.project_id = %s AND NOT c.is_gold
ORDER BY r.comparison_id, r.annotator_id
"""


def _reference_loop(project) -> dict:
    """The baseline, run in the same process: a raw reference loop, not an export. One plain SQL query over the same
    rankings (server-side cursor; the benchmark's comparisons are all 2-way), then per ranking with a strict
    preference one pairwise row dict -> `json.dumps(sort_keys=True, ensure_ascii=False, separators=(",", ":"))`
    -> written to /dev/null. No filters, aggregation, card statistics or hash: the ratio export / reference says
    how close the real export is to a minimal loop over the same data."""
    from django.db import connection

    from labeling.pseudonyms import annotator_pseudonym

    dumps, loads = json.dumps, json.loads
    pseudonyms: dict[int, str] = {}
    rows = 0
    started = time.perf_counter()
    with open(os.devnull, "w", encoding="utf-8") as sink, connection.chunked_cursor() as cursor:
        cursor.execute(_REFERENCE_SQL, [project.pk])
        while batch := cursor.fetchmany(2000):
            for cid, annotator_id, ranks, prompt_id, messages, domain, a_id, a_text, b_id, b_text in batch:
                ranks = loads(ranks)
                rank_a, rank_b = ranks[str(a_id)], ranks[str(b_id)]
                if rank_a == rank_b:
                    continue
                if rank_a > rank_b:
                    a_id, a_text, b_id, b_text, rank_a, rank_b = b_id, b_text, a_id, a_text, rank_b, rank_a
                annotator = pseudonyms.get(annotator_id)
                if annotator is None:
                    annotator = pseudonyms[annotator_id] = annotator_pseudonym(annotator_id)
                row = {
                    "agreement": None,
                    "annotator": annotator,
                    "chosen": [{"role": "assistant", "content": a_text}],
                    "chosen_id": a_id,
                    "comparison_id": cid,
                    "domain": domain,
                    "margin": float(rank_b - rank_a),
                    "prompt": loads(messages),
                    "prompt_id": prompt_id,
                    "rejected": [{"role": "assistant", "content": b_text}],
                    "rejected_id": b_id,
                    "source": "vote",
                    "votes": 1,
                }
                sink.write(dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
                sink.write("\n")
                rows += 1
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


def _machine_busy_s() -> float:
    """CPU seconds spent by every process of the machine so far (Postgres too): /proc/stat, all but idle/iowait."""
    with open("/proc/stat") as handle:
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(v) for v in handle.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_export(out: Path, aggregation: str, workers: int, baseline: bool = True) -> dict:
    """The measured part (called in a fresh process): `export_write` (pairwise JSONL, `workers` processes) with
    RSS sampling, then the raw reference loop (`_reference_loop`) in the same process, after the export so that
    the export's peak RSS is its own; with aggregation "all" both must give the same number of rows."""
    from exports.filters import PreferenceFilters
    from exports.writers import export_write
    from labeling.models import Project

    samples: list[tuple[int, float]] = []
    state = {"rows": 0, "stop": False}

    def sample() -> None:
        while not state["stop"]:
            samples.append((state["rows"], round(_rss_mb(), 1)))
            time.sleep(0.25)

    project = Project.objects.get(slug="bench")
    filters = PreferenceFilters(aggregation=aggregation)
    rss_start = _rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, cpu, busy = time.perf_counter(), time.process_time(), _machine_busy_s()
    result = export_write(
        project=project,
        format="pairwise",
        file_type="jsonl",
        dest=out,
        filters=filters,
        on_progress=lambda rows: state.__setitem__("rows", rows),
        workers=workers,
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    busy = _machine_busy_s() - busy
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    state["stop"] = True
    sampler.join()
    peak_export = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.unlink(missing_ok=True)
    step = max(1, len(samples) // 8)
    report = {
        "workers": workers,
        "rows": result.rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(result.rows / seconds),
        "process_cpu_s": round(cpu, 2),
        "worker_processes_cpu_s": round(children.ru_utime + children.ru_stime, 2),
        "machine_cpu_s": round(busy, 2),
        "worker_peak_rss_mb": round(children.ru_maxrss / 1024, 1) if workers > 1 else None,
        "bytes": result.size_bytes,
        "content_hash": result.content_hash,
        "rss_start_mb": round(rss_start, 1),
        "peak_rss_mb": round(peak_export, 1),
        "rss_samples_rows_mb": samples[::step] + samples[-1:],
    }
    if baseline:
        base = _reference_loop(project)
        if aggregation == "all" and base["rows"] != result.rows:
            raise SystemExit(f"export and reference loop differ in rows: {base} vs {report}")
        report["baseline_reference_loop"] = base
        report["export_vs_baseline"] = round(base["seconds"] / seconds, 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankings", type=int, default=1_000_000)
    parser.add_argument("--aggregation", choices=["all", "majority"], default="all")
    parser.add_argument("--workdir", type=Path, help="Scratch folder (default: a new temp folder, removed).")
    parser.add_argument(
        "--reuse-db", metavar="DATABASE_URL", help="Export from a database an earlier --keep-db run filled."
    )
    parser.add_argument("--keep-db", action="store_true", help="Keep the scratch database (prints its URL).")
    parser.add_argument(
        "--no-baseline", action="store_true", help="Skip the in-process reference loop (the baseline)."
    )
    parser.add_argument(
        "--workers",
        default=f"1,{min(os.cpu_count() or 1, 8)}",
        help="Comma-separated worker-process counts, one export each (default: 1 and this machine's cores).",
    )
    parser.add_argument("--export-only", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.export_only:
        _django(args.export_only)
        print(
            json.dumps(
                run_export(args.out, args.aggregation, int(args.workers), baseline=not args.no_baseline)
            )
        )
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="export-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VAR_DIR", str(workdir / "var"))
    url = os.environ.get("DATABASE_URL", "")
    drop = None
    if args.reuse_db:
        url = args.reuse_db
    elif url.startswith("postgres"):
        url, drop = postgres_scratch(url, "bench_export")
    else:
        url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    if args.keep_db:
        drop = None
    try:
        _django(url)
        from django.db import connection

        if args.reuse_db:
            data = {"reused": True}
        elif connection.vendor == "postgresql":
            data = create_data_postgres(args.rankings)
        else:
            data = create_data(args.rankings)
        vendor = connection.vendor
        connection.close()
        out = workdir / "pairwise.jsonl"
        exports = []
        for index, workers in enumerate(int(w) for w in args.workers.split(",")):
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
                    "--workers",
                    str(workers),
                    # The reference loop runs once, beside the first export.
                    *(["--no-baseline"] if args.no_baseline or index else []),
                ],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ},
            )
            exports.append(json.loads(child.stdout.strip().splitlines()[-1]))
            out.unlink(missing_ok=True)
        base = exports[0].get("baseline_reference_loop")
        for export in exports[1:]:
            if base:
                export["export_vs_baseline"] = round(base["seconds"] / export["seconds"], 2)
        if len({export["content_hash"] for export in exports}) != 1:
            raise SystemExit(f"exports with different worker counts differ: {exports}")
    finally:
        if drop is not None:
            drop()
    print(
        json.dumps(
            {
                "benchmark": "export_throughput",
                "database": vendor,
                **({"database_url": url} if args.keep_db else {}),
                "aggregation": args.aggregation,
                "created": data,
                "exports": exports,
                "best_rows_per_s": max(export["rows_per_s"] for export in exports),
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
