"""Writing preference exports: JSONL, Parquet and Hugging Face `datasets` directories, each with a dataset card.

`export_write(...)` streams the rows into a file (or directory) at `dest`, atomically: everything is written under
a temporary name beside it and renamed into place only when complete. It returns an `ExportResult` (rows, content
hash, bytes, card stats). Used by the export job (`exports.services.export_run`), `manage.py export_preferences`
and the benchmark.

The content hash is `exports.hashing.content_hash` of the rows, the same for every file type; for a JSONL export it
is also the sha256 of the file, whose lines are exactly those.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from exports.card import dataset_card
from exports.filters import PreferenceFilters
from exports.formats import format_spec
from exports.formats.base import RecordCodec
from exports.hashing import ContentHasher
from exports.parallel import iter_parallel_blocks, parallel_workers
from exports.selectors import comparison_key_span, iter_preference_blocks, iter_preference_records
from exports.stats import CardStats
from labeling.models import Project

FILE_TYPES: tuple[str, ...] = ("jsonl", "parquet", "hf")
BATCH_ROWS = 20_000  # rows per Parquet row group / Arrow record batch
PROGRESS_EVERY_S = 1.0


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


@dataclass(frozen=True)
class ExportResult:
    path: Path
    file_type: str
    rows: int
    content_hash: str
    size_bytes: int
    stats: dict[str, Any]


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
                except BaseException as exc:  # handed to the producer thread
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
    with pq.ParquetWriter(target, schema, compression="zstd") as writer:
        for table in sink.tables(records, schema):
            writer.write_table(table)


def _write_hf(records: Iterable[Any], target: Path, sink: _Sink, schema: pa.Schema, scratch: Path) -> None:
    """Arrow IPC stream (what `datasets` memory-maps) first, then `save_to_disk` into `target`."""
    from datasets import Dataset  # here: importing `datasets` takes seconds, and only these exports need it

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


def _export_workers(
    *, project: Project, filters: PreferenceFilters, format: str, requested: int | None
) -> int:
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
    format: str,
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
    processes (`exports.parallel`; None: `LABELING_EXPORT_WORKERS` when it has enough comparisons), same bytes.
    """
    filters = filters or PreferenceFilters()
    spec = format_spec(format)
    if file_type not in FILE_TYPES:
        raise ValidationError({"file_type": f"File type is one of {', '.join(FILE_TYPES)}."})
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if card_path is None:
        card_path = dest / "README.md" if file_type == "hf" else dest.with_name(dest.name + ".README.md")
    started = timezone.now()
    sink = _Sink(spec.codec, on_progress)
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
                _write_parquet(records, tmp, sink, spec.schema)
            else:
                _write_hf(records, tmp, sink, spec.schema, scratch)
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
