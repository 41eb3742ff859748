"""Training runs in-process (the worker-level tests live in test_worker_runs.py): launch, stages, registry."""

import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from loop.models import SamplingJob
from loop.services import sampling
from registry.artifacts import base_model_folder, model_version_ref
from registry.models import ModelVersion
from registry.services import model_version_register
from tests.training.factories import TINY_STAGE_CONFIGS, ranked_project, register_tiny_base
from training.engine.base_model import load_saved_model, save_model_atomically
from training.engine.finetuning_methods import load_model_ref
from training.jobs import stale_stages_fail
from training.models import StageRun, TrainingRun
from training.selectors import stage_metrics
from training.services import runs as run_services
from training.services.execution import stage_run_execute

pytestmark = pytest.mark.django_db


def test_launch_validates_every_field_and_creates_nothing(
    tiny_model_dir, enqueued_stages, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        project = ranked_project(prompts=4)
        register_tiny_base(tiny_model_dir)
        with pytest.raises(ValidationError) as excinfo:
            run_services.training_run_launch(
                project=project,
                preset="rlhf",
                peft={"sft": "full", "reward": "bogus", "ppo": "lora"},
                stage_configs={"sft": {"max_steps": 0, "nope": 1}, "ppo": {"learning_rate": "fast"}},
                filters={"min_agreement": 3},
            )
        errors = excinfo.value.message_dict
        assert "reward.peft.method" in errors
        assert errors["sft.max_steps"] == ["must be at least 1"]
        assert "sft.nope" in errors
        assert errors["ppo.learning_rate"] == ["must be a number"]
        assert "filters" in errors
        assert TrainingRun.objects.count() == 0
    assert enqueued_stages == []  # nothing was sent, not even once committed


def test_rft_needs_rules_and_rejects_bad_ones(tiny_model_dir, enqueued_stages):
    project = ranked_project(prompts=4)
    register_tiny_base(tiny_model_dir)
    with pytest.raises(ValidationError, match="at least one rule"):
        run_services.training_run_launch(project=project, preset="rft")
    with pytest.raises(ValidationError) as excinfo:
        run_services.training_run_launch(
            project=project,
            preset="rft",
            stage_configs={"ppo": {"rules": [{"kind": "execute", "code": "1"}]}},
        )
    assert "ppo.rules" in excinfo.value.message_dict
    assert TrainingRun.objects.count() == 0


def test_launch_with_no_matching_rows_is_refused(tiny_model_dir, enqueued_stages):
    project = ranked_project(prompts=4)
    register_tiny_base(tiny_model_dir)
    with pytest.raises(ValidationError, match="No pairwise"):
        run_services.training_run_launch(project=project, preset="reward", filters={"adjudicated_only": True})
    assert TrainingRun.objects.count() == 0


def test_sft_then_contrastive_run_registers_lineage_and_snapshot(
    tiny_model_dir, launch, drain_stages, enqueued_stages
):
    project = ranked_project(prompts=8)
    base = register_tiny_base(tiny_model_dir)
    run = launch(
        project=project,
        preset="preference",
        peft={"sft": "full", "contrastive": "adapter"},
        stage_configs={"sft": TINY_STAGE_CONFIGS["sft"], "contrastive": TINY_STAGE_CONFIGS["contrastive"]},
    )
    assert run.dataset_counts["pairwise"] == 8 and run.dataset_counts["sft"] == 8
    snapshot = Path(settings.ARTIFACT_ROOT) / "datasets" / run.dataset_hash
    assert (snapshot / "pairwise.jsonl").read_text().count("\n") == 8
    assert enqueued_stages == [run.stages.get(position=0).pk]
    drain_stages()

    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    sft, contrastive = run.stages.order_by("position")
    assert sft.status == contrastive.status == StageRun.Status.SUCCEEDED
    assert sft.step == 3
    losses = [point["values"]["loss"] for point in sft.metrics if "loss" in point["values"]]
    assert len(losses) == 3
    assert sft.output_model.parent == base and sft.output_model.produced_by_stage == sft
    assert contrastive.output_model.parent == sft.output_model
    assert contrastive.output_model.base == base
    assert contrastive.output_model.dataset_hash == run.dataset_hash
    # The registered artifact loads as a policy that scores a sequence (adapters and router included).
    model, tokenizer = load_model_ref(model_version_ref(contrastive.output_model), "cpu")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokenizer.encode("What is 2 plus 0?")])).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()

    # Same data, same filters → the same snapshot folder and hash.
    again = launch(project=project, preset="preference")
    assert again.dataset_hash == run.dataset_hash
    assert len(list((Path(settings.ARTIFACT_ROOT) / "datasets").iterdir())) == 1


def test_redelivered_task_for_finished_stage_does_nothing(tiny_model_dir, launch, drain_stages):
    project = ranked_project(prompts=4)
    register_tiny_base(tiny_model_dir)
    run = launch(project=project, preset="sft", stage_configs={"sft": TINY_STAGE_CONFIGS["sft"]})
    drain_stages()
    versions = ModelVersion.objects.count()
    stage = run.stages.get()
    assert stage_run_execute(stage_run_id=stage.pk, worker="again", task_id="again") == "skipped"
    assert ModelVersion.objects.count() == versions
    stage.refresh_from_db()
    assert stage.worker == "test"


