"""Exports as jobs of the shared enqueue path (core.jobs), on the `default` queue."""

from __future__ import annotations

from django.db.models import QuerySet

from core.jobs import JobKind, job_kind_register
from labeling.models import Export


def exports_waiting(rows: QuerySet) -> QuerySet:
    return rows.filter(status=Export.Status.QUEUED)


EXPORT_JOB = job_kind_register(
    JobKind(name="export", model=Export, task="labeling.export_run", queue="default", waiting=exports_waiting)
)
