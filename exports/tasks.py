"""Celery task of the exports app (queue `default`): a thin wrapper around the service."""

from __future__ import annotations

from celery import shared_task

from exports.jobs import EXPORT_TASK
from exports.services import export_run


@shared_task(bind=True, name=EXPORT_TASK, ignore_result=True, queue="default")
def export_run_task(self, export_id: int) -> None:
    """Write an export's files and record progress and the outcome on its `Export` row (idempotent)."""
    export_run(export_id=export_id, task_id=self.request.id or "")
