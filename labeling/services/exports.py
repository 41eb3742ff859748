"""Writing preference exports: JSONL, Parquet and Hugging Face `datasets` directories, each with a dataset card.

- `export_write(...)` streams `iter_preference_rows` into a file (or directory) at `dest`, atomically: everything is
  written under a temporary name beside it and renamed into place only when complete. It returns an
  `ExportResult` (rows, content hash, bytes, card stats). Used by the Celery task, `manage.py export_preferences`
  and the benchmark.
- `export_create(...)` records an `Export` for a researcher or admin and enqueues `labeling.tasks.export_run` on the
  `default` queue when the transaction commits; `export_run(export_id=...)` does the work and keeps `status`,
  `rows` and `progress` up to date.

The content hash is the selector's `content_hash` of the rows (sha256 over their canonical JSON lines), the same
for every file type; for a JSONL export it is also the sha256 of the file, whose lines are exactly those.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.jobs import job_send
from core.roles import Role
from core.selectors import user_has_role
from labeling.jobs import EXPORT_JOB
from labeling.models import Export, Project, Prompt, Ranking, Response
from labeling.selectors.preferences import (
    FORMATS,
    RECORD_CODECS,
    CardStats,
    ContentHasher,
    PreferenceFilters,
    RecordCodec,
    comparison_key_span,
    iter_preference_blocks,
    iter_preference_records,
    preference_counts,
)
from labeling.services.export_workers import iter_parallel_blocks, parallel_workers

FILE_TYPES: tuple[str, ...] = ("jsonl", "parquet", "hf")
BATCH_ROWS = 20_000  # rows per Parquet row group / Arrow record batch
PROGRESS_EVERY_S = 1.0

_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_IDS = pa.list_(pa.int64())
_COMMON = [("domain", pa.string()), ("prompt_id", pa.int64())]
_JUDGEMENT = [
    ("comparison_id", pa.int64()),
    ("source", pa.string()),
    ("annotator", pa.string()),
    ("votes", pa.int64()),
    ("agreement", pa.float64()),
]
SCHEMAS: dict[str, pa.Schema] = {
    "pairwise": pa.schema(
        [
            ("prompt", _MESSAGES),
            ("chosen", _MESSAGES),
            ("rejected", _MESSAGES),
            ("margin", pa.float64()),
            ("chosen_id", pa.int64()),
            ("rejected_id", pa.int64()),
            *_COMMON,
            *_JUDGEMENT,
        ]
    ),
    "ranking": pa.schema(
        [
            ("prompt", _MESSAGES),
            ("responses", pa.list_(pa.string())),
            ("response_ids", _IDS),
            ("ranks", _IDS),
            *_COMMON,
            *_JUDGEMENT,
        ]
    ),
    "sft": pa.schema(
        [
            ("messages", _MESSAGES),
            ("response_id", pa.int64()),
            ("comparison_ids", _IDS),
            ("net_wins", pa.int64()),
            *_COMMON,
        ]
    ),
    "kto": pa.schema(
        [
            ("prompt", _MESSAGES),
            ("completion", _MESSAGES),
            ("label", pa.bool_()),
            ("response_id", pa.int64()),
            ("comparison_ids", _IDS),
            ("net_wins", pa.int64()),
            *_COMMON,
        ]
    ),
    "raw": pa.schema(
        [
            ("ranking_id", pa.int64()),
            ("annotator", pa.string()),
            ("prompt", _MESSAGES),
            ("responses", pa.list_(pa.string())),
            ("response_ids", _IDS),
            ("ranks", _IDS),
            ("display_order", _IDS),
            ("both_bad", pa.bool_()),
            ("flags", pa.list_(pa.string())),
            ("rationale", pa.string()),
            ("seconds_spent", pa.float64()),
            ("created_at", pa.string()),
            ("is_gold", pa.bool_()),
            ("expected_ranks", _IDS),
            ("adjudicated_ranks", _IDS),
            ("comparison_id", pa.int64()),
            ("agreement", pa.float64()),
            *_COMMON,
        ]
    ),
}


def file_type_for_path(path: Path | str) -> str:
    """jsonl / parquet by suffix; anything else (a directory) is a Hugging Face `datasets` directory."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix:
        raise ValidationError(
            {
                "out": f"Unknown file type {suffix!r}: use .jsonl, .parquet or a directory (Hugging Face datasets)."
            }
        )
    return "hf"


