"""A round's stage on several processes through the worker's task: live progress from rank 0, a killed rank
failing the stage (resumable), and the checks of what a worker owns (TRAINING_GPUS_PER_WORKER)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from core.services import worker_heartbeat_record
from tests.engine.test_distributed import kill_rank_when_training, rank_processes
from tests.training.factories import TINY_STAGE_CONFIGS, ranked_project, register_tiny_base
from training.models import StageRun, TrainingRun
from training.services import runs as run_services

pytestmark = [pytest.mark.django_db, pytest.mark.distributed]

TWO_PROCESS_SFT = {**TINY_STAGE_CONFIGS["sft"], "max_steps": 12, "checkpoint_every": 1, "processes": 2}


def launch_two_process_sft(launch, tiny_model_dir) -> TrainingRun:
    return launch(
        project=ranked_project(prompts=8),
        preset="sft",
        base_model=register_tiny_base(tiny_model_dir),
        stage_configs={"sft": {**TWO_PROCESS_SFT, "device": "cpu"}},
    )


def test_a_killed_rank_fails_the_stage_with_the_reason_and_a_resume_finishes_it_on_two_processes(
    launch, drain_stages, django_capture_on_commit_callbacks, tiny_model_dir, settings
):
    settings.TRAINING_PROGRESS_WRITE_S = 0
    run = launch_two_process_sft(launch, tiny_model_dir)
    killer = kill_rank_when_training(1)
    drain_stages()
    killer.join()
    stage = run.stages.get()
    run.refresh_from_db()
    assert (stage.status, run.status) == (StageRun.Status.FAILED, TrainingRun.Status.FAILED)
    assert "rank 1 of the 2-process stage was killed by SIGKILL" in stage.error
    assert stage.device == "cpu ×2"
    assert stage.step >= 1 and stage.metrics  # rank 0's progress reached the row before the kill
    assert rank_processes() == {}

    with django_capture_on_commit_callbacks(execute=True):
        run_services.stage_run_resume(stage_run=stage)
    drain_stages()
    stage.refresh_from_db()
    assert stage.status == StageRun.Status.SUCCEEDED, stage.error
    assert stage.step == 12 and stage.output_model is not None
    assert "step 12/12" in stage.log_tail


def test_a_stage_asking_for_more_gpus_than_its_worker_owns_fails_when_claimed(
    launch, drain_stages, tiny_model_dir, settings
):
    settings.TRAINING_GPUS_PER_WORKER = 1
    run = launch_two_process_sft(launch, tiny_model_dir)
    drain_stages()
    stage = run.stages.get()
    assert stage.status == StageRun.Status.FAILED
    assert "asks for 2 processes but this worker owns 1 CPU core(s)" in stage.error


def test_a_launch_asking_for_more_gpus_than_any_gpu_worker_owns_is_refused(tiny_model_dir):
    worker_heartbeat_record(
        hostname="gpu-host-1", queue="gpu", device="cuda:NVIDIA H100", device_count=4, seen_at=timezone.now()
    )
    project, base = ranked_project(prompts=4), register_tiny_base(tiny_model_dir)
    with pytest.raises(ValidationError) as refused:
        run_services.launch_validate(
            preset="sft",
            base_model=base,
            stage_configs={"sft": {**TWO_PROCESS_SFT, "processes": 8, "batch_size": 8}},
        )
    assert (
        "asks for 8 GPUs but the largest gpu worker owns 4" in refused.value.message_dict["sft.processes"][0]
    )
    assert project.pk  # the project the run would train on is untouched
    run_services.launch_validate(preset="sft", base_model=base, stage_configs={"sft": TWO_PROCESS_SFT})


def test_a_gpu_worker_owns_every_gpu_it_sees_unless_told_fewer(settings, monkeypatch):
    import torch

    from core.services import worker_gpus_owned
    from core.tasks import _device

    class Card:  # what torch says of one of four visible 80 GB cards
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Card())
    settings.TRAINING_GPUS_PER_WORKER = -1  # the default: unset
    assert worker_gpus_owned(visible=4) == 4
    assert _device() == ("cuda:NVIDIA H100", 4, 80 * 2**30)  # what its heartbeat reports
    settings.TRAINING_GPUS_PER_WORKER = 2
    assert worker_gpus_owned(visible=4) == 2 and _device()[1] == 2
    settings.TRAINING_GPUS_PER_WORKER = 8  # more than it sees: what it sees
    assert worker_gpus_owned(visible=4) == 4 and _device()[1] == 4
