"""Celery tasks of the labeling app (queue `default`): thin wrappers around the services."""

from __future__ import annotations

from celery import shared_task

from labeling.services.import_jobs import IMPORT_TASK, import_job_run


@shared_task(name=IMPORT_TASK, ignore_result=True, queue="default")
def import_run_task(job_id: int) -> None:
    """Validate and write an uploaded import file; progress and the outcome go on its `ImportJob` row."""
    import_job_run(job_id=job_id)
