"""Training rounds through a real Celery worker process on the Redis broker, as in production."""

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from django.conf import settings as django_settings

from registry.artifacts import model_version_ref
from registry.models import ModelVersion
from tests.training.factories import TINY_STAGE_CONFIGS, ranked_project, register_tiny_base
from tests.workers import celery_worker, wait_until, web_server
from training import estimates
from training.engine.finetuning_methods import load_model_ref
from training.engine.reward_model import load_reward_model, score_texts
from training.jobs import stale_stages_fail
from training.models import StageRun, TrainingRun
from training.services import runs as run_services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

LONG_SFT = {**TINY_STAGE_CONFIGS["sft"], "max_steps": 40, "checkpoint_every": 2, "learning_rate": 1e-4}


@pytest.fixture
def redis_broker(settings) -> str:
    url = os.environ.get("REDIS_TEST_URL")
    if not url:
        pytest.skip("REDIS_TEST_URL is not set; `make test` starts Redis and sets it")
    assert settings.CELERY_BROKER_URL == url, "the test process must publish to the worker's broker"
    return url


def _worker(broker: str, **env):
    # Progress written at every step, so the step the test reads is the step the worker is at.
    extra = {
        "ARTIFACT_ROOT": str(django_settings.ARTIFACT_ROOT),
        "TRAINING_HEARTBEAT_S": "0.5",
        "TRAINING_PROGRESS_WRITE_S": "0",
        # Every question looks the flag up, so a cancel is seen at the next micro-batch (the tests count steps).
        "TRAINING_CANCEL_POLL_S": "0",
        **env,
    }
    return celery_worker(broker_url=broker, queues="gpu", extra_env=extra, ready_timeout=90)


def _wait_run(run: TrainingRun, statuses: set[str], timeout: float) -> TrainingRun:
    def finished():
        run.refresh_from_db()
        return run.status in statuses

    wait_until(finished, timeout=timeout, interval=0.5, message=f"run #{run.pk} to reach {statuses}")
    return run


def _wait_step(stage: StageRun, at_least: int, timeout: float = 120) -> int:
    def reached():
        stage.refresh_from_db()
        return stage.step >= at_least

    wait_until(reached, timeout=timeout, interval=0.2, message=f"stage {stage.pk} to reach step {at_least}")
    return stage.step


@pytest.mark.slow
def test_rlhf_preset_end_to_end_registers_three_models_that_load_and_generate(redis_broker, tiny_model_dir):
    project = ranked_project(prompts=8)
    base = register_tiny_base(tiny_model_dir)
    run = run_services.training_run_launch(
        project=project, preset="rlhf", peft={"sft": "full", "reward": "full", "ppo": "lora"},
        stage_configs={kind: TINY_STAGE_CONFIGS[kind] for kind in ("sft", "reward", "ppo")},
    )  # fmt: skip
    assert run.status == TrainingRun.Status.QUEUED  # launch returns at once
    with _worker(redis_broker) as (hostname, _):
        run = _wait_run(run, {"succeeded", "failed", "cancelled"}, timeout=400)
    assert run.status == TrainingRun.Status.SUCCEEDED, f"{run.error}\n" + "\n".join(
        s.log_tail[-2000:] for s in run.stages.all()
    )
    sft, reward, ppo = run.stages.order_by("position")
    for stage in (sft, reward, ppo):
        assert stage.worker == hostname and stage.device == "cpu"
        assert stage.step == stage.total_steps and stage.metrics, stage.kind
        assert stage.heartbeat_at is not None and stage.celery_task_id
    assert sft.output_model.parent == base and sft.output_model.kind == ModelVersion.Kind.POLICY
    assert (
        reward.output_model.parent == sft.output_model
        and reward.output_model.kind == ModelVersion.Kind.REWARD
    )
    assert ppo.output_model.parent == sft.output_model and ppo.output_model.base == base
    assert "held_out_accuracy" in reward.output_model.metrics
    assert {v.dataset_hash for v in (sft.output_model, reward.output_model, ppo.output_model)} == {
        run.dataset_hash
    }
    assert any("kl" in point["values"] for point in ppo.metrics)
    # Steps are timed and PPO's phases were logged and cleared: later launches estimate from this run's speed.
    assert all("at" in point for stage in (sft, reward, ppo) for point in stage.metrics)
    assert (
        ppo.phase == {} and "step 1: rollout, 4 prompts" in ppo.log_tail and "step 2: update" in ppo.log_tail
    )
    assert estimates.measured_flop_s("ppo", "cpu")[1] == 1
    assert (
        "measured on 1 earlier sft stage"
        in estimates.stage_estimate(
            kind="sft", config=sft.config, num_parameters=base.num_parameters, sizes={}, device="cpu"
        ).basis
    )

    prompt = [{"role": "user", "content": "What is 3 plus 0?"}]
    for version in (sft.output_model, ppo.output_model):
        model, tokenizer = load_model_ref(model_version_ref(version), "cpu")
        inputs = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert output.shape[1] > inputs["input_ids"].shape[1]
    reward_model, reward_tokenizer = load_reward_model(
        Path(django_settings.ARTIFACT_ROOT) / reward.output_model.artifact_path, "cpu"
    )
    scores = score_texts(
        reward_model, reward_tokenizer, [prompt, prompt], ["The answer is 3, because.", "no"]
    )
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_cancel_stops_within_a_step_and_resume_continues_from_the_checkpoint(redis_broker, tiny_model_dir):
    project = ranked_project(prompts=8)
    register_tiny_base(tiny_model_dir)
    run = run_services.training_run_launch(project=project, preset="sft", stage_configs={"sft": LONG_SFT})
    stage = run.stages.get()
    with _worker(redis_broker):
        _wait_step(stage, 3)
        run_services.training_run_cancel(run=run)
        asked_at = stage.step
        run = _wait_run(run, {"cancelled", "failed", "succeeded"}, timeout=60)
        assert run.status == TrainingRun.Status.CANCELLED
        stage.refresh_from_db()
        assert stage.status == StageRun.Status.CANCELLED
        # should_stop is asked between micro-batches and (TRAINING_CANCEL_POLL_S=0) looks the flag up each time:
        # at most the step in flight finishes.
        assert asked_at <= stage.step <= asked_at + 1
        assert not stage.output_dir.exists(), "no artifact after a cancelled stage"
        cancelled_at = stage.step

        run_services.stage_run_resume(stage_run=stage)
        run = _wait_run(run, {"succeeded", "failed", "cancelled"}, timeout=180)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    stage.refresh_from_db()
    steps = [point["step"] for point in stage.metrics if "loss" in point["values"]]
    resumed = steps[steps.index(cancelled_at) + 1 :]
    assert resumed and resumed[0] == cancelled_at + 1, f"resume restarted instead of continuing: {steps}"
    assert stage.step == 40 and stage.output_model is not None