# --- statistics for the dataset card -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    path: Path
    file_type: str
    rows: int
    content_hash: str
    size_bytes: int
    stats: dict[str, Any]


# --- writers -------------------------------------------------------------------------------------------------


class _Sink:
    """Collects card stats and the content hash of what is written, and reports progress about once a second."""

    def __init__(self, codec: RecordCodec, on_progress: Callable[[int], None] | None):
        self.codec = codec
        self.hasher = ContentHasher()
        self.stats = CardStats()
        self.on_progress = on_progress
        self._last_report = time.monotonic()

    def progress(self) -> None:
        if self.on_progress is not None:
            now = time.monotonic()
            if now - self._last_report >= PROGRESS_EVERY_S:
                self._last_report = now
                self.on_progress(self.stats.rows)

    def tables(self, records: Iterable[Any], schema: pa.Schema) -> Iterator[pa.Table]:
        """Arrow tables of up to BATCH_ROWS rows (at least one, possibly empty, so the schema is always written)."""
        to_row, to_line, meta, add = self.codec.to_row, self.codec.to_line, self.codec.meta, self.stats.add
        rows: list[dict] = []
        lines: list[str] = []
        wrote = False
        for record in records:
            rows.append(to_row(record))
            lines.append(to_line(record))
            add(meta(record))
            if len(lines) >= 1000:
                self.hasher.update_lines(lines)
                self.progress()
                lines = []
            if len(rows) >= BATCH_ROWS:
                yield pa.Table.from_pylist(rows, schema=schema)
                wrote = True
                rows = []
        self.hasher.update_lines(lines)
        if rows or not wrote:
            yield pa.Table.from_pylist(rows, schema=schema)


class _HashingWriter:
    """Hashes and writes byte blocks on a background thread, so that both overlap with building the next block
    (sha256 and file writes release the GIL for large buffers). An error in the thread is raised by the next
    `put` or by `close`; the thread then drains the queue so that the producer never blocks."""

    def __init__(self, out, hasher: ContentHasher, depth: int = 4):
        self._out, self._hasher = out, hasher
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="export-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._hasher.update_block(*block)
                    self._out.write(block[0])
                except BaseException as exc:  # noqa: BLE001 - handed to the producer thread
                    self._error = exc

    def put(self, data: bytes, rows: int) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((data, rows))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _write_jsonl(blocks: Iterable[tuple[bytes, int]], target: Path, sink: _Sink) -> None:
    with open(target, "wb") as out:
        writer = _HashingWriter(out, sink.hasher)
        try:
            for data, rows in blocks:
                writer.put(data, rows)
                sink.progress()
        finally:
            writer.close()


def _write_parquet(records: Iterable[Any], target: Path, sink: _Sink, schema: pa.Schema) -> None:
    import pyarrow.parquet as pq

    with pq.ParquetWriter(target, schema, compression="zstd") as writer:
        for table in sink.tables(records, schema):
            writer.write_table(table)


