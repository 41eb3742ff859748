"""Write paths of training runs: launch, cancel, resume, retry. Nothing long runs here: stages run in Celery."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from exports.filters import PreferenceFilters
from labeling.models import Project
from loop.services.sampling import sampling_options_validate
from registry.artifacts import model_version_folder
from registry.models import ModelVersion
from registry.selectors import root_policies
from training.engine import stages as engine_stages
from training.engine.base_model import linear_module_names
from training.engine.common import checkpoint_dir_for, unmatched_lora_targets, unmatched_targets_message
from training.jobs import run_enqueue, stage_enqueue
from training.models import StageRun, TrainingRun
from training.services import datasets
from training.services.capacity import stages_fit_memory
from training.services.distributed_launch import stages_fit_workers

PRESET_STAGES: dict[str, tuple[str, ...]] = {
    TrainingRun.Preset.RLHF: ("sft", "reward", "ppo"),
    TrainingRun.Preset.RFT: ("sft", "ppo"),
    TrainingRun.Preset.PREFERENCE: ("sft", "contrastive"),
    TrainingRun.Preset.REWARD: ("reward",),
    TrainingRun.Preset.SFT: ("sft",),
}
# What a preset fixes in a stage's config, whatever the form says.
PRESET_FIXED: dict[tuple[str, str], dict] = {
    (TrainingRun.Preset.RLHF, "ppo"): {"reward_source": "reward_model"},
    (TrainingRun.Preset.RFT, "ppo"): {"reward_source": "rules"},
}

# Sizes of a round: the stage configs a size starts from (the form's key hyperparameters and the advanced JSON
# override them). "cpu_demo" finishes in minutes on two CPU cores with the bundled 135M model: short sequences, few
# steps, one PPO epoch over small rollouts (use it with LoRA).
SIZE_PRESETS: dict[str, dict[str, dict]] = {
    "default": {},
    "cpu_demo": {
        "sft": {"max_steps": 8, "batch_size": 4, "max_length": 128, "checkpoint_every": 4},
        "reward": {
            "max_steps": 8,
            "batch_size": 4,
            "max_length": 128,
            "checkpoint_every": 4,
            "eval_batch_size": 8,
        },
        "ppo": {
            "max_steps": 4,
            "batch_size": 4,
            "ppo_epochs": 1,
            "max_new_tokens": 24,
            "max_length": 128,
            "reward_batch_size": 4,
            "checkpoint_every": 2,
        },
        "contrastive": {"max_steps": 8, "batch_size": 4, "max_length": 128, "checkpoint_every": 4},
    },
}
SIZE_CHOICES = [
    ("default", "Stage defaults (a GPU worker)"),
    ("cpu_demo", "CPU demo: a few minutes on a laptop CPU (short texts, few steps; use LoRA)"),
]


def derived_stage_values(kind: str, values: dict) -> dict:
    """Values that follow from others when not given: PPO's mini-batch from its batch (never larger), its new
    tokens from max_length (at most half of it), so one changed batch size or length cannot break the preset."""
    if kind != "ppo":
        return values
    values = dict(values)
    defaults = engine_stages.config_defaults("ppo")
    batch_size = values.get("batch_size", defaults["batch_size"])
    if "mini_batch_size" not in values and isinstance(batch_size, int) and not isinstance(batch_size, bool):
        values["mini_batch_size"] = max(1, min(defaults["mini_batch_size"], batch_size))
    max_length = values.get("max_length", defaults["max_length"])
    if "max_new_tokens" not in values and isinstance(max_length, int) and not isinstance(max_length, bool):
        values["max_new_tokens"] = max(1, min(defaults["max_new_tokens"], max_length // 2))
    return values


@dataclass(frozen=True)
class LaunchPlan:
    preset: str
    stages: list[tuple[str, str, dict]]  # (kind, peft method, validated config as a dict)
    filters: PreferenceFilters
    formats: tuple[str, ...]


def launch_plan_validate(
    *,
    preset: str,
    peft: str | dict[str, str] | None = None,
    stage_configs: dict | None = None,
    filters: dict | None = None,
) -> LaunchPlan:
    """Validate everything a launch needs; raise ValidationError with one message per bad field.

    Field names are `preset`, `peft` / `peft.<kind>`, `filters.<name>`, and `<kind>.<dotted config field>` for
    stage configs, so the form can show each error beside its input. Values not given that follow from given ones
    are derived (`derived_stage_values`). The PEFT method of a stage comes from `peft`
    or from the stage config's `peft.method` (giving both, differently, is an error); "full" when neither says.
    """
    errors: dict[str, list[str]] = {}
    if preset not in PRESET_STAGES:
        raise ValidationError(
            {"preset": [f"Unknown preset {preset!r}; choose one of {', '.join(PRESET_STAGES)}."]}
        )
    kinds = PRESET_STAGES[preset]
    runs_what = f"Preset {preset} runs {', '.join(kinds)}"
    if not isinstance(stage_configs or {}, dict):
        raise ValidationError(
            {"stage_configs": ['Give an object of stage objects, e.g. {"sft": {"max_steps": 50}}.']}
        )
    stage_configs = dict(stage_configs or {})
    for kind in stage_configs:
        if kind not in kinds:
            errors.setdefault("config", []).append(f"{runs_what}; it has no {kind} stage.")
    if isinstance(peft, dict):
        for kind in peft:
            if kind not in kinds:
                errors.setdefault(f"peft.{kind}", []).append(f"{runs_what}; it has no {kind} stage.")
    elif peft is not None and not isinstance(peft, str):
        errors.setdefault("peft", []).append('A method name, or an object {"stage kind": "method"}.')
        peft = None
    planned: list[tuple[str, str, dict]] = []
    for kind in kinds:
        values = stage_configs.get(kind) or {}
        if not isinstance(values, dict):
            errors.setdefault(kind, []).append('must be an object of config fields, e.g. {"max_steps": 50}')
            continue
        values = dict(values)
        stage_peft = values.get("peft") or {}
        usable = True  # False: an error is recorded, but the rest of the config is still checked
        if not isinstance(stage_peft, dict):
            errors.setdefault(f"{kind}.peft", []).append(
                'must be an object of PEFT settings, e.g. {"method": "lora", "lora_r": 8}'
            )
            stage_peft, usable = {}, False
        chosen = peft.get(kind) if isinstance(peft, dict) else peft
        own = stage_peft.get("method")
        if chosen is not None and own is not None and chosen != own:
            errors.setdefault(f"{kind}.peft.method", []).append(
                f"{own!r} here but {chosen!r} in the PEFT choice of the launch; give the method once."
            )
            usable = False
        method = chosen or own or "full"
        if method not in StageRun.Peft.values:
            errors.setdefault(f"{kind}.peft.method", []).append(
                f"Choose one of {', '.join(StageRun.Peft.values)}."
            )
            method, usable = "full", False
        values["peft"] = {**stage_peft, "method": method}
        values.update(PRESET_FIXED.get((preset, kind), {}))
        values = derived_stage_values(kind, values)
        try:
            config = engine_stages.config_from_dict(kind, values)
        except engine_stages.StageConfigError as exc:
            for field, message in exc.errors.items():
                errors.setdefault(f"{kind}.{field}", []).append(message)
            continue
        if not usable:
            continue
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


def launch_validate(
    *,
    preset: str,
    base_model: ModelVersion | None,
    peft: str | dict[str, str] | None = None,
    stage_configs: dict | None = None,
    filters: dict | None = None,
    sample_after: dict | None = None,
) -> tuple[LaunchPlan, ModelVersion]:
    """Everything `training_run_launch` checks before it touches the data, with all errors in one ValidationError:
    the plan, `sample_after.<option>`, `base_model`, and LoRA target modules against the base model's modules."""
    errors: dict[str, list[str]] = {}
    plan = None
    try:
        plan = launch_plan_validate(preset=preset, peft=peft, stage_configs=stage_configs, filters=filters)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if sample_after is not None:
        try:  # the options of the sampling job the run starts when it succeeds: the loop's to check
            sampling_options_validate(sample_after)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                key = "sample_after" if field == "__all__" else f"sample_after.{field}"
                errors.setdefault(key, []).extend(messages)
    base_model = base_model or default_base_model()
    if base_model is None:
        errors["base_model"] = ["No base model is registered: run `manage.py import_base_model`."]
    elif base_model.kind != ModelVersion.Kind.POLICY:
        errors["base_model"] = ["The base model must be a policy."]
    elif plan is not None:
        _validate_lora_targets(plan, base_model, errors)
        stages_fit_memory(stages=plan.stages, base_model=base_model, errors=errors)
        stages_fit_workers(stages=plan.stages, errors=errors)
    if errors:
        raise ValidationError(errors)
    return plan, base_model


