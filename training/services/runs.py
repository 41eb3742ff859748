"""Write paths of training runs: launch, cancel, resume, retry. Nothing long runs here: stages run in Celery."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from core.jobs import BrokerUnavailable, job_send
from labeling.models import Project
from labeling.selectors.preferences import PreferenceFilters
from training.engine import stages as engine_stages
from training.engine.common import checkpoint_dir_for
from training.jobs import STAGE_JOB
from training.models import ModelVersion, StageRun, TrainingRun
from training.services import datasets

PRESET_STAGES: dict[str, tuple[str, ...]] = {
    TrainingRun.Preset.RLHF: ("sft", "reward", "ppo"),
    TrainingRun.Preset.RFT: ("sft", "ppo"),
    TrainingRun.Preset.PREFERENCE: ("sft", "contrastive"),
    TrainingRun.Preset.REWARD: ("reward",),
    TrainingRun.Preset.SFT: ("sft",),
}
# What `sample_after` may hold: the keyword arguments of loop.services.sampling.sampling_job_create it passes on.
SAMPLE_AFTER_OPTIONS = {"pool", "limit", "params", "make_comparisons", "uncertain_share"}
# What a preset fixes in a stage's config, whatever the form says.
PRESET_FIXED: dict[tuple[str, str], dict] = {
    (TrainingRun.Preset.RLHF, "ppo"): {"reward_source": "reward_model"},
    (TrainingRun.Preset.RFT, "ppo"): {"reward_source": "rules"},
}


@dataclass(frozen=True)
class LaunchPlan:
    preset: str
    stages: list[tuple[str, str, dict]]  # (kind, peft method, validated config as a dict)
    filters: PreferenceFilters
    formats: tuple[str, ...]


def launch_plan_validate(
    *,
    preset: str,
    peft: str | dict[str, str] = "full",
    stage_configs: dict | None = None,
    filters: dict | None = None,
) -> LaunchPlan:
    """Validate everything a launch needs; raise ValidationError with one message per bad field.

    Field names are `preset`, `peft`, `filters.<name>`, and `<kind>.<dotted config field>` for stage configs,
    so the form can show each error beside its input.
    """
    errors: dict[str, list[str]] = {}
    if preset not in PRESET_STAGES:
        raise ValidationError(
            {"preset": [f"Unknown preset {preset!r}; choose one of {', '.join(PRESET_STAGES)}."]}
        )
    kinds = PRESET_STAGES[preset]
    stage_configs = dict(stage_configs or {})
    for kind in stage_configs:
        if kind not in kinds:
            errors.setdefault("config", []).append(
                f"Preset {preset} has no {kind} stage (it runs {', '.join(kinds)})."
            )
    planned: list[tuple[str, str, dict]] = []
    for kind in kinds:
        method = peft.get(kind, "full") if isinstance(peft, dict) else peft
        if method not in StageRun.Peft.values:
            errors.setdefault(f"{kind}.peft.method", []).append(
                f"Choose one of {', '.join(StageRun.Peft.values)}."
            )
            continue
        values = dict(stage_configs.get(kind) or {})
        values["peft"] = {**(values.get("peft") or {}), "method": method}
        values.update(PRESET_FIXED.get((preset, kind), {}))
        try:
            config = engine_stages.config_from_dict(kind, values)
        except engine_stages.StageConfigError as exc:
            for field, message in exc.errors.items():
                errors.setdefault(f"{kind}.{field}", []).append(message)
            continue
        if kind == "ppo":
            _validate_reward_rules(config, errors)
        planned.append((kind, method, config.to_dict()))
    try:
        parsed_filters = PreferenceFilters.from_dict(filters or {})
    except (TypeError, ValueError, ValidationError) as exc:
        messages = exc.messages if isinstance(exc, ValidationError) else [str(exc)]
        errors.setdefault("filters", []).extend(messages)
        parsed_filters = None
    if errors:
        raise ValidationError(errors)
    return LaunchPlan(
        preset=preset, stages=planned, filters=parsed_filters, formats=preset_data_formats(preset)
    )


def preset_data_formats(preset: str) -> tuple[str, ...]:
    """The snapshot files (sft, pairwise, prompts) the stages of a preset train on."""
    return tuple(sorted({engine_stages.stage_spec(kind).data_format for kind in PRESET_STAGES[preset]}))


def _validate_reward_rules(config, errors: dict[str, list[str]]) -> None:
    from training.engine.rewards import RuleSpecError, parse_rules

    if config.reward_source in ("rules", "mixed") and not config.rules:
        errors.setdefault("ppo.rules", []).append("Rule-based rewards need at least one rule.")
        return
    if not config.rules:
        return
    try:
        parse_rules(config.rules)
    except RuleSpecError as exc:
        errors.setdefault("ppo.rules", []).append(str(exc))


def default_base_model() -> ModelVersion | None:
    """The policy new rounds start from by default: the newest root policy (the bundled model is the first)."""
    return ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY, parent=None).order_by("-id").first()


def training_run_launch(
    *,
    project: Project,
    preset: str,
    created_by=None,
    base_model: ModelVersion | None = None,
    peft: str | dict[str, str] = "full",
    stage_configs: dict | None = None,
    filters: dict | None = None,
    sample_after: dict | None = None,
) -> TrainingRun:
    """Validate, freeze the dataset, create the run and its stages, and enqueue the first stage on `gpu`.

    Returns at once; on invalid input raises ValidationError and creates and enqueues nothing. When the broker is
    down the run is saved and BrokerUnavailable is raised after the commit: the run starts once the broker is back.
    """
    plan = launch_plan_validate(preset=preset, peft=peft, stage_configs=stage_configs, filters=filters)
    if sample_after is not None:
        unknown = set(sample_after) - SAMPLE_AFTER_OPTIONS
        if unknown:
            raise ValidationError(
                {"sample_after": [f"Unknown sampling options: {', '.join(sorted(unknown))}."]}
            )
    base_model = base_model or default_base_model()
    if base_model is None:
        raise ValidationError(
            {"base_model": ["No base model is registered: run `manage.py import_base_model`."]}
        )
    if base_model.kind != ModelVersion.Kind.POLICY:
        raise ValidationError({"base_model": ["The base model must be a policy."]})
    snapshot = datasets.snapshot_create(project=project, filters=plan.filters, formats=plan.formats)
    empty = [fmt for fmt in plan.formats if snapshot.counts.get(fmt, 0) == 0]
    if empty:
        raise ValidationError(
            {
                "filters": [
                    f"No {', '.join(empty)} rows match these filters in project {project.slug}; nothing to train on."
                ]
            }
        )
    with transaction.atomic():
        run = TrainingRun(
            project=project,
            preset=preset,
            base_model=base_model,
            created_by=created_by,
            config={kind: config for kind, _, config in plan.stages},
            dataset_filters=plan.filters.to_dict(),
            dataset_hash=snapshot.content_hash,
            dataset_counts=snapshot.counts,
            sample_after=sample_after,
        )
        run.full_clean()
        run.save()
        for position, (kind, method, config) in enumerate(plan.stages):
            stage = StageRun(
                run=run,
                position=position,
                kind=kind,
                peft=method,
                config=config,
                total_steps=config["max_steps"],
            )
            stage.full_clean()
            stage.save()
        first = run.stages.order_by("position").first()
        transaction.on_commit(lambda: _run_enqueue(run=run, first=first))
    return run


def _run_enqueue(*, run: TrainingRun, first: StageRun) -> None:
    try:
        stage_enqueue(stage_run=first)
    except BrokerUnavailable as exc:  # the run is saved; its first stage is sent once the broker is back
        raise exc.about(what="training run", pk=run.pk) from exc.cause


def stage_enqueue(*, stage_run: StageRun, quiet: bool = False) -> None:
    """Publish the stage's task on `gpu` (core.jobs: bounded retry; on an outage BrokerUnavailable, or a warning
    when quiet, and the maintenance pass sends it once the broker is back)."""
    job_send(kind=STAGE_JOB, pk=stage_run.pk, quiet=quiet)


@transaction.atomic
def training_run_cancel(*, run: TrainingRun) -> TrainingRun:
    """Ask the running stage to stop after its current optimizer step; stages not started yet are cancelled now."""
    run = TrainingRun.objects.select_for_update().get(pk=run.pk)
    if run.status in (TrainingRun.Status.SUCCEEDED, TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED):
        return run
    run.cancel_requested = True
    now = timezone.now()
    running = run.stages.filter(status=StageRun.Status.RUNNING).exists()
    run.stages.filter(status=StageRun.Status.PENDING).update(
        status=StageRun.Status.CANCELLED, finished_at=now
    )
    if not running:
        run.status = TrainingRun.Status.CANCELLED
        run.finished_at = now
    run.save(update_fields=["cancel_requested", "status", "finished_at"])
    return run


def _restart(*, stage_run: StageRun, from_checkpoint: bool) -> StageRun:
    with transaction.atomic():
        stage = StageRun.objects.select_for_update().select_related("run").get(pk=stage_run.pk)
        if stage.status not in (StageRun.Status.FAILED, StageRun.Status.CANCELLED):
            raise ValidationError(
                {"status": [f"Only a failed or cancelled stage can restart; this one is {stage.status}."]}
            )
        run = stage.run
        if not from_checkpoint:
            import shutil

            from training.services.execution import stage_output_dir

            shutil.rmtree(checkpoint_dir_for(stage_output_dir(stage=stage)), ignore_errors=True)
            stage.step = 0
            stage.metrics = []
        stage.status = StageRun.Status.PENDING
        stage.error = ""
        stage.finished_at = None
        stage.enqueued_at = None  # not sent for this attempt yet
        stage.save()
        # Later stages that were cancelled with the run go back to waiting for this one.
        run.stages.filter(position__gt=stage.position, status=StageRun.Status.CANCELLED).update(
            status=StageRun.Status.PENDING, finished_at=None
        )
        run.status = TrainingRun.Status.QUEUED
        run.cancel_requested = False
        run.error = ""
        run.finished_at = None
        run.save(update_fields=["status", "cancel_requested", "error", "finished_at"])
        transaction.on_commit(lambda: stage_enqueue(stage_run=stage))
    return stage


def stage_run_resume(*, stage_run: StageRun) -> StageRun:
    """Continue a failed or cancelled stage from its last checkpoint (the engine finds it beside the artifact)."""
    return _restart(stage_run=stage_run, from_checkpoint=True)


def stage_run_retry(*, stage_run: StageRun) -> StageRun:
    """Run a failed or cancelled stage again from step 0, dropping its checkpoints."""
    return _restart(stage_run=stage_run, from_checkpoint=False)