def test_cancel_before_start_and_resume_then_sample_after(
    tiny_model_dir, launch, drain_stages, monkeypatch, django_capture_on_commit_callbacks
):
    sampling_jobs: list[int] = []
    monkeypatch.setattr(
        sampling, "sampling_job_enqueue", lambda *, job, quiet=False: sampling_jobs.append(job.pk)
    )
    project = ranked_project(prompts=4)
    register_tiny_base(tiny_model_dir)
    run = launch(
        project=project, preset="sft", stage_configs={"sft": TINY_STAGE_CONFIGS["sft"]}, sample_after={}
    )
    run_services.training_run_cancel(run=run)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED
    drain_stages()  # the already-queued message finds the run cancelled and does nothing
    stage = run.stages.get()
    assert stage.status == StageRun.Status.CANCELLED
    assert sampling_jobs == []  # a cancelled run samples nothing
    with django_capture_on_commit_callbacks(execute=True):
        run_services.stage_run_resume(stage_run=stage)
    drain_stages()
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED
    # sample_after={} asked for sampling with default options: the new policy's job is queued.
    job = SamplingJob.objects.get()
    assert sampling_jobs == [job.pk] and job.model_version == run.stages.get().output_model


def test_stale_heartbeat_marks_running_stage_failed(tiny_model_dir, enqueued_stages, settings):
    project = ranked_project(prompts=4)
    register_tiny_base(tiny_model_dir)
    run = run_services.training_run_launch(
        project=project, preset="sft", stage_configs={"sft": TINY_STAGE_CONFIGS["sft"]}
    )
    stage = run.stages.get()
    old = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_S + 5)
    StageRun.objects.filter(pk=stage.pk).update(
        status=StageRun.Status.RUNNING, heartbeat_at=old, worker="gone@host"
    )
    fresh = StageRun.objects.filter(pk=stage.pk)
    assert stale_stages_fail() == [stage.pk]
    assert fresh.get().status == StageRun.Status.FAILED
    assert "gone@host" in fresh.get().error
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert stale_stages_fail() == []


def _nan_base(tiny_model_dir) -> ModelVersion:
    """The tiny model with one weight matrix of NaN, registered like any base: its very first loss is NaN."""
    model, tokenizer = load_saved_model(tiny_model_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    saved = save_model_atomically(model, tokenizer, base_model_folder("nan-base"))
    return model_version_register(name="nan-base", kind="policy", saved=saved, source="tests")


def test_nan_loss_fails_the_stage_at_once_with_the_reason_and_stores_null_metrics(
    tiny_model_dir, launch, drain_stages
):
    project = ranked_project(prompts=4)
    register_tiny_base(tiny_model_dir)
    run = launch(
        project=project,
        preset="sft",
        base_model=_nan_base(tiny_model_dir),
        stage_configs={"sft": {**TINY_STAGE_CONFIGS["sft"], "max_steps": 50}},
    )
    drain_stages()
    stage = run.stages.get()
    run.refresh_from_db()
    assert stage.status == StageRun.Status.FAILED and run.status == TrainingRun.Status.FAILED
    assert stage.error.startswith("loss became NaN at step 1;"), stage.error
    assert "check the base model" in stage.error and "heartbeat" not in stage.error
    assert stage.step == 1  # not 50 NaN steps
    # The NaN values were stored as null (Postgres refuses NaN in JSON), and the charts get valid JSON.
    assert stage.metrics[0]["values"]["loss"] is None
    json.dumps(dataclasses.asdict(stage_metrics(stage=stage)), allow_nan=False)
    assert "loss became NaN" in stage.log_tail and stage.output_model is None


def test_stored_config_that_launch_would_refuse_fails_at_stage_start(tiny_model_dir, launch, drain_stages):
    project = ranked_project(prompts=4)
    register_tiny_base(tiny_model_dir)
    run = launch(project=project, preset="sft", stage_configs={"sft": TINY_STAGE_CONFIGS["sft"]})
    stage = run.stages.get()
    StageRun.objects.filter(pk=stage.pk).update(config={**stage.config, "learning_rate": 1e308})  # an old row
    drain_stages()
    stage.refresh_from_db()
    assert stage.status == StageRun.Status.FAILED and "learning_rate: must be at most 1" in stage.error
    assert stage.step == 0


@pytest.mark.parametrize("device", ["cuda:99", "cuda"])
def test_unavailable_device_fails_the_stage_once_with_the_reason(
    tiny_model_dir, launch, enqueued_stages, device
):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has the GPU the config asks for")
    project = ranked_project(prompts=4)
    register_tiny_base(tiny_model_dir)
    run = launch(
        project=project, preset="sft", stage_configs={"sft": {**TINY_STAGE_CONFIGS["sft"], "device": device}}
    )
    stage = run.stages.get()
    assert enqueued_stages == [stage.pk]
    assert stage_run_execute(stage_run_id=stage.pk, worker="cpu-box", task_id="t1") == "skipped"
    stage.refresh_from_db()
    run.refresh_from_db()
    assert stage.status == StageRun.Status.FAILED and run.status == TrainingRun.Status.FAILED
    assert stage.error.startswith(f"device {device!r} is not available on this worker"), stage.error
    assert stage.worker == "cpu-box" and stage.finished_at is not None
    assert f"stage 0 (sft): device {device!r}" in run.error
    # A redelivered message does not run it again, and nothing was enqueued behind it: no retry loop.
    assert stage_run_execute(stage_run_id=stage.pk, worker="cpu-box", task_id="t1") == "skipped"
    assert enqueued_stages == [stage.pk] and ModelVersion.objects.count() == 1  # the base alone