def _validate_lora_targets(plan: LaunchPlan, base_model: ModelVersion, errors: dict[str, list[str]]) -> None:
    """LoRA's target modules must name modules of the base model (every stage of a run shares its architecture)."""
    lora_stages = [(kind, config) for kind, method, config in plan.stages if method == StageRun.Peft.LORA]
    if not lora_stages:
        return
    try:
        names = linear_module_names(model_version_folder(base_model))
    except (OSError, ValueError):
        return  # an unreadable base fails its first stage with the reason; nothing to compare against here
    if not names:
        return
    for kind, config in lora_stages:
        if missing := unmatched_lora_targets(names, config["peft"]["lora_target_modules"]):
            errors.setdefault(f"{kind}.peft.lora_target_modules", []).append(
                unmatched_targets_message(missing, names)
            )


def preset_data_formats(preset: str) -> tuple[str, ...]:
    """The snapshot files (sft, pairwise, prompts) the stages of a preset train on."""
    return tuple(sorted({engine_stages.stage_spec(kind).data_format for kind in PRESET_STAGES[preset]}))


def default_base_model() -> ModelVersion | None:
    """The policy new rounds start from by default: the newest root policy (the bundled model is the first)."""
    return root_policies().order_by("-id").first()


def training_run_launch(
    *,
    project: Project,
    preset: str,
    created_by=None,
    base_model: ModelVersion | None = None,
    peft: str | dict[str, str] | None = None,
    stage_configs: dict | None = None,
    filters: dict | None = None,
    sample_after: dict | None = None,
) -> TrainingRun:
    """Validate, freeze the dataset, create the run and its stages, and enqueue the first stage on `gpu`.

    Returns at once; on invalid input raises ValidationError and creates and enqueues nothing. When the broker is
    down the run is saved and BrokerUnavailable is raised after the commit: the run starts once the broker is back.
    """
    plan, base_model = launch_validate(
        preset=preset,
        base_model=base_model,
        peft=peft,
        stage_configs=stage_configs,
        filters=filters,
        sample_after=sample_after,
    )
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
        transaction.on_commit(lambda: run_enqueue(run=run, first=first))
    return run


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
            shutil.rmtree(checkpoint_dir_for(stage.output_dir), ignore_errors=True)
            stage.step = 0
            stage.metrics = []
        stage.status = StageRun.Status.PENDING
        stage.phase = {}  # a worker killed inside a step left its phase behind
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
