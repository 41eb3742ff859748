"""Celery tasks of the training domain: thin wrappers over services (routing: see CELERY_TASK_ROUTES)."""

from celery import shared_task

from training.jobs import stale_stages_fail
from training.services.execution import stage_run_execute


@shared_task(bind=True, name="training.tasks.run_stage", acks_late=True, ignore_result=True)
def run_stage(self, stage_run_id: int) -> str:
    """One training stage. Idempotent: a redelivered message for a finished or running stage does nothing."""
    return stage_run_execute(
        stage_run_id=stage_run_id, worker=self.request.hostname or "", task_id=self.request.id or ""
    )


@shared_task(name="training.tasks.fail_stale_stages", ignore_result=True)
def fail_stale_stages() -> list[int]:
    return stale_stages_fail()
