"""Platform models: worker heartbeats, and the abstract job every background task's row is built on."""

from django.db import models


class WorkerHeartbeat(models.Model):
    """Last sign of life of a Celery worker, written by the `core.tasks.ping` task it consumed.

    Task state lives in our own tables (there is no Celery result backend), so this is how the app knows which
    workers are alive, on which queue, and on what device.
    """

    hostname = models.CharField(max_length=255, unique=True)
    queue = models.CharField(max_length=64)
    device = models.CharField(max_length=128, blank=True)
    device_count = models.PositiveSmallIntegerField(default=1, help_text="GPUs the worker sees (1 on a CPU).")
    device_memory_bytes = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Memory of one of its GPUs (RAM on a CPU worker); the launch plans with it.",
    )
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["-last_seen"]

    def __str__(self) -> str:
        return f"{self.hostname} ({self.queue}) at {self.last_seen:%Y-%m-%d %H:%M:%S}"


class JobStatus(models.TextChoices):
    """The one status vocabulary of background jobs: exports, imports, sampling jobs, training runs and stages."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# A job in one of these states has ended: nothing runs it any more (a retry or resume makes it wait again).
JOB_FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(models.Model):
    """What every job row records: its status, why it failed, when it started and finished.

    `Model.Status` is `JobStatus` (a model with another waiting state, like a training stage's `pending`,
    declares its own `Status` and `status` field from these values)."""

    Status = JobStatus

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def finished(self) -> bool:
        return self.status in JOB_FINISHED


class QueuedJob(Job):
    """A job that `core.jobs` hands to a Celery worker: which task it was last sent as, and when."""

    celery_task_id = models.CharField(max_length=255, blank=True)
    enqueued_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When its task was last published; empty: not yet (core.jobs sends it).",
    )

    class Meta:
        abstract = True