def _write_hf(records: Iterable[Any], target: Path, sink: _Sink, schema: pa.Schema, scratch: Path) -> None:
    """Arrow IPC stream (what `datasets` memory-maps) first, then `save_to_disk` into `target`."""
    from datasets import Dataset

    arrow_path = scratch / "rows.arrow"
    with pa.OSFile(str(arrow_path), "wb") as sink_file, pa.ipc.new_stream(sink_file, schema) as writer:
        for table in sink.tables(records, schema):
            writer.write_table(table)
    dataset = Dataset.from_file(str(arrow_path))
    dataset.save_to_disk(str(target))
    del dataset


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _replace(tmp: Path, dest: Path) -> None:
    """Move `tmp` to `dest`; a directory already at `dest` is moved aside first and removed afterwards."""
    if dest.is_dir() and not dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def dataset_card(
    *,
    project: Project,
    format: str,  # noqa: A002
    file_type: str,
    filters: PreferenceFilters,
    result_rows: int,
    content_hash: str,
    stats: dict[str, Any],
    counts: dict[str, int] | None,
    created_at,
    data_file: str,
) -> str:
    """README.md for an export: YAML front matter (Hugging Face card metadata) and what the data is."""
    loader = {
        "jsonl": f'load_dataset("json", data_files="{data_file}", split="train")',
        "parquet": f'load_dataset("parquet", data_files="{data_file}", split="train")',
        "hf": f'load_from_disk("{data_file}")',
    }[file_type]
    trl = {
        "pairwise": "`DPOTrainer`, `RewardTrainer` (conversational preference; `margin` is the rank distance)",
        "ranking": "k-way rankings with ties (`ranks`: 1 is best, equal ranks are ties)",
        "sft": "`SFTTrainer` (conversational `messages`)",
        "kto": "`KTOTrainer` (unpaired preference: `prompt`, `completion`, `label`)",
        "raw": "analysis: every ranking with a pseudonymised annotator id, timings and flags",
    }[format]
    tags = {"pairwise": "dpo", "ranking": "ranking", "sft": "sft", "kto": "kto", "raw": "annotations"}[format]
    agreement = stats.get("mean_agreement")
    lines = [
        "---",
        "tags:",
        "- rlhf",
        "- preference",
        f"- {tags}",
        f"size_categories: {_size_category(result_rows)}",
        "---",
        "",
        f"# {project.name}: {format} preferences",
        "",
        f"Exported from project `{project.slug}` on {created_at.isoformat()} as {file_type}. Use it with {trl}:",
        "",
        "```python",
        f"from datasets import {'load_from_disk' if file_type == 'hf' else 'load_dataset'}",
        f"dataset = {loader}",
        "```",
        "",
        "## Contents",
        "",
        "| | |",
        "|---|---|",
        f"| rows | {result_rows} |",
        f"| comparisons (row groups) | {stats.get('comparisons', 0)} |",
        f"| content hash (sha256) | `{content_hash}` |",
        f"| mean pairwise agreement of exported comparisons | {'n/a' if agreement is None else agreement} "
        f"(over {stats.get('comparisons_with_agreement', 0)} comparisons with 2+ votes) |",
    ]
    if counts:
        lines.append(
            f"| eligible comparisons / adjudicated / votes / annotators | {counts['comparisons']} / "
            f"{counts['adjudicated']} / {counts['votes']} / {counts['annotators']} |"
        )
    if stats.get("sources"):
        lines.append(
            "| judgements by source | "
            + ", ".join(f"{name}: {n}" for name, n in stats["sources"].items())
            + " |"
        )
    if stats.get("labels"):
        lines.append("| labels | " + ", ".join(f"{name}: {n}" for name, n in stats["labels"].items()) + " |")
    if stats.get("domains"):
        lines.append(
            "| rows by domain (top 20) | "
            + ", ".join(f"{name}: {n}" for name, n in stats["domains"].items())
            + " |"
        )
    lines += [
        "",
        "## Filters",
        "",
        "```json",
        json.dumps(filters.to_dict(), indent=2, sort_keys=True),
        "```",
        "",
        "Adjudicated rankings replace the votes of their comparison; ties give no pair; gold comparisons are left out "
        "(except in `raw`). `majority` is the consensus by mean rank (for two responses, the majority vote); `all` "
        "keeps every vote. Annotator ids are keyed hashes (HMAC-SHA256 with the server's secret key). The content "
        "hash is sha256 over the rows' canonical JSON lines (sorted keys, no spaces): the same filters over the same "
        "data give the same hash, whatever the file type.",
        "",
    ]
    return "\n".join(lines)


