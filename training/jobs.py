"""Training stages as jobs of the shared enqueue path (core.jobs): the one module that sends them to a worker.

Which stages wait for a `gpu` worker, sending one (a launched run's first stage, a resumed or retried stage, the
next stage once one succeeded) and failing the stages whose worker died (the maintenance pass). The services
around it import it and nothing here imports them: runs → jobs ← execution ← tasks.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from core.jobs import BrokerUnavailable, JobKind, job_kind_register, job_send
from training.models import StageRun, TrainingRun


def stages_waiting(rows: QuerySet) -> QuerySet:
    """Pending stages of a live run whose earlier stages all succeeded: the next stage of each run."""
    unfinished_before = StageRun.objects.filter(
        run=OuterRef("run"), position__lt=OuterRef("position")
    ).exclude(status=StageRun.Status.SUCCEEDED)
    return rows.filter(
        status=StageRun.Status.PENDING,
        run__cancel_requested=False,
        run__status__in=[TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING],
    ).exclude(Exists(unfinished_before))


def stage_enqueue(*, stage_run: StageRun, quiet: bool = False) -> None:
    """Publish the stage's task on `gpu` (core.jobs: bounded retry; on an outage BrokerUnavailable, or a warning
    when quiet, and the maintenance pass sends it once the broker is back). Call it from `transaction.on_commit`."""
    job_send(kind=STAGE_JOB, pk=stage_run.pk, quiet=quiet)


def run_enqueue(*, run: TrainingRun, first: StageRun) -> None:
    """Send a launched run's first stage; an outage is told about the run (the row its caller created)."""
    try:
        stage_enqueue(stage_run=first)
    except BrokerUnavailable as exc:  # the run is saved; its first stage is sent once the broker is back
        raise exc.about(what="training run", pk=run.pk) from exc.cause


def stage_fail(*, stage: StageRun, message: str, now) -> None:
    """The stage and its run end failed with the reason (the stage can be resumed or retried)."""
    StageRun.objects.filter(pk=stage.pk).update(status=StageRun.Status.FAILED, error=message, finished_at=now)
    TrainingRun.objects.filter(pk=stage.run_id).update(
        status=TrainingRun.Status.FAILED,
        error=f"stage {stage.position} ({stage.kind}): {message}",
        finished_at=now,
    )


def stale_stages_fail(*, now=None) -> list[int]:
    """Mark running stages whose heartbeat stopped as failed (their worker died); they can be resumed."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.TRAINING_STALE_AFTER_S)
    failed: list[int] = []
    with transaction.atomic():
        stale = StageRun.objects.select_for_update(
            skip_locked=connection.features.has_select_for_update_skip_locked
        )
        for stage in stale.filter(status=StageRun.Status.RUNNING, heartbeat_at__lt=cutoff):
            message = f"worker {stage.worker or '?'} stopped sending heartbeats (last {stage.heartbeat_at:%H:%M:%S})"
            stage_fail(stage=stage, message=message, now=now)
            failed.append(stage.pk)
    return failed


STAGE_JOB = job_kind_register(
    JobKind(
        name="training stage",
        model=StageRun,
        task="training.tasks.run_stage",
        queue="gpu",
        waiting=stages_waiting,
        fail_stale=stale_stages_fail,
    )
)
