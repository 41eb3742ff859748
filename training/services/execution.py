"""Executing one stage inside a Celery worker: the thin adapter between StageRun rows and the engine.

Live state goes to the StageRun row (step, metrics, log tail, heartbeat) so the web page can poll it and closing
the browser never affects the run. A heartbeat thread keeps `heartbeat_at` fresh while the stage loads models or
runs long steps; `training.jobs.stale_stages_fail` marks stages whose worker vanished (SIGKILL, power loss) as
failed, and `stage_run_resume` continues them from their last checkpoint. Only workers import this module (through
`training.tasks`): it loads the engine, torch included.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import traceback
from collections import deque
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from registry.artifacts import model_version_ref
from registry.models import ModelVersion
from registry.services import model_version_register
from training.engine import stages as engine_stages
from training.engine.base_model import describe_saved_model
from training.engine.common import (
    DeviceUnavailableError,
    PhaseProgress,
    StageFailure,
    StepMetrics,
    checkpoint_dir_for,
    json_safe,
    pick_device,
    read_stage_manifest,
)
from training.jobs import stage_enqueue, stage_fail
from training.models import StageRun, TrainingRun
from training.services import datasets
from training.services.distributed_launch import launch_settings, stage_processes_error
from training.signals import training_run_succeeded

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 200


def _earlier_output(stage: StageRun, produces: str) -> ModelVersion | None:
    kinds = [kind for kind, spec in engine_stages.STAGES.items() if spec.produces == produces]
    earlier = (
        stage.run.stages.filter(position__lt=stage.position, kind__in=kinds, status=StageRun.Status.SUCCEEDED)
        .exclude(output_model=None)
        .order_by("-position")
        .first()
    )
    return earlier.output_model if earlier else None


def stage_inputs(*, stage: StageRun) -> tuple[ModelVersion, ModelVersion | None]:
    """(model the stage starts from, reward model for PPO). A reward model starts from the run's latest policy."""
    start = _earlier_output(stage, "policy") or stage.run.base_model
    reward = _earlier_output(stage, "reward") if stage.kind == StageRun.Kind.PPO else None
    return start, reward


class _LogTail(logging.Handler):
    """Keeps the last lines logged by the engine and the libraries it drives."""

    def __init__(self, lines: deque):
        super().__init__(level=logging.INFO)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class StageReporter:
    """on_progress / should_stop for the engine, writing throttled updates to the StageRun row."""

    def __init__(self, stage: StageRun, log_lines: deque):
        self.stage_id = stage.pk
        self.run_id = stage.run_id
        self.metrics: list[dict] = list(stage.metrics or [])
        self.log_lines = log_lines
        self.step = stage.step
        self.total = stage.total_steps
        self.phase: dict = {}
        self._last_write = 0.0
        self._last_phase_write = 0.0
        self._cancelled = False
        self._last_cancel_poll = -math.inf  # the first question always asks the database

    def on_progress(self, progress: StepMetrics | PhaseProgress) -> None:
        if isinstance(progress, PhaseProgress):
            self.on_phase(progress)
            return
        values = {key: float(value) for key, value in progress.values.items()}
        # A NaN or infinite value is kept as null: the metrics column is JSON, which has no NaN (Postgres refuses it).
        # `at` (epoch seconds) times the steps: the run page's ETA and later launch estimates are measured from it.
        self.metrics.append({"step": progress.step, "values": json_safe(values), "at": round(time.time(), 3)})
        self.phase = {}
        self.step = progress.step
        self.total = max(progress.total_steps, progress.step)
        shown = " ".join(f"{key}={value:.4g}" for key, value in sorted(values.items()))
        self.log_lines.append(f"{timezone.now():%H:%M:%S} step {progress.step}/{self.total} {shown}")
        # Throttled: the metrics list is rewritten whole, so a write per fast step would cost more than the step.
        if time.monotonic() - self._last_write >= settings.TRAINING_PROGRESS_WRITE_S:
            self.flush()

    def on_phase(self, progress: PhaseProgress) -> None:
        """A phase inside a long step: one small update of its own column, throttled like the steps' writes (a
        phase skipped by the throttle is simply not shown; the next write carries the latest one)."""
        self.phase = {
            "step": progress.step,
            "phase": progress.phase,
            "detail": progress.detail,
            "tokens": progress.tokens,
            "at": round(time.time(), 3),
        }
        self.log_lines.append(
            f"{timezone.now():%H:%M:%S} step {progress.step}: {progress.phase}, {progress.detail}"
        )
        if time.monotonic() - self._last_phase_write >= settings.TRAINING_PROGRESS_WRITE_S:
            StageRun.objects.filter(pk=self.stage_id).update(phase=self.phase, heartbeat_at=timezone.now())
            self._last_phase_write = time.monotonic()

    def flush(self) -> None:
        StageRun.objects.filter(pk=self.stage_id).update(
            step=self.step,
            total_steps=self.total,
            metrics=self.metrics,
            phase=self.phase,
            log_tail="\n".join(self.log_lines),
            heartbeat_at=timezone.now(),
        )
        self._last_write = time.monotonic()

    def should_stop(self) -> bool:
        """Asked between micro-batches and decode steps, so a cancel is honoured within seconds; the indexed
        lookup runs at most every TRAINING_CANCEL_POLL_S, so asking per generated token costs no query per token."""
        if (
            not self._cancelled
            and time.monotonic() - self._last_cancel_poll >= settings.TRAINING_CANCEL_POLL_S
        ):
            self._cancelled = TrainingRun.objects.filter(pk=self.run_id, cancel_requested=True).exists()
            self._last_cancel_poll = time.monotonic()
        return self._cancelled


