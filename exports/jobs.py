"""Exports as jobs of the shared enqueue path (core.jobs), on the `default` queue."""

from __future__ import annotations

from core.jobs import JobKind, job_kind_register
from exports.models import Export

# The Celery task's registered name (exports.tasks) predates this app; messages already in a broker keep working.
EXPORT_TASK = "labeling.export_run"


EXPORT_JOB = job_kind_register(JobKind(name="export", model=Export, task=EXPORT_TASK, queue="default"))
