"""Sampling jobs as jobs of the shared enqueue path (core.jobs), on the `default` queue."""

from __future__ import annotations

from core.jobs import JobKind, job_kind_register
from loop.models import SamplingJob

SAMPLING_JOB = job_kind_register(
    JobKind(
        name="sampling job",
        model=SamplingJob,
        task="loop.tasks.sample",
        queue="default",
    )
)