class _Heartbeat(threading.Thread):
    def __init__(self, stage_id: int, interval: float):
        super().__init__(daemon=True, name=f"heartbeat-stage-{stage_id}")
        self.stage_id = stage_id
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                try:
                    StageRun.objects.filter(pk=self.stage_id, status=StageRun.Status.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except DatabaseError:  # a busy database must not kill the stage: the next beat tries again
                    logger.warning(
                        "heartbeat of stage %s not written this time", self.stage_id, exc_info=True
                    )
        finally:
            connection.close()  # this thread's own connection

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=self.interval + 5)


def _claim(*, stage_run_id: int, worker: str, task_id: str) -> StageRun | None:
    """Mark the stage running for this worker, or return None when there is nothing (more) to do."""
    stale_after = timedelta(seconds=settings.TRAINING_STALE_AFTER_S)
    with transaction.atomic():
        stage = StageRun.objects.select_for_update().select_related("run").filter(pk=stage_run_id).first()
        if stage is None or stage.status in (StageRun.Status.SUCCEEDED, StageRun.Status.FAILED):
            return (
                None  # a redelivered message for a finished stage, or one already marked failed: do nothing
            )
        now = timezone.now()
        if (
            stage.status == StageRun.Status.RUNNING
            and stage.heartbeat_at
            and now - stage.heartbeat_at < stale_after
        ):
            return None  # another worker is on it
        run = stage.run
        if run.cancel_requested or stage.status == StageRun.Status.CANCELLED:
            _finish_cancelled(stage, now)
            return None
        blocking = run.stages.filter(position__lt=stage.position).exclude(status=StageRun.Status.SUCCEEDED)
        if blocking.exists():
            return None
        processes = stage.config.get("processes", 1)
        try:
            device = pick_device(stage.config.get("device", "auto"))
            if message := stage_processes_error(processes=processes, device=device):
                raise DeviceUnavailableError(message)
        except DeviceUnavailableError as exc:
            # Failed here, once, with the reason: the message is acknowledged, so nothing retries it.
            stage.worker = worker
            stage.save(update_fields=["worker"])
            stage_fail(stage=stage, message=str(exc), now=now)
            return None
        stage.status = StageRun.Status.RUNNING
        stage.worker = worker
        stage.device = f"{device} ×{processes}" if processes > 1 else str(device)
        stage.celery_task_id = task_id or stage.celery_task_id
        stage.started_at = stage.started_at or now
        stage.heartbeat_at = now
        stage.checkpoint_path = str(checkpoint_dir_for(stage.output_dir))
        stage.save()
        if run.status != TrainingRun.Status.RUNNING:
            run.status = TrainingRun.Status.RUNNING
            run.started_at = run.started_at or now
            run.save(update_fields=["status", "started_at"])
    return stage


def _finish_cancelled(stage: StageRun, now) -> None:
    StageRun.objects.filter(pk=stage.pk).update(status=StageRun.Status.CANCELLED, finished_at=now)
    stage.run.stages.filter(status=StageRun.Status.PENDING).update(
        status=StageRun.Status.CANCELLED, finished_at=now
    )
    TrainingRun.objects.filter(pk=stage.run_id).update(status=TrainingRun.Status.CANCELLED, finished_at=now)


