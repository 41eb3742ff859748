from celery import shared_task

from loop.services.sampling_execution import sampling_job_execute


@shared_task(bind=True, name="loop.tasks.sample", acks_late=True, ignore_result=True)
def sample(self, job_id: int) -> str:
    """Generate responses for a sampling job (default queue; uses CUDA when the worker has it)."""
    return sampling_job_execute(job_id=job_id, task_id=self.request.id or "")
