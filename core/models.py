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