def stage_run_execute(*, stage_run_id: int, worker: str = "", task_id: str = "") -> str:
    """Run one stage to its end (completed, cancelled or failed) and enqueue the next. Returns the final status."""
    stage = _claim(stage_run_id=stage_run_id, worker=worker or socket.gethostname(), task_id=task_id)
    if stage is None:
        return "skipped"
    log_lines: deque = deque((stage.log_tail or "").splitlines(), maxlen=LOG_TAIL_LINES)
    reporter = StageReporter(stage, log_lines)
    handler = _LogTail(log_lines)
    watched = [logging.getLogger(name) for name in ("training.engine", "transformers.trainer", "trl")]
    for watched_logger in watched:
        watched_logger.addHandler(handler)
    heartbeat = _Heartbeat(stage.pk, settings.TRAINING_HEARTBEAT_S)
    heartbeat.start()
    try:
        start, reward = stage_inputs(stage=stage)
        out_dir = stage.output_dir
        if out_dir.exists():
            # The artifact was completed before the worker died between writing it and registering it.
            log_lines.append("artifact already complete on disk; registering it without training again")
            metrics = (read_stage_manifest(out_dir) or {}).get("metrics", {})
            status, steps = "completed", stage.total_steps
        else:
            spec = engine_stages.stage_spec(stage.kind)
            config = engine_stages.config_from_dict(stage.kind, stage.config)
            data = datasets.snapshot_load(content_hash=stage.run.dataset_hash, data_format=spec.data_format)
            log_lines.append(
                f"stage {stage.kind}/{stage.peft} on {len(data)} {spec.data_format} rows from {start.name}"
            )
            inputs = engine_stages.StageInputs(
                data=data,
                base=model_version_ref(start),
                out_dir=out_dir,
                on_progress=reporter.on_progress,
                should_stop=reporter.should_stop,
                reward_model=model_version_ref(reward) if reward else None,
            )
            result = engine_stages.run(config, inputs, launch_settings())
            metrics, status, steps = result.metrics, result.status, result.steps_completed
        reporter.step = max(reporter.step, steps)
        reporter.phase = {}
        reporter.flush()
        if status == "cancelled":
            log_lines.append(f"cancelled at step {steps}; checkpoints kept for resume")
            reporter.flush()
            _finish_cancelled(stage, timezone.now())
            return StageRun.Status.CANCELLED
        return _finish_succeeded(stage=stage, start=start, out_dir=out_dir, metrics=metrics)
    except Exception as exc:
        # A reason the user can act on (NaN loss, missing device) is shown as it is; anything else with its type.
        message = str(exc) if isinstance(exc, StageFailure) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, StageFailure):
            logger.warning("stage %s of run %s failed: %s", stage.pk, stage.run_id, message)
            log_lines.append(f"failed: {message}")
        else:
            logger.exception("stage %s of run %s failed", stage.pk, stage.run_id)
            log_lines.extend(traceback.format_exc().splitlines()[-30:])
        try:
            reporter.phase = {}
            reporter.flush()
        except Exception:  # the live state is a nicety; the stage must still end failed with its own reason
            logger.exception("stage %s: last progress not written", stage.pk)
        stage_fail(stage=stage, message=message, now=timezone.now())
        return StageRun.Status.FAILED
    finally:
        heartbeat.stop()
        for watched_logger in watched:
            watched_logger.removeHandler(handler)


def _finish_succeeded(*, stage: StageRun, start: ModelVersion, out_dir: Path, metrics: dict) -> str:
    spec = engine_stages.stage_spec(stage.kind)
    saved = describe_saved_model(out_dir)
    now = timezone.now()
    with transaction.atomic():
        stage = StageRun.objects.select_for_update().select_related("run").get(pk=stage.pk)
        # Registered with the stage's success in one transaction: a succeeded stage is never claimed again.
        version = model_version_register(
            name=f"run{stage.run_id}-{stage.position}-{stage.kind}-{stage.peft}",
            kind=ModelVersion.Kind.REWARD if spec.produces == "reward" else ModelVersion.Kind.POLICY,
            saved=saved,
            source=f"{stage.kind} stage ({stage.peft}) of training run #{stage.run_id}",
            parent=start,
            metrics={key: float(value) for key, value in metrics.items() if isinstance(value, int | float)},
            dataset_hash=stage.run.dataset_hash,
        )
        stage.status = StageRun.Status.SUCCEEDED
        stage.output_model = version
        stage.finished_at = now
        stage.heartbeat_at = now
        stage.save(update_fields=["status", "output_model", "finished_at", "heartbeat_at"])
        following = stage.run.stages.filter(position__gt=stage.position).order_by("position").first()
        if following is None:
            TrainingRun.objects.filter(pk=stage.run_id).update(
                status=TrainingRun.Status.SUCCEEDED, finished_at=now
            )
            run = TrainingRun.objects.get(pk=stage.run_id)
            transaction.on_commit(lambda: training_run_succeeded.send(sender=TrainingRun, run=run))
        else:
            # Quiet: a broker outage here must not fail the finished stage; the maintenance pass sends the next.
            transaction.on_commit(lambda: stage_enqueue(stage_run=following, quiet=True))
    return StageRun.Status.SUCCEEDED