def test_killed_worker_is_detected_by_heartbeat_and_the_stage_resumes(redis_broker, tiny_model_dir, settings):
    settings.TRAINING_STALE_AFTER_S = 3
    project = ranked_project(prompts=8)
    register_tiny_base(tiny_model_dir)
    run = run_services.training_run_launch(project=project, preset="sft", stage_configs={"sft": LONG_SFT})
    stage = run.stages.get()
    with _worker(redis_broker) as (_, process):
        _wait_step(stage, 5)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    stage.refresh_from_db()
    killed_at = stage.step
    assert stage.status == StageRun.Status.RUNNING  # nobody told the database
    assert stale_stages_fail() == []  # the heartbeat is still fresh
    time.sleep(settings.TRAINING_STALE_AFTER_S + 0.5)
    assert stale_stages_fail() == [stage.pk]
    stage.refresh_from_db()
    run.refresh_from_db()
    assert stage.status == StageRun.Status.FAILED and "heartbeats" in stage.error
    assert run.status == TrainingRun.Status.FAILED

    run_services.stage_run_resume(stage_run=stage)
    with _worker(redis_broker):
        run = _wait_run(run, {"succeeded", "failed", "cancelled"}, timeout=180)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    stage.refresh_from_db()
    steps = [point["step"] for point in stage.metrics if "loss" in point["values"]]
    first_after_kill = steps[steps.index(killed_at) + 1]
    # Resumed from the newest complete checkpoint (every 2 steps): not from scratch, not past the kill.
    assert 2 <= first_after_kill <= killed_at + 1, f"expected a restart from the last checkpoint, got {steps}"
    assert stage.output_model is not None


@pytest.mark.slow
def test_a_dead_gpu_worker_is_detected_by_the_web_process_with_no_default_worker(
    redis_broker, tiny_model_dir
):
    """Only a gpu worker, which dies: the web process's own maintenance timer marks its stage failed."""
    project = ranked_project(prompts=8)
    register_tiny_base(tiny_model_dir)
    run = run_services.training_run_launch(project=project, preset="sft", stage_configs={"sft": LONG_SFT})
    stage = run.stages.get()
    web_env = {
        "CELERY_BROKER_URL": redis_broker,
        "ARTIFACT_ROOT": str(django_settings.ARTIFACT_ROOT),
        "TRAINING_STALE_CHECK_S": "0.5",
        "TRAINING_STALE_AFTER_S": "3",
    }
    with web_server(extra_env=web_env), _worker(redis_broker) as (hostname, process):
        _wait_step(stage, 3)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

        def failed():
            stage.refresh_from_db()
            return stage.status == StageRun.Status.FAILED

        # Nothing in this test process checks: no default worker, no beat, only the web server is alive.
        wait_until(failed, timeout=30, interval=0.3, message="the web process to notice the dead worker")
    assert hostname in stage.error and "heartbeats" in stage.error
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