def _size_category(rows: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if rows < limit:
            return name
    return "1M<n<10M" if rows < 10_000_000 else "n>10M"


def export_estimate(
    *,
    project: Project,
    format: str,
    filters: PreferenceFilters,
    counts: dict[str, int] | None = None,  # noqa: A002
) -> int:
    """An upper bound of the rows (for progress bars): exact for raw, from `preference_counts` otherwise."""
    if format == "raw":
        return Ranking.objects.filter(comparison__project=project).count()
    if format == "sft":
        return Prompt.objects.filter(project=project).count()
    if format == "kto":
        return Response.objects.filter(prompt__project=project).count()
    counts = counts or preference_counts(project=project, filters=filters)
    if format == "pairwise":
        return counts["max_pairs"]
    if filters.aggregation == "all":
        return counts["votes"] + counts["adjudicated"]
    return counts["comparisons"]


def _export_workers(
    *, project: Project, filters: PreferenceFilters, format: str, requested: int | None
) -> int:  # noqa: A002
    """Worker processes for a JSONL export: `requested` as given; by default the setting, for big exports only."""
    workers = parallel_workers(requested=requested)
    if workers > 1 and requested is None:
        span = comparison_key_span(project=project, filters=filters, format=format)
        if span is None or span.comparisons < settings.LABELING_EXPORT_PARALLEL_MIN_COMPARISONS:
            return 1
    return workers


def export_write(
    *,
    project: Project,
    format: str,  # noqa: A002
    file_type: str,
    dest: Path,
    filters: PreferenceFilters | None = None,
    card_path: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    chunk_size: int = 2000,
    counts: dict[str, int] | None = None,
    workers: int | None = None,
) -> ExportResult:
    """Write the export to `dest` (a file, or a directory for "hf") and its dataset card, both atomically.

    The card goes to `card_path`, by default `README.md` inside an hf directory and `<dest>.README.md` beside a
    file. `on_progress(rows)` is called about once a second. `counts` (from `preference_counts`, which callers
    that show progress have anyway) go into the card when given. A JSONL export on Postgres is built by `workers`
    processes (`export_workers`; None: `LABELING_EXPORT_WORKERS` when it has enough comparisons), same bytes.
    """
    filters = filters or PreferenceFilters()
    if format not in FORMATS:
        raise ValidationError({"format": f"Format is one of {', '.join(FORMATS)}."})
    if file_type not in FILE_TYPES:
        raise ValidationError({"file_type": f"File type is one of {', '.join(FILE_TYPES)}."})
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if card_path is None:
        card_path = dest / "README.md" if file_type == "hf" else dest.with_name(dest.name + ".README.md")
    started = timezone.now()
    sink = _Sink(RECORD_CODECS[format], on_progress)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tmp = scratch / "out"
        if file_type == "jsonl":
            workers = _export_workers(project=project, filters=filters, format=format, requested=workers)
            if workers > 1:
                blocks = iter_parallel_blocks(
                    project=project,
                    filters=filters,
                    format=format,
                    chunk_size=chunk_size,
                    stats=sink.stats,
                    workers=workers,
                    scratch=scratch,
                )
            else:
                blocks = iter_preference_blocks(
                    project=project, filters=filters, format=format, chunk_size=chunk_size, stats=sink.stats
                )
            _write_jsonl(blocks, tmp, sink)
        else:
            records = iter_preference_records(
                project=project, filters=filters, format=format, chunk_size=chunk_size
            )
            if file_type == "parquet":
                _write_parquet(records, tmp, sink, SCHEMAS[format])
            else:
                _write_hf(records, tmp, sink, SCHEMAS[format], scratch)
        stats = sink.stats.as_dict()
        card = dataset_card(
            project=project,
            format=format,
            file_type=file_type,
            filters=filters,
            result_rows=sink.stats.rows,
            content_hash=sink.hasher.hexdigest(),
            stats=stats,
            counts=counts,
            created_at=started,
            data_file=dest.name,
        )
        card_tmp = scratch / "card.md"
        if file_type == "hf":
            card_tmp = tmp / "README.md" if card_path == dest / "README.md" else card_tmp
        card_tmp.write_text(card, encoding="utf-8")
        size = _size(tmp)
        _replace(tmp, dest)
        if card_tmp.exists() and card_tmp.parent == scratch:
            card_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(card_tmp, card_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if on_progress is not None:
        on_progress(sink.stats.rows)
    return ExportResult(
        path=dest,
        file_type=file_type,
        rows=sink.stats.rows,
        content_hash=sink.hasher.hexdigest(),
        size_bytes=size,
        stats={**stats, "counts": counts or {}},
    )


# --- the Export model's life cycle ---------------------------------------------------------------------------


def user_can_export(*, user) -> bool:
    return user_has_role(user=user, role=Role.RESEARCHER) or user_has_role(user=user, role=Role.ADMIN)


@transaction.atomic
def export_create(
    *,
    project: Project,
    format: str,  # noqa: A002
    file_type: str,
    filters: PreferenceFilters | dict | None = None,
    created_by,
    enqueue: bool = True,
) -> Export:
    """Record an export for a researcher or admin and run it on the `default` queue after the commit.

    On a broker outage the export is saved and BrokerUnavailable is raised after the commit; it starts once the
    broker is back (core.jobs).
    """
    if not user_can_export(user=created_by):
        raise PermissionDenied("Only researchers and admins export datasets.")
    if not isinstance(filters, PreferenceFilters):
        filters = PreferenceFilters.from_dict(filters)
    export = Export(
        project=project, format=format, file_type=file_type, filters=filters.to_dict(), created_by=created_by
    )
    export.full_clean()
    export.save()
    if enqueue:
        transaction.on_commit(lambda: export_enqueue(export=export))
    return export


def export_enqueue(*, export: Export, quiet: bool = False) -> None:
    job_send(kind=EXPORT_JOB, pk=export.pk, quiet=quiet)


def export_cancel(*, export: Export) -> Export:
    """Cancel a queued or running export. A queued one never starts; a running one stops at its next progress
    report (about once a second) and its files are removed. Retry runs it again."""
    cancelled = Export.objects.filter(
        pk=export.pk, status__in=[Export.Status.QUEUED, Export.Status.RUNNING]
    ).update(status=Export.Status.CANCELLED, finished_at=timezone.now())
    export.refresh_from_db()
    if not cancelled:
        raise ValidationError(
            {"status": [f"Only a queued or running export can be cancelled; this one is {export.status}."]}
        )
    return export


def export_retry(*, export: Export) -> Export:
    """Run a failed or cancelled export again from the start, or send a queued one again now."""
    with transaction.atomic():
        export = Export.objects.select_for_update().get(pk=export.pk)
        if export.status not in (Export.Status.FAILED, Export.Status.CANCELLED, Export.Status.QUEUED):
            raise ValidationError(
                {
                    "status": [
                        f"Only a failed, cancelled or queued export can be retried; this one is {export.status}."
                    ]
                }
            )
        export.status = Export.Status.QUEUED
        export.rows, export.progress, export.size_bytes = 0, 0.0, 0
        export.path = export.content_hash = export.error = ""
        export.stats = {}
        export.started_at = export.finished_at = export.enqueued_at = None
        export.full_clean()
        export.save()
        transaction.on_commit(lambda: export_enqueue(export=export))
    return export


def export_relative_dir(export: Export) -> str:
    stamp = export.created_at.strftime("%Y%m%dT%H%M%S")
    return f"exports/{export.project.slug}/{stamp}-{export.pk}-{export.format}"


def export_data_name(export: Export) -> str:
    return {"jsonl": f"{export.format}.jsonl", "parquet": f"{export.format}.parquet", "hf": "dataset"}[
        export.file_type
    ]


class ExportCancelled(Exception):
    pass


def export_run(*, export_id: int, task_id: str = "") -> Export:
    """Write a queued export's files and record the outcome.

    Idempotent: the row is claimed atomically, so a duplicate message for an export that is running, done, failed
    or cancelled does nothing; the export's own message coming back (its worker died half-way) writes it again.
    """
    claim = task_id or f"local-{uuid.uuid4().hex}"
    claimable = Q(status=Export.Status.QUEUED)
    if task_id:
        claimable |= Q(status=Export.Status.RUNNING, celery_task_id=task_id)
    claimed = Export.objects.filter(claimable, pk=export_id).update(
        status=Export.Status.RUNNING, started_at=timezone.now(), progress=0.0, rows=0, error="",
        celery_task_id=claim,
    )  # fmt: skip
    export = Export.objects.select_related("project").get(pk=export_id)
    if not claimed:
        return export
    ours = Export.objects.filter(pk=export.pk, status=Export.Status.RUNNING, celery_task_id=claim)
    filters = PreferenceFilters.from_dict(export.filters)
    counts = preference_counts(project=export.project, filters=filters)
    estimate = max(
        1, export_estimate(project=export.project, format=export.format, filters=filters, counts=counts)
    )

    def on_progress(rows: int) -> None:
        if not ours.update(rows=rows, progress=min(0.99, rows / estimate)):
            raise ExportCancelled  # cancelled meanwhile: stop writing

    relative = export_relative_dir(export)
    folder = Path(settings.ARTIFACT_ROOT) / relative
    data_name = export_data_name(export)
    try:
        result = export_write(
            project=export.project,
            format=export.format,
            file_type=export.file_type,
            filters=filters,
            dest=folder / data_name,
            card_path=folder / "README.md",
            on_progress=on_progress,
            counts=counts,
        )
    except ExportCancelled:
        shutil.rmtree(folder, ignore_errors=True)
        export.refresh_from_db()
        return export
    except Exception as exc:
        ours.update(
            status=Export.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            finished_at=timezone.now(),
        )
        raise
    finished = ours.update(
        status=Export.Status.DONE,
        rows=result.rows,
        progress=1.0,
        path=f"{relative}/{data_name}",
        size_bytes=result.size_bytes,
        content_hash=result.content_hash,
        stats=result.stats,
        finished_at=timezone.now(),
    )
    if not finished:  # cancelled after the last progress report: no files for a cancelled export
        shutil.rmtree(folder, ignore_errors=True)
    export.refresh_from_db()
    return export


def export_file_path(*, export: Export) -> Path:
    """Absolute path of a finished export's data (file or directory), checked to stay inside ARTIFACT_ROOT."""
    if export.status != Export.Status.DONE or not export.path:
        raise ValidationError({"status": "The export is not finished."})
    root = Path(settings.ARTIFACT_ROOT).resolve()
    path = (root / export.path).resolve()
    if root not in path.parents or not path.exists():
        raise ValidationError({"path": "The export's files are gone."})
    return path


def iter_directory_tar(
    directory: Path, *, arcname: str, block: int = 1 << 20, extra_files: dict[str, Path] | None = None
) -> Iterator[bytes]:
    """An uncompressed tar of `directory`, produced piece by piece (constant memory) for a streaming download.

    `extra_files` ({name inside `arcname`: file}) are added to the folder, e.g. the dataset card that an export
    keeps beside its Hugging Face directory, so the archive has the layout `export_preferences --out DIR` writes."""
    directory = Path(directory)
    entries = [
        (path, arcname if path == directory else f"{arcname}/{path.relative_to(directory).as_posix()}")
        for path in [directory, *sorted(directory.rglob("*"))]
    ]
    entries += [(Path(path), f"{arcname}/{name}") for name, path in (extra_files or {}).items()]
    for path, name in entries:
        info = tarfile.TarInfo(name=name)
        stat = path.stat()
        info.mtime = int(stat.st_mtime)
        info.mode = 0o755 if path.is_dir() else 0o644
        if path.is_dir():
            info.type = tarfile.DIRTYPE
            yield info.tobuf(format=tarfile.PAX_FORMAT)
            continue
        info.size = stat.st_size
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with open(path, "rb") as handle:
            while chunk := handle.read(block):
                yield chunk
        if stat.st_size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - stat.st_size % tarfile.BLOCKSIZE)
    yield b"\0" * (tarfile.BLOCKSIZE * 2)
