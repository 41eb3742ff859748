"""Training stages as jobs of the shared enqueue path (core.jobs): which stages wait for a `gpu` worker."""

from __future__ import annotations

from django.db.models import Exists, OuterRef, QuerySet

from core.jobs import JobKind, job_kind_register
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


def _fail_stale() -> list[int]:
    from training.services.execution import stale_stages_fail

    return stale_stages_fail()


STAGE_JOB = job_kind_register(
    JobKind(
        name="training stage",
        model=StageRun,
        task="training.tasks.run_stage",
        queue="gpu",
        waiting=stages_waiting,
        fail_stale=_fail_stale,
    )
)
