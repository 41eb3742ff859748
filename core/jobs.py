"""Background jobs (training stages, exports, sampling jobs): one way to hand a saved row to a Celery worker.

A job is a row in our own tables; the Celery message only carries its id. The row is saved first and the message
is published after the commit (`job_send` from `transaction.on_commit`), with a short bounded retry. Each job model has
`enqueued_at` (when a message for it was last published; null: never) and `celery_task_id`. When the broker is
down the publish fails, the row stays saved with `enqueued_at` null and `BrokerUnavailable` tells the caller
(the API answers 503). `jobs_maintain`, run on a timer in every web and worker process (`maintenance_start`),
re-sends every waiting row that was never published, or was published more than JOBS_REDELIVER_AFTER_S ago
and still not picked up, and fails stale ones (a stage whose worker stopped sending heartbeats). Every task claims
its row atomically, so a duplicate message is a no-op.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection, models
from django.utils import timezone
from kombu.exceptions import OperationalError

from core.models import JobStatus, QueuedJob

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobKind:
    """What the shared enqueue path needs to know about one job model."""

    name: str  # shown in messages: "export", "training stage", "sampling job"
    model: type[QueuedJob]  # celery_task_id and enqueued_at record what was sent
    task: str  # the Celery task name; it takes the row's id
    queue: str
    # Narrows a queryset to the rows that wait for a worker; None: the rows whose status is "queued".
    waiting: Callable[[models.QuerySet], models.QuerySet] | None = None
    fail_stale: Callable[[], list[int]] | None = None  # marks rows whose worker died; returns their ids

    def waiting_among(self, rows: models.QuerySet) -> models.QuerySet:
        return rows.filter(status=JobStatus.QUEUED) if self.waiting is None else self.waiting(rows)

    def waiting_rows(self) -> models.QuerySet:
        return self.waiting_among(self.model.objects.all())


JOB_KINDS: dict[str, JobKind] = {}


def job_kind_register(kind: JobKind) -> JobKind:
    """Called by each app's AppConfig.ready(), so the maintenance pass knows every job model."""
    JOB_KINDS[kind.name] = kind
    return kind


class BrokerUnavailable(Exception):
    """The message for a saved job could not be published; the row is kept and is sent once the broker is back."""

    def __init__(self, *, what: str, pk: int, cause: Exception | None = None):
        self.what = what  # "export", "training run", ...
        self.pk = pk
        self.cause = cause
        super().__init__(
            f"The task queue (broker) is unreachable. {what.capitalize()} #{pk} is saved and queued: it starts "
            f"by itself once the broker is back (checked every {settings.TRAINING_STALE_CHECK_S:g} s)."
        )

    def about(self, *, what: str, pk: int) -> BrokerUnavailable:
        """The same outage told about the row the caller knows (a training run rather than its first stage)."""
        return BrokerUnavailable(what=what, pk=pk, cause=self.cause)


def _publish(*, kind: JobKind, pk: int) -> str:
    from celery import current_app

    try:
        # A connection of its own (jobs are rare): nothing stale is reused after an outage.
        with current_app.connection_for_write() as broker:
            result = current_app.send_task(
                kind.task,
                args=[pk],
                queue=kind.queue,
                connection=broker,
                retry=True,
                retry_policy=settings.JOBS_PUBLISH_RETRY,
            )
    except (OperationalError, OSError) as exc:
        raise BrokerUnavailable(what=kind.name, pk=pk, cause=exc) from exc
    return result.id


def _record_sent(*, kind: JobKind, pk: int, task_id: str) -> None:
    # Only while the row still waits: a worker that already claimed it keeps its own task id.
    kind.waiting_among(kind.model.objects.filter(pk=pk)).update(
        celery_task_id=task_id, enqueued_at=timezone.now()
    )


def job_send(*, kind: JobKind, pk: int, quiet: bool = False) -> bool:
    """Publish the task for one saved row now. On a broker outage: a warning, then False (quiet) or raise.

    Services call it from `transaction.on_commit`, so a message never names a row that is not committed; not
    quiet, `BrokerUnavailable` then propagates out of the commit to the service's caller (a view answers 503).
    Quiet suits workers, where nobody waits for an answer: the maintenance pass sends the row later.
    """
    try:
        task_id = _publish(kind=kind, pk=pk)
    except BrokerUnavailable as exc:
        logger.warning("%s (%s)", exc, exc.cause)
        if quiet:
            return False
        raise
    _record_sent(kind=kind, pk=pk, task_id=task_id)
    return True


