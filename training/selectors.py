"""Read paths of the training domain: runs, stages, live progress, the model versions runs produced."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import QuerySet
from django.utils import timezone

from registry.models import ModelVersion
from registry.selectors import model_versions_list
from training.engine.common import json_safe
from training.models import StageRun, TrainingRun

FINISHED_RUN_STATES = (TrainingRun.Status.SUCCEEDED, TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED)


def runs_list(*, project=None) -> QuerySet[TrainingRun]:
    runs = TrainingRun.objects.select_related("project", "base_model", "created_by").prefetch_related(
        "stages"
    )
    return runs.filter(project=project) if project is not None else runs


def run_is_finished(*, run: TrainingRun) -> bool:
    return run.status in FINISHED_RUN_STATES


@dataclass(frozen=True)
class StageProgress:
    stage: StageRun
    fraction: float
    eta: timedelta | None


def stage_progress(*, stage: StageRun, now=None) -> StageProgress:
    """Fraction done and a linear ETA from the steps made since the stage started."""
    now = now or timezone.now()
    total = stage.total_steps or 0
    fraction = min(1.0, stage.step / total) if total else 0.0
    if stage.status == StageRun.Status.SUCCEEDED:
        fraction = 1.0
    eta = None
    if stage.status == StageRun.Status.RUNNING and stage.started_at and 0 < stage.step < total:
        elapsed = (now - stage.started_at).total_seconds()
        eta = timedelta(seconds=round(elapsed / stage.step * (total - stage.step)))
    return StageProgress(stage=stage, fraction=fraction, eta=eta)


# Curves a reader looks at first ("is it learning?"); every other series waits behind a toggle.
HEADLINE_METRIC_WORDS = ("loss", "reward")


@dataclass(frozen=True)
class StageMetrics:
    curves: dict[str, list[tuple[int, float | None]]]  # loss and reward series: {"loss": [(step, value)]}
    more: dict[str, list[tuple[int, float | None]]]  # the other series
    summary: list[
        tuple[str, float | None]
    ]  # reported once (runtime, final accuracy) or never changing: numbers


def stage_metrics(*, stage: StageRun) -> StageMetrics:
    """The stage's metric points split for the run page: headline curves, other curves, one-off numbers."""
    series: dict[str, list[tuple[int, float | None]]] = {}
    for point in stage.metrics or []:
        for name, value in (point.get("values") or {}).items():
            # None (a NaN or infinity, stored as null) stays a gap in the chart; json_script would write NaN,
            # which JSON.parse rejects, so a non-finite float left in an old row becomes None too.
            series.setdefault(name, []).append((point.get("step", 0), json_safe(value)))
    curves: dict[str, list[tuple[int, float | None]]] = {}
    more: dict[str, list[tuple[int, float | None]]] = {}
    summary: list[tuple[str, float | None]] = []
    for name in sorted(series):
        points = series[name]
        if len({step for step, _ in points}) < 2 or len({value for _, value in points}) < 2:
            summary.append((name, points[-1][1]))
        elif any(word in name for word in HEADLINE_METRIC_WORDS):
            curves[name] = points
        else:
            more[name] = points
    return StageMetrics(curves=curves, more=more, summary=summary)


# The running stage first (then a failure to look at, then what waits): what a reader of a live run looks for.
_STAGE_ORDER = {StageRun.Status.RUNNING: 0, StageRun.Status.FAILED: 1, StageRun.Status.PENDING: 2}
# Finished well: shown collapsed, one line each.
COLLAPSED_STAGE_STATES = (StageRun.Status.SUCCEEDED, StageRun.Status.CANCELLED)


def stages_for_display(*, run: TrainingRun) -> list[StageRun]:
    stages = run.stages.select_related("output_model").order_by("position")
    return sorted(stages, key=lambda stage: (_STAGE_ORDER.get(stage.status, 3), stage.position))


def run_final_policy(*, run: TrainingRun) -> ModelVersion | None:
    """The policy the run's last policy-producing stage registered; None when no stage produced one (yet)."""
    stage = (
        run.stages.filter(output_model__kind=ModelVersion.Kind.POLICY)
        .select_related("output_model")
        .order_by("-position")
        .first()
    )
    return stage.output_model if stage else None


def model_versions_with_runs() -> QuerySet[ModelVersion]:
    """The registry's versions, newest first, each with the run whose stage produced it (if one did)."""
    return model_versions_list().select_related("produced_by_stage__run")
