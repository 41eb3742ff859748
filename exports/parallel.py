"""Parallel JSONL exports on Postgres: several worker processes build the rows of one export, the parent writes them.

Building rows is CPU-bound Python, so one process uses one core. For a big export on Postgres, `export_write` uses
`iter_parallel_blocks` instead, the way `pg_dump --jobs` works:

1. the parent opens a REPEATABLE READ transaction on a connection of its own and exports its snapshot
   (`pg_export_snapshot()`), so that every worker reads exactly the same data;
2. the export's key span (comparison ids; prompt ids for sft and kto, whose rows group by prompt) is cut into
   ranges, and N workers (`manage.py export_worker`, the job as JSON on stdin, `run_worker`) import the
   snapshot and take ranges k, k+N, k+2N, …: each range's JSONL goes to its own file in the export's scratch folder,
   and one JSON line on the worker's stdout says it is done, with its row count and card stats;
3. the parent reads the ranges in order, hands their bytes on (to be hashed and appended to the export file),
   deletes each range file, and merges the stats.

The result is byte-for-byte the sequential export: same rows, same order, same content hash, same card (tested).
A failing worker fails the export with the end of its stderr; the caller's scratch folder is removed either way.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from django.conf import settings
from django.db import connection, connections, transaction

from exports.filters import PreferenceFilters
from exports.selectors import comparison_key_span, iter_preference_blocks
from exports.stats import CardStats
from labeling.models import Project

REPO_ROOT = Path(__file__).resolve().parent.parent
RANGES_PER_WORKER = 16
READ_BYTES = 4 * 1024 * 1024
_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?$")


class ExportWorkerError(RuntimeError):
    """A worker process of a parallel export failed; the message ends with its stderr."""


def parallel_workers(*, requested: int | None) -> int:
    """How many worker processes an export may use here: 1 (sequential) unless the database is Postgres and no
    transaction is open (workers could not see uncommitted rows); `requested` None means the setting."""
    workers = settings.LABELING_EXPORT_WORKERS if requested is None else requested
    if workers < 2 or connection.vendor != "postgresql" or connection.in_atomic_block:
        return 1
    return workers


def key_ranges(low: int, high: int, count: int) -> list[tuple[int, int]]:
    """`count` (or fewer, if the span is short) inclusive ranges of near-equal width covering low..high."""
    span = high - low + 1
    count = max(1, min(count, span))
    bounds = [low + span * i // count for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(count)]


def _worker_database() -> dict[str, Any]:
    params = connection.settings_dict
    return {name: params.get(name) for name in ("NAME", "USER", "PASSWORD", "HOST", "PORT")}


def iter_parallel_blocks(
    *,
    project: Project,
    filters: PreferenceFilters,
    format: str,
    chunk_size: int,
    stats: CardStats,
    workers: int,
    scratch: Path,
) -> Iterator[tuple[bytes, int]]:
    """The export's JSONL as (bytes, rows) blocks, like `iter_preference_blocks`, built by `workers` processes.

    Range files are written under `scratch` (a folder the caller removes). `stats` gets the merged card stats."""
    holder = connections.create_connection("default")
    processes: list[subprocess.Popen] = []
    try:
        holder.set_autocommit(False)
        with holder.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("SELECT pg_export_snapshot()")
            snapshot = cursor.fetchone()[0]
        # After the snapshot: the span may only be wider than what the snapshot sees, never narrower.
        span = comparison_key_span(project=project, filters=filters, format=format)
        if span is None:
            return
        ranges = key_ranges(span.low, span.high, workers * RANGES_PER_WORKER)
        workers = min(workers, len(ranges))
        job = {
            "database": _worker_database(),
            "snapshot": snapshot,
            "project": project.pk,
            "filters": filters.to_dict(),
            "format": format,
            "chunk_size": chunk_size,
            "dir": str(scratch),
        }
        for k in range(workers):
            mine = [[i, *ranges[i]] for i in range(k, len(ranges), workers)]
            processes.append(_start_worker({**job, "ranges": mine}, scratch / f"worker-{k}.log"))
        for i in range(len(ranges)):
            process = processes[i % workers]
            done = _next_message(process, scratch / f"worker-{i % workers}.log")
            if done["range"] != i:
                raise ExportWorkerError(f"worker sent range {done['range']}, expected {i}")
            path = Path(done["path"])
            with open(path, "rb") as part:
                piece = part.read(READ_BYTES)
                while piece:
                    following = part.read(READ_BYTES)
                    yield piece, 0 if following else done["rows"]
                    piece = following
            path.unlink()
            stats.merge(CardStats.from_json(done["stats"]))
        for k, process in enumerate(processes):
            if process.wait() != 0:
                raise ExportWorkerError(_failure(process, scratch / f"worker-{k}.log"))
    finally:
        # Also on an error or an abandoned export: no worker outlives it (their range files go with the scratch).
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
        holder.close()


def _start_worker(job: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "manage.py"), "export_worker"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    process.stdin.write(json.dumps(job).encode())
    process.stdin.close()
    process.stdin = None
    return process


def _next_message(process: subprocess.Popen, log_path: Path) -> dict:
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise ExportWorkerError(_failure(process, log_path))
    return json.loads(line)


def _failure(process: subprocess.Popen, log_path: Path) -> str:
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    return f"export worker exited with status {process.returncode}:\n{tail}"


# --- the worker process -------------------------------------------------------------------------------------------


def run_worker(job: dict, out: TextIO) -> None:
    """Export the job's ranges from the parent's snapshot; one JSON line per finished range on `out`.

    Runs in `manage.py export_worker`, before any query of that process: it first points the default database at
    the parent's (under pytest that is the test database, not DATABASE_URL's)."""
    connection.settings_dict.update({k: v for k, v in job["database"].items() if v is not None})
    if not _SNAPSHOT_ID.match(job["snapshot"]):
        raise ValueError(f"not a snapshot id: {job['snapshot']!r}")
    project = Project.objects.get(pk=job["project"])
    filters = PreferenceFilters.from_dict(job["filters"])
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{job['snapshot']}'")
        for index, low, high in job["ranges"]:
            stats = CardStats()
            path = Path(job["dir"]) / f"range-{index:05d}.jsonl"
            with open(path, "wb") as part:
                for data, _ in iter_preference_blocks(
                    project=project,
                    filters=filters,
                    format=job["format"],
                    chunk_size=job["chunk_size"],
                    stats=stats,
                    key_range=(low, high),
                ):
                    part.write(data)
            out.write(
                json.dumps({"range": index, "path": str(path), "rows": stats.rows, "stats": stats.to_json()})
                + "\n"
            )
            out.flush()
