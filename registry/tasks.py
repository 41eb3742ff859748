"""Celery task of the registry (queue `default`): a thin wrapper around the import job's service."""

from __future__ import annotations

from celery import shared_task

from registry.jobs import BASE_MODEL_IMPORT_TASK
from registry.services import base_model_import_job_run


@shared_task(bind=True, name=BASE_MODEL_IMPORT_TASK, ignore_result=True, queue="default")
def base_model_import_task(self, job_id: int) -> None:
    """Check and copy an admin's base model into the registry, recording progress on its row (idempotent)."""
    base_model_import_job_run(job_id=job_id, task_id=self.request.id or "")
