"""Frozen dataset snapshots: the rows a training run trains on, written once at launch and never changed.

A snapshot is a folder ARTIFACT_ROOT/datasets/<sha256>/ with one JSONL file per data format the run's stages
need (`sft`, `pairwise`, `prompts`) and a manifest. The hash covers every row, so the same filters over the same
data give the same folder, and a model version can name exactly what it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from exports.filters import PreferenceFilters
from exports.selectors import iter_preference_rows
from labeling.models import Project
from labeling.selectors.prompts import prompt_rows
from registry.artifacts import dataset_folder, datasets_folder

SNAPSHOT_FORMATS = ("sft", "pairwise", "prompts")


@dataclass(frozen=True)
class Snapshot:
    content_hash: str
    counts: dict[str, int]
    path: Path

    def file(self, data_format: str) -> Path:
        return self.path / f"{data_format}.jsonl"


def _rows(*, project: Project, filters: PreferenceFilters, data_format: str) -> Iterable[dict]:
    if data_format == "prompts":
        return prompt_rows(project=project)
    return iter_preference_rows(project=project, filters=filters, format=data_format)


def _canonical(row: dict) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def snapshot_counts(
    *, project: Project, filters: PreferenceFilters, formats: Iterable[str]
) -> dict[str, int]:
    """How many rows each format would hold now (the launch form's live count)."""
    return {fmt: sum(1 for _ in _rows(project=project, filters=filters, data_format=fmt)) for fmt in formats}


@dataclass(frozen=True)
class DataSize:
    rows: int
    chars_per_row: float  # of the row as stored (JSON), a stand-in for its token length


def snapshot_sizes(
    *, project: Project, filters: PreferenceFilters, formats: Iterable[str]
) -> dict[str, DataSize]:
    """How many rows each format would hold now, and how long they are (the launch form's count and estimate)."""
    sizes = {}
    for fmt in formats:
        rows = chars = 0
        for row in _rows(project=project, filters=filters, data_format=fmt):
            rows += 1
            chars += len(_canonical(row))
        sizes[fmt] = DataSize(rows=rows, chars_per_row=chars / rows if rows else 0.0)
    return sizes


def snapshot_file_sizes(*, content_hash: str, counts: dict[str, int]) -> dict[str, DataSize]:
    """The same for a frozen snapshot, from its files' sizes (no row is read)."""
    folder = dataset_folder(content_hash)
    sizes = {}
    for fmt, rows in (counts or {}).items():
        try:
            size = (folder / f"{fmt}.jsonl").stat().st_size
        except OSError:
            continue
        sizes[fmt] = DataSize(rows=rows, chars_per_row=max(size - rows, 0) / rows if rows else 0.0)
    return sizes


def snapshot_create(*, project: Project, filters: PreferenceFilters, formats: Iterable[str]) -> Snapshot:
    """Write the rows of each format into a staging folder, hash them, and move the folder to datasets/<hash>."""
    root = datasets_folder()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-snapshot-", dir=root))
    try:
        digest = hashlib.sha256()
        counts: dict[str, int] = {}
        for fmt in sorted(set(formats)):
            count = 0
            format_digest = hashlib.sha256()
            with open(staging / f"{fmt}.jsonl", "w", encoding="utf-8") as handle:
                for row in _rows(project=project, filters=filters, data_format=fmt):
                    line = _canonical(row)
                    handle.write(line + "\n")
                    format_digest.update(line.encode() + b"\n")
                    count += 1
            counts[fmt] = count
            digest.update(f"{fmt}:{format_digest.hexdigest()}\n".encode())
        content_hash = digest.hexdigest()
        manifest = {
            "project": project.slug,
            "filters": filters.to_dict(),
            "counts": counts,
            "sha256": content_hash,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        target = root / content_hash
        if target.exists():
            shutil.rmtree(staging)  # the same rows were snapshotted before: reuse that folder
        else:
            os.chmod(staging, 0o755)
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Snapshot(content_hash=content_hash, counts=counts, path=target)


def snapshot_load(*, content_hash: str, data_format: str):
    """The rows of one format as a `datasets.Dataset`, for the engine."""
    from datasets import Dataset

    path = dataset_folder(content_hash) / f"{data_format}.jsonl"
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return Dataset.from_list(rows)