def job_claim(*, model: type[QueuedJob], pk: int, task_id: str = "", **fields) -> models.QuerySet | None:
    """Claim a row for the task that runs it (running, started now, `fields` reset): a queued row, or a running
    one whose own message came back (its worker died). None when not claimed: a duplicate message does nothing.

    Returns the row as a queryset that matches only while the row is still this claim's, so an update through it
    is a no-op once the job was cancelled or claimed again (a task without an id claims as a local run)."""
    claim = task_id or f"local-{uuid.uuid4().hex}"
    claimable = models.Q(status=JobStatus.QUEUED)
    if task_id:
        claimable |= models.Q(status=JobStatus.RUNNING, celery_task_id=task_id)
    claimed = model.objects.filter(claimable, pk=pk).update(
        status=JobStatus.RUNNING, started_at=timezone.now(), celery_task_id=claim, **fields
    )
    if not claimed:
        return None
    return model.objects.filter(pk=pk, status=JobStatus.RUNNING, celery_task_id=claim)


def jobs_sweep(*, now=None) -> dict[str, list[int]]:
    """Send every waiting row never published, or published long ago and still not picked up. Returns sent ids.

    Each row is claimed by a compare-and-set on `enqueued_at`, so processes sweeping at once send it only once.
    Stops at the first broker failure: the next pass tries again.
    """
    now = now or timezone.now()
    resend_before = now - timedelta(seconds=settings.JOBS_REDELIVER_AFTER_S)
    sent: dict[str, list[int]] = {}
    for kind in JOB_KINDS.values():
        due = kind.waiting_rows().filter(models.Q(enqueued_at=None) | models.Q(enqueued_at__lt=resend_before))
        for pk, previous in due.order_by("pk").values_list("pk", "enqueued_at"):
            rows = kind.waiting_among(kind.model.objects.filter(pk=pk, enqueued_at=previous))
            if not rows.update(enqueued_at=now):
                continue  # another process took it, or a worker picked it up meanwhile
            try:
                task_id = _publish(kind=kind, pk=pk)
            except BrokerUnavailable as exc:
                kind.model.objects.filter(pk=pk, enqueued_at=now).update(enqueued_at=previous)
                logger.warning("job sweep: broker unreachable (%s); trying again next pass", exc.cause)
                return sent
            _record_sent(kind=kind, pk=pk, task_id=task_id)
            sent.setdefault(kind.name, []).append(pk)
            logger.info("job sweep: sent %s #%s again", kind.name, pk)
    return sent


def jobs_maintain() -> dict[str, dict[str, list[int]]]:
    """One maintenance pass: fail stale jobs (dead workers), then (re)send undelivered ones."""
    failed = {kind.name: kind.fail_stale() for kind in JOB_KINDS.values() if kind.fail_stale is not None}
    return {"failed": failed, "sent": jobs_sweep()}


class _Maintenance(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(daemon=True, name="jobs-maintenance")
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                close_old_connections()
                jobs_maintain()
            except Exception:  # a database or broker hiccup must not end the timer: the next pass tries again
                logger.exception("job maintenance pass failed")
            finally:
                # No connection kept between passes (nor inherited by a process forked meanwhile).
                connection.close()


_started: dict[int, _Maintenance] = {}
_start_lock = threading.Lock()


def maintenance_start() -> _Maintenance | None:
    """Run `jobs_maintain` every TRAINING_STALE_CHECK_S in a daemon thread of this process (once per process).

    Started by every web process (feedback_app/wsgi.py) and every Celery worker (worker_ready), so a dead worker
    is noticed, and an undelivered job sent, whichever processes are still alive. 0 turns it off.
    """
    interval = float(settings.TRAINING_STALE_CHECK_S)
    if interval <= 0:
        return None
    with _start_lock:
        thread = _started.get(os.getpid())
        if thread is None or not thread.is_alive():
            thread = _started[os.getpid()] = _Maintenance(interval)
            thread.start()
    return thread
