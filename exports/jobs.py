"""Exports as jobs of the shared enqueue path (core.jobs), on the `default` queue."""

from __future__ import annotations

from django.db.models import QuerySet

from core.jobs import JobKind, job_kind_register
from exports.models import Export

# The Celery task's registered name (exports.tasks) predates this app; messages already in a broker keep working.
EXPORT_TASK = "labeling.export_run"


def exports_waiting(rows: QuerySet) -> QuerySet:
    return rows.filter(status=Export.Status.QUEUED)


EXPORT_JOB = job_kind_register(
    JobKind(name="export", model=Export, task=EXPORT_TASK, queue="default", waiting=exports_waiting)
)
