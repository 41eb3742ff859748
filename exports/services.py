"""The export job: `export_create(...)` records an `Export` for a researcher or admin and enqueues its task
(`exports.tasks`) on the `default` queue when the transaction commits; `export_run(export_id=...)` writes its files
(`exports.writers.export_write`) and keeps `status`, `rows` and `progress` up to date; cancel, retry, and the
finished export's files for download."""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from core.jobs import job_claim, job_send
from core.roles import Role
from core.selectors import user_has_role
from exports.filters import PreferenceFilters
from exports.jobs import EXPORT_JOB
from exports.models import Export
from exports.selectors import export_estimate, preference_counts
from exports.writers import export_write
from labeling.models import Project
from registry.artifacts import artifact_path, export_folder, relative_to_root, resolve_inside_root


def user_can_export(*, user) -> bool:
    return user_has_role(user=user, role=Role.RESEARCHER) or user_has_role(user=user, role=Role.ADMIN)


@transaction.atomic
def export_create(
    *,
    project: Project,
    format: str,
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
    """The export's folder as its row stores it (relative to ARTIFACT_ROOT)."""
    return relative_to_root(
        export_folder(
            project_slug=export.project.slug,
            created_at=export.created_at,
            export_id=export.pk,
            data_format=export.format,
        )
    )


def export_data_name(export: Export) -> str:
    return {"jsonl": f"{export.format}.jsonl", "parquet": f"{export.format}.parquet", "hf": "dataset"}[
        export.file_type
    ]


class ExportCancelled(Exception):
    pass


def export_run(*, export_id: int, task_id: str = "") -> Export:
    """Write a queued export's files and record the outcome.

    Idempotent: the row is claimed atomically, so a duplicate message for an export that is running, succeeded,
    failed or cancelled does nothing; the export's own message coming back (its worker died half-way) writes it
    again.
    """
    ours = job_claim(model=Export, pk=export_id, task_id=task_id, progress=0.0, rows=0, error="")
    export = Export.objects.select_related("project").get(pk=export_id)
    if ours is None:
        return export
    filters = PreferenceFilters.from_dict(export.filters)
    counts = preference_counts(project=export.project, filters=filters)
    estimate = max(
        1, export_estimate(project=export.project, format=export.format, filters=filters, counts=counts)
    )

    def on_progress(rows: int) -> None:
        if not ours.update(rows=rows, progress=min(0.99, rows / estimate)):
            raise ExportCancelled  # cancelled meanwhile: stop writing

    relative = export_relative_dir(export)
    folder = artifact_path(relative)
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
        status=Export.Status.SUCCEEDED,
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
    if export.status != Export.Status.SUCCEEDED or not export.path:
        raise ValidationError({"status": "The export is not finished."})
    path = resolve_inside_root(export.path)
    if path is None or not path.exists():
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
