"""Sampling jobs as jobs of the shared enqueue path (core.jobs), on the `default` queue."""

from __future__ import annotations

from django.db.models import QuerySet

from core.jobs import JobKind, job_kind_register
from loop.models import SamplingJob


def sampling_jobs_waiting(rows: QuerySet) -> QuerySet:
    return rows.filter(status=SamplingJob.Status.QUEUED)


SAMPLING_JOB = job_kind_register(
    JobKind(
        name="sampling job",
        model=SamplingJob,
        task="loop.tasks.sample",
        queue="default",
        waiting=sampling_jobs_waiting,
    )
)
