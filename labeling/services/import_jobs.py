"""Uploads and import jobs: the rules every upload follows (the page, the API, `manage.py import_data`), and the
`ImportJob` that keeps the file under ARTIFACT_ROOT/imports/ and runs it during the request or in the
`labeling.import_run` Celery task (labeling.services.imports describes the file format)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from core.roles import Role
from core.selectors import user_has_role
from labeling.models import ImportJob
from labeling.services.import_parsing import ImportRejected, LineError, import_max_bytes, import_plan
from labeling.services.imports import import_apply
from registry.artifacts import artifact_path, import_upload_file, relative_to_root

# --- upload rules (the page, the API and `manage.py import_data`) ------------------------------------------

UPLOAD_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# What browsers and HTTP clients send for these files (a .jsonl is often unknown to them: octet-stream).
UPLOAD_CONTENT_TYPES = {
    "jsonl": {
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
        "application/x-ndjson",
        "application/ndjson",
        "application/json",
        "text/plain",
        "application/octet-stream",
    },
    "csv": {
        "text/csv",
        "application/csv",
        "text/comma-separated-values",
        "application/vnd.ms-excel",
        "text/plain",
        "application/octet-stream",
    },
}
DEFAULT_SYNC_MAX_BYTES = 1024 * 1024


def import_sync_max_bytes() -> int:
    """Uploads up to this size import during the request; larger ones run as a background ImportJob."""
    return int(getattr(settings, "LABELING_IMPORT_SYNC_MAX_BYTES", DEFAULT_SYNC_MAX_BYTES))


def import_upload_check(*, name: str, size: int, content_type: str | None = None) -> str:
    """The format ("jsonl" or "csv") of an upload, or ValidationError({"file": why}) (extension, type, size)."""
    suffix = Path(name or "").suffix.lower()
    fmt = UPLOAD_EXTENSIONS.get(suffix)
    if fmt is None:
        raise ValidationError({"file": f"Upload a .jsonl, .ndjson or .csv file, not {name!r}."})
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind and kind not in UPLOAD_CONTENT_TYPES[fmt]:
        raise ValidationError({"file": f"A {suffix} file cannot have the content type {kind!r}."})
    limit = import_max_bytes()
    if size > limit:
        raise ValidationError(
            {
                "file": f"The file is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB "
                "(LABELING_IMPORT_MAX_BYTES). Split it."
            }
        )
    if size == 0:
        raise ValidationError({"file": "The file is empty."})
    return fmt


# --- import jobs -------------------------------------------------------------------------------------------

MAX_ERRORS_KEPT = 200
VALIDATE_SHARE = 0.4  # of a job's progress bar
PROGRESS_WRITE_S = 1.0
IMPORT_TASK = "labeling.import_run"  # labeling.tasks.import_run_task


def user_can_import(*, user) -> bool:
    return user is not None and user_has_role(user=user, role=Role.ADMIN)


def import_job_create(
    *,
    project_slug: str,
    file_name: str,
    data: bytes,
    file_format: str,
    build_k: int | None = None,
    pairing: str = "all",
    created_by,
    enqueue: bool = True,
) -> ImportJob:
    """Keep the upload under ARTIFACT_ROOT/imports/ and record a job; enqueue it on `default` after the commit."""
    if not user_can_import(user=created_by):
        raise PermissionDenied("Only admins import data.")
    job = ImportJob(
        project_slug=project_slug,
        file_name=Path(file_name).name[:255] or "upload",
        file_format=file_format,
        size_bytes=len(data),
        build_k=build_k,
        pairing=pairing,
        created_by=created_by,
    )
    job.full_clean(exclude=["upload_path"])
    with transaction.atomic():
        job.save()
        path = import_upload_file(job_id=job.pk, token=uuid.uuid4().hex[:8], file_format=file_format)
        relative = relative_to_root(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        ImportJob.objects.filter(pk=job.pk).update(upload_path=relative)
        job.upload_path = relative
        if enqueue:
            transaction.on_commit(lambda: import_job_enqueue(job=job))
    return job


def import_job_enqueue(*, job: ImportJob) -> None:
    # By name: labeling.tasks imports this module to run the job.
    result = current_app.send_task(IMPORT_TASK, args=[job.pk], queue="default")
    ImportJob.objects.filter(pk=job.pk).update(celery_task_id=result.id or "")


class _JobProgress:
    """Writes a job's progress at most once a second, on its own connection while the import's transaction is
    open (so pages see it before the commit). SQLite allows one writer: there, only phase changes are written."""

    def __init__(self, job: ImportJob):
        self.job_id = job.pk
        self.lines_total = 0
        self.lines = 0
        self.rows_total = 0
        self.rows_done = 0
        self.phase = ImportJob.Phase.VALIDATE
        self.writing = False  # inside the import's transaction: progress goes through another connection
        self._last = 0.0

    def fields(self) -> dict:
        if self.phase == ImportJob.Phase.VALIDATE:
            progress = VALIDATE_SHARE * self.lines / max(1, self.lines_total)
        else:
            progress = VALIDATE_SHARE + (1 - VALIDATE_SHARE) * self.rows_done / max(1, self.rows_total)
        return {
            "phase": self.phase,
            "lines": self.lines,
            "rows_total": self.rows_total,
            "rows_done": min(self.rows_done, self.rows_total),
            "progress": min(0.99, progress),
        }

    def write(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_WRITE_S:
            return
        self._last = now
        values = self.fields()
        if not self.writing:
            ImportJob.objects.filter(pk=self.job_id).update(**values)
        elif connection.vendor != "sqlite":
            thread = threading.Thread(target=_update_on_own_connection, args=(self.job_id, values))
            thread.start()
            thread.join()

    def line(self, count: int) -> None:
        self.lines += count
        self.write()

    def row(self, count: int) -> None:
        self.rows_done += count
        self.write()


def _update_on_own_connection(job_id: int, values: dict) -> None:
    try:
        ImportJob.objects.filter(pk=job_id).update(**values)
    finally:
        connection.close()


def _finish(job_id: int, **values) -> None:
    ImportJob.objects.filter(pk=job_id).update(finished_at=timezone.now(), **values)


def _drop_upload(job: ImportJob) -> None:
    if job.upload_path:
        artifact_path(job.upload_path).unlink(missing_ok=True)
        ImportJob.objects.filter(pk=job.pk).update(upload_path="")


def import_job_run(*, job_id: int) -> ImportJob:
    """Validate and write the job's kept upload; record progress, then the report or every bad line.

    A finished job is left alone; a running one (its worker died) runs again from the kept file. The upload is
    deleted once the job has finished either way.
    """
    job = ImportJob.objects.get(pk=job_id)
    if job.finished:
        return job
    path = artifact_path(job.upload_path) if job.upload_path else None
    if path is None or not path.is_file():
        _finish(job.pk, status=ImportJob.Status.FAILED, error="The uploaded file is gone; upload it again.")
        job.refresh_from_db()
        return job
    data = path.read_bytes()
    tracker = _JobProgress(job)
    tracker.lines_total = max(1, data.count(b"\n") + (0 if data.endswith(b"\n") else 1))
    ImportJob.objects.filter(pk=job.pk).update(
        status=ImportJob.Status.RUNNING, started_at=timezone.now(), error="", errors=[], **tracker.fields()
    )
    try:
        plan = import_plan(data=data, fmt=job.file_format, progress=tracker.line)
        tracker.phase = ImportJob.Phase.WRITE
        tracker.rows_total = plan.rows
        tracker.write(force=True)
        with transaction.atomic():
            tracker.writing = True
            report = import_apply(
                project_slug=job.project_slug,
                plan=plan,
                build_k=job.build_k,
                pairing=job.pairing,
                progress=tracker.row,
            )
            _finish(
                job.pk,
                status=ImportJob.Status.SUCCEEDED,
                progress=1.0,
                lines=plan.lines,
                rows_total=plan.rows,
                rows_done=plan.rows,
                counts={**report.__dict__, "summary": report.summary()},
            )
    except ImportRejected as rejected:
        _finish(
            job.pk,
            status=ImportJob.Status.FAILED,
            errors=[error.__dict__ for error in rejected.line_errors[:MAX_ERRORS_KEPT]],
            counts={"errors_total": len(rejected.line_errors)},
            error="Nothing was imported: " + "; ".join(rejected.messages[:3]),
        )
    except ValidationError as invalid:
        _finish(
            job.pk,
            status=ImportJob.Status.FAILED,
            error="Nothing was imported: " + " ".join(invalid.messages),
        )
    except Exception as exc:
        _finish(
            job.pk,
            status=ImportJob.Status.FAILED,
            error=f"Nothing was imported: {type(exc).__name__}: {exc}"[:2000],
        )
        _drop_upload(job)
        raise
    _drop_upload(job)
    job.refresh_from_db()
    return job


def import_job_messages(*, job: ImportJob) -> list[str]:
    """What to show for a failed job: its bad lines (as the synchronous import words them), or the error."""
    if job.errors:
        errors = [LineError(**error) for error in job.errors]
        return ImportRejected(errors, total=job.counts.get("errors_total", len(errors))).messages
    return [job.error] if job.error else []
