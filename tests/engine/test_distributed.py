"""Stages on several processes (torch.distributed, gloo on the CPU), launched by torchrun as child processes.

Two processes with the same global batch train what one process trains: the same losses step by step and the same
weights. A cancel reaches both ranks at the same micro-batch, rank 0 keeps the checkpoint, and a resume on two
processes finishes as an uninterrupted run. A killed rank fails the stage at once, with the reason, and no rank is
left running (its resume: tests/training/test_distributed_stages.py). PPO, with its own loop, shards its prompts,
whitens over all ranks' tokens (as one process whitens the whole batch), learns, and keeps the ranks' weights equal.
With `sharding="fsdp"` (FSDP2) the Trainer stages and the contrastive stage (its own loop: a full fine-tune with its
sharded reference, and the LoRA mixture on a sharded base) train the same as on one process with their model
sharded, save a whole artifact, and checkpoint whole tensors that a resume shards again. PPO sharded (policy, critic,
reference copy and reward model) trains as PPO under DDP on as many processes does, and resumes the same way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.engine import test_ppo
from tests.engine.test_cancel import conversations, preference_pairs, saved_steps
from tests.engine.test_ppo import (
    SAY_YES_RULE,
    assert_same_as_uninterrupted,
    learning_config,
    mean_of,
    prompt_data,
    small_config,
)
from training.engine import checkpoints, contrastive, distributed, ppo, reward_model, sft, sharding, stages
from training.engine.common import (
    ModelRef,
    PeftSettings,
    PhaseProgress,
    StageConfigError,
    StageInputs,
    StepMetrics,
    checkpoint_dir_for,
)
from training.engine.launcher import DistributedStageError, LaunchSettings
from training.engine.ppo_rollout import masked_whiten

pytestmark = pytest.mark.distributed
few_words_policy_dir = (
    test_ppo.few_words_policy_dir
)  # the fixture: the tiny model taught to answer in a few words

FAST_POLL = LaunchSettings(poll_s=0.05)
COMMON = dict(
    batch_size=4,  # the global micro-batch: 2 rows on each of 2 processes
    learning_rate=1e-3,
    max_length=64,
    checkpoint_every=100,  # none but the one a cancel saves
    device="cpu",
)
# kind: (its config class, its data, what it adds to the common config, the artifact's trained weights)
STAGES = {
    "sft": (sft.SftStageConfig, conversations, dict(max_steps=4), "model.safetensors"),
    "reward": (
        reward_model.RewardStageConfig,
        preference_pairs,
        dict(max_steps=4, held_out_fraction=0.0),
        "model.safetensors",
    ),
    # Its own loop, with the gradients averaged over the ranks; a full fine-tune, so the weights compare.
    "contrastive": (
        contrastive.ContrastiveStageConfig,
        preference_pairs,
        dict(max_steps=4, peft=PeftSettings(method="full")),
        "model.safetensors",
    ),
    # The parameter-efficient methods under DDP: only the LoRA factors (the artifact: the merged model) or the
    # bottleneck adapters and the score head are trained, and their gradients averaged.
    "sft-lora": (
        sft.SftStageConfig,
        conversations,
        dict(max_steps=4, peft=PeftSettings(method="lora", lora_r=4)),
        "model.safetensors",
    ),
    "reward-adapter": (
        reward_model.RewardStageConfig,
        preference_pairs,
        dict(max_steps=4, held_out_fraction=0.0, peft=PeftSettings(method="adapter")),
        "adapter.safetensors",
    ),
}


def step_losses(progress: list) -> list[float]:
    return [
        report.values["loss"]
        for report in progress
        if isinstance(report, StepMetrics) and "loss" in report.values
    ]


def rank_processes() -> dict[int, tuple[int, Path]]:
    """rank → (process id, job folder) of the distributed stages this test process launched (read from /proc)."""
    return rank_processes_of(os.getpid())


def rank_processes_of(launcher_pid: int) -> dict[int, tuple[int, Path]]:
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            if b"training.engine.distributed" not in arguments:
                continue
            job_dir = Path(arguments[arguments.index(b"training.engine.distributed") + 1].decode())
            environment = dict(
                item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item
            )
            if f'"launcher_pid": {launcher_pid}' in (job_dir / distributed.JOB_FILE).read_text():
                found[int(environment[b"RANK"])] = (int(entry.name), job_dir)
        except (OSError, ValueError, IndexError, KeyError):
            continue  # not ours, or gone while we looked
    return found


def kill_rank_when_training(rank: int) -> threading.Thread:
    """SIGKILL `rank` of the stage this process launches once rank 0 has reported two steps: it is training, and
    (with `checkpoint_every` 1) step 1's checkpoint is written."""

    def kill() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if (found := rank_processes().get(rank)) is not None:
                pid, job_dir = found
                events = job_dir / distributed.EVENTS_FILE
                if events.exists() and events.read_text().count('"type": "step"') >= 2:
                    os.kill(pid, signal.SIGKILL)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    return killer


@pytest.mark.parametrize("kind", STAGES)
def test_two_processes_follow_the_loss_trajectory_of_one_with_the_same_global_batch(
    kind, tiny_model_dir, tmp_path
):
    config_class, data, extra, weights_file = STAGES[kind]
    runs = {}
    for processes in (1, 2):
        progress: list = []
        config = config_class(**COMMON, **extra, processes=processes)
        out_dir = tmp_path / f"on-{processes}"
        result = stages.run(
            config, StageInputs(data(), ModelRef(tiny_model_dir), out_dir, progress.append), FAST_POLL
        )
        assert (
            result.status == "completed" and result.steps_completed == 4 and result.artifact_path == out_dir
        )
        runs[processes] = (step_losses(progress), load_file(str(out_dir / weights_file)))
    (one_losses, one_weights), (two_losses, two_weights) = runs[1], runs[2]
    assert (
        len(two_losses) == 4 and one_losses[-1] < one_losses[0]
    )  # it learns, step by step as on one process
    assert two_losses == pytest.approx(one_losses, rel=1e-3)
    assert two_weights.keys() == one_weights.keys()
    for name, weight in one_weights.items():
        torch.testing.assert_close(two_weights[name], weight, rtol=1e-3, atol=1e-4, msg=name)
    if kind == "sft-lora":  # the merged model moved away from the base only through the trained factors
        base = load_file(str(tiny_model_dir / "model.safetensors"))
        changed = {name for name in base if not torch.equal(base[name], two_weights[name])}
        assert changed and all("proj" in name for name in changed)
    if kind == "reward-adapter":  # the up-projections start at zero: they trained
        assert any(two_weights[name].abs().sum() > 0 for name in two_weights if ".up." in name)


def test_a_cancel_reaches_both_ranks_and_a_two_process_resume_finishes_like_an_uninterrupted_run(
    tiny_model_dir, tmp_path
):
    config = sft.SftStageConfig(**COMMON, max_steps=8, processes=2)
    base = ModelRef(tiny_model_dir)
    straight = sft.run(
        sft.SftStageConfig(**COMMON, max_steps=8), StageInputs(conversations(), base, tmp_path / "one")
    )

    progress: list = []
    out_dir = tmp_path / "two"
    asked_at = []

    def should_stop() -> bool:  # asked by the launcher; the ranks hear it through the stop file
        seen = [report.step for report in progress if isinstance(report, StepMetrics)]
        if seen and seen[-1] >= 2 and not asked_at:
            asked_at.append(seen[-1])
        return bool(asked_at)

    cancelled = stages.run(
        config, StageInputs(conversations(), base, out_dir, progress.append, should_stop), FAST_POLL
    )
    assert cancelled.status == "cancelled" and cancelled.artifact_path is None and not out_dir.exists()
    assert asked_at[0] <= cancelled.steps_completed < 8
    assert saved_steps(out_dir) == [
        cancelled.steps_completed
    ]  # rank 0's checkpoint of the last completed step

    resumed_progress: list = []
    resumed = stages.run(
        config, StageInputs(conversations(), base, out_dir, resumed_progress.append), FAST_POLL
    )
    assert resumed.status == "completed" and resumed.steps_completed == 8
    steps = [
        report.step
        for report in resumed_progress
        if isinstance(report, StepMetrics) and "loss" in report.values
    ]
    assert steps == list(range(cancelled.steps_completed + 1, 9))  # both ranks went on from the checkpoint
    assert resumed.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-3)


def test_a_killed_rank_fails_the_stage_at_once_stops_the_other_and_keeps_the_checkpoint(
    tiny_model_dir, tmp_path
):
    config = sft.SftStageConfig(**{**COMMON, "checkpoint_every": 1}, max_steps=12, processes=2)
    base = ModelRef(tiny_model_dir)
    progress: list = []
    killer = kill_rank_when_training(1)
    started = time.monotonic()
    with pytest.raises(
        DistributedStageError, match=r"rank 1 of the 2-process stage was killed by SIGKILL"
    ) as failed:
        stages.run(config, StageInputs(conversations(), base, tmp_path / "out", progress.append), FAST_POLL)
    killer.join()
    assert time.monotonic() - started < 30  # no hang: torchrun stopped rank 0 as soon as rank 1 died
    assert "Resume the stage" in str(failed.value)
    assert rank_processes() == {}  # no rank outlives the failed stage
    assert not (tmp_path / "out").exists()
    [checkpoint_step] = saved_steps(tmp_path / "out")
    assert 1 <= checkpoint_step < 12

    # The resume on two processes: tests/training/test_distributed_stages.py, through the worker's task.


def test_a_stage_asks_for_processes_it_can_use():
    with pytest.raises(StageConfigError) as uneven:
        sft.SftStageConfig(batch_size=6, processes=4)
    assert "split evenly over the 4 processes" in uneven.value.errors["batch_size"]
    with pytest.raises(StageConfigError) as one_gpu:
        sft.SftStageConfig(batch_size=4, processes=2, device="cuda:1")
    assert "each takes its own GPU" in one_gpu.value.errors["device"]
    assert stages.config_from_dict("reward", {"processes": 2, "batch_size": 4}).processes == 2
    # PPO: the rollout's prompts and each optimizer step's rows split evenly, and a rank's rows hold its micro-batches.
    assert (
        stages.config_from_dict("ppo", {"processes": 2, "batch_size": 4, "mini_batch_size": 2}).processes == 2
    )
    with pytest.raises(StageConfigError) as uneven_rollout:
        stages.config_from_dict("ppo", {"processes": 4, "batch_size": 6, "mini_batch_size": 4})
    assert "split evenly over the 4 processes" in uneven_rollout.value.errors["batch_size"]
    with pytest.raises(StageConfigError) as uneven_minibatch:
        stages.config_from_dict("ppo", {"processes": 2, "batch_size": 6, "mini_batch_size": 3})
    assert uneven_minibatch.value.errors["mini_batch_size"].startswith(
        "mini_batch_size (3) must split evenly over the 2 processes"
    )
    with pytest.raises(StageConfigError) as accumulation:
        stages.config_from_dict(
            "ppo", {"processes": 2, "batch_size": 8, "mini_batch_size": 4, "gradient_accumulation_steps": 4}
        )
    assert (
        "cannot be larger than mini_batch_size (4) / processes (2)"
        in (accumulation.value.errors["gradient_accumulation_steps"])
    )


# ----------------------------------------------------------------------------------------------------------------
# FSDP2 (`sharding="fsdp"`): the Trainer stages with their model sharded over the processes.

SHARDED = {
    # Two micro-batches a step: their gradients are reduce-scattered one by one, staying sharded.
    "sft": (
        sft.SftStageConfig,
        conversations,
        dict(max_steps=4, gradient_accumulation_steps=2),
        "model.safetensors",
    ),
    # LoRA on a sharded base: the artifact is the merged model (and the adapter), as on one process. With gradient
    # checkpointing, which the launch turns on where a stage fits only with it.
    "reward-lora": (
        reward_model.RewardStageConfig,
        preference_pairs,
        dict(
            max_steps=4,
            held_out_fraction=0.25,
            gradient_checkpointing=True,
            peft=PeftSettings(method="lora", lora_r=4),
        ),
        "model.safetensors",
    ),
    # Bottleneck adapters on a sharded frozen base: the artifact is the adapter alone, as on one process.
    "sft-adapter": (
        sft.SftStageConfig,
        conversations,
        dict(max_steps=4, peft=PeftSettings(method="adapter")),
        "adapter.safetensors",
    ),
    # The own loop: DPO with the frozen reference copy sharded too, its log-probs scored on the sharded model.
    "contrastive": (
        contrastive.ContrastiveStageConfig,
        preference_pairs,
        dict(max_steps=4, gradient_accumulation_steps=2, peft=PeftSettings(method="full")),
        "model.safetensors",
    ),
    # The LoRA mixture: a sharded frozen base whose layers hold the experts (one expert of one domain: rank 1's shard
    # of each expert tensor is empty), the router in the root's group.
    "contrastive-mixture": (
        contrastive.ContrastiveStageConfig,
        preference_pairs,
        dict(max_steps=4, peft=PeftSettings(method="lora", lora_r=4)),
        "mixture.safetensors",
    ),
}


@pytest.mark.parametrize("kind", SHARDED)
def test_fsdp_on_two_processes_follows_one_process_and_saves_a_plain_model(
    kind, tiny_model_dir, tmp_path, caplog
):
    config_class, data, extra, weights_file = SHARDED[kind]
    caplog.set_level(
        logging.INFO, logger="training.engine.sharding"
    )  # rank 0's lines, forwarded by the launcher
    runs = {}
    for processes, mode in ((1, "auto"), (2, "fsdp")):
        progress: list = []
        config = config_class(**COMMON, **extra, processes=processes, sharding=mode)
        out_dir = tmp_path / f"on-{processes}"
        result = stages.run(
            config, StageInputs(data(), ModelRef(tiny_model_dir), out_dir, progress.append), FAST_POLL
        )
        assert result.status == "completed" and result.artifact_path == out_dir
        runs[processes] = (step_losses(progress), result.metrics, load_file(str(out_dir / weights_file)))
    # The two-process run did shard (not DDP): rank 0 holds half the parameters (its rows of each tensor), of the
    # policy and of a full fine-tune's reference copy.
    held = re.findall(r"sharded over 2 processes; this one holds ([\d.]+)% of its", caplog.text)
    assert len(held) == (2 if kind == "contrastive" else 1) and all(
        45 <= float(share) <= 55 for share in held
    )
    (one_losses, one_metrics, one_weights), (two_losses, two_metrics, two_weights) = runs[1], runs[2]
    assert len(two_losses) == 4 and one_losses[-1] < one_losses[0]
    assert two_losses == pytest.approx(one_losses, rel=1e-3)
    # The artifact is the whole model (gathered from the shards), with what the run trained: what one process trained.
    assert two_weights.keys() == one_weights.keys()
    for name, weight in one_weights.items():
        torch.testing.assert_close(two_weights[name], weight, rtol=1e-3, atol=1e-4, msg=name)
    if weights_file == "model.safetensors":
        base = load_file(str(tiny_model_dir / "model.safetensors"))
        assert any(not torch.equal(base[name], two_weights[name]) for name in base)
    elif weights_file == "adapter.safetensors":  # the adapters' up-projections start at zero
        assert any(two_weights[name].abs().sum() > 0 for name in two_weights if ".up." in name)
    else:  # the experts' up-projections start at zero
        assert any(two_weights[name].abs().sum() > 0 for name in two_weights if name.endswith("lora_B"))
    if kind in ("sft", "contrastive"):
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "on-2")).state_dict()
        for name, weight in one_weights.items():
            torch.testing.assert_close(loaded[name], weight, rtol=1e-3, atol=1e-4, msg=name)
    if kind.startswith("contrastive"):  # the final evaluation ran on the sharded model, on every rank
        assert two_metrics["final_log_prob_margin"] == pytest.approx(
            one_metrics["final_log_prob_margin"], rel=1e-3, abs=1e-4
        )
    if kind == "reward-lora":  # the held-out evaluation ran on the sharded model, on every rank
        assert two_metrics["held_out_mean_margin"] == pytest.approx(
            one_metrics["held_out_mean_margin"], rel=1e-3
        )
        assert (tmp_path / "on-2" / "lora_adapter" / "adapter_model.safetensors").is_file()


# kind: (stage module, its config class, its data, what it adds to the common config, its loss in the metrics)
RESUMED = {
    "sft": (sft, sft.SftStageConfig, conversations, {}, "train_loss"),
    # The own loop's checkpoint and resume (DPO: the sharded reference is rebuilt from the base, not saved).
    "contrastive": (
        contrastive,
        contrastive.ContrastiveStageConfig,
        preference_pairs,
        dict(peft=PeftSettings(method="full")),
        "loss",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", RESUMED)
def test_fsdp_cancelled_on_two_processes_checkpoints_whole_tensors_and_resumes_like_an_uninterrupted_run(
    kind, tiny_model_dir, tmp_path
):
    stage, config_class, data, extra, loss = RESUMED[kind]
    config = config_class(**COMMON, **extra, max_steps=6, processes=2, sharding="fsdp")
    base = ModelRef(tiny_model_dir)
    straight = stage.run(
        config_class(**COMMON, **extra, max_steps=6), StageInputs(data(), base, tmp_path / "one")
    )
    progress: list = []
    out_dir = tmp_path / "two"

    def stop_after_step_two() -> bool:
        return any(isinstance(report, StepMetrics) and report.step >= 2 for report in progress)

    cancelled = stages.run(
        config, StageInputs(data(), base, out_dir, progress.append, stop_after_step_two), FAST_POLL
    )
    assert cancelled.status == "cancelled" and not out_dir.exists()
    assert 2 <= cancelled.steps_completed < 6
    [path] = checkpoint_dir_for(out_dir).iterdir()
    checkpoint = checkpoints.read(path)
    # Whole tensors, not rank 0's shard: the layout of one process, whatever the number of processes.
    embedding = base_weights = load_file(str(tiny_model_dir / "model.safetensors"))[
        "model.embed_tokens.weight"
    ]
    assert checkpoint.tensors["parameter.model.embed_tokens.weight"].shape == embedding.shape
    moments = [key for key in checkpoint.tensors if key.startswith("optimizer.") and key.endswith(".exp_avg")]
    assert moments and {checkpoint.tensors[key].shape for key in moments} >= {base_weights.shape}

    resumed_progress: list = []
    resumed = stages.run(config, StageInputs(data(), base, out_dir, resumed_progress.append), FAST_POLL)
    assert resumed.status == "completed" and resumed.steps_completed == 6
    assert [
        report.step
        for report in resumed_progress
        if isinstance(report, StepMetrics) and "loss" in report.values
    ] == list(range(cancelled.steps_completed + 1, 7))
    assert resumed.metrics[loss] == pytest.approx(straight.metrics[loss], rel=1e-3)
    straight_weights, resumed_weights = (
        load_file(str(folder / "model.safetensors")) for folder in (tmp_path / "one", out_dir)
    )
    for name, weight in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], weight, rtol=1e-3, atol=1e-4, msg=name)


def test_sharding_is_checked_where_the_config_is_built():
    assert sft.SftStageConfig(batch_size=4, processes=2, sharding="fsdp").sharding == "fsdp"
    reward = stages.config_from_dict("reward", {"processes": 2, "batch_size": 4, "sharding": "fsdp"})
    assert reward.sharding == "fsdp" and stages.config_from_dict("sft", {}).sharding == "auto"
    with pytest.raises(StageConfigError) as unknown:
        stages.config_from_dict("sft", {"sharding": "zero3"})
    assert unknown.value.errors == {"sharding": "must be one of 'auto', 'ddp', 'fsdp'"}
    with pytest.raises(StageConfigError) as one_process:
        stages.config_from_dict("sft", {"sharding": "fsdp"})
    assert "set processes to 2 or more" in one_process.value.errors["sharding"]
    contrastive_values = {"processes": 2, "batch_size": 4, "sharding": "fsdp"}
    assert (
        stages.config_from_dict("contrastive", contrastive_values).sharding == "fsdp"
    )  # its own loop shards
    # PPO's own loop shards too (policy, critic, reference and reward model), or keeps copies when asked.
    several = {"processes": 2, "batch_size": 4, "mini_batch_size": 4}
    assert stages.config_from_dict("ppo", {**several, "sharding": "fsdp"}).sharding == "fsdp"
    assert stages.config_from_dict("ppo", {**several, "sharding": "ddp"}).sharding == "ddp"
    with pytest.raises(StageConfigError) as ppo_on_one:
        stages.config_from_dict("ppo", {"sharding": "fsdp"})
    assert "set processes to 2 or more" in ppo_on_one.value.errors["sharding"]


def test_fsdp_is_refused_for_a_stage_that_cannot_shard(monkeypatch):
    # Every stage shards today; a stage spec that says it cannot is refused "fsdp" where its config is built.
    assert all(spec.shards for spec in stages.STAGES.values())
    monkeypatch.setitem(stages.STAGES, "ppo", dataclasses.replace(stages.STAGES["ppo"], shards=False))
    several = {"processes": 2, "batch_size": 4, "mini_batch_size": 4}
    with pytest.raises(StageConfigError) as copies:
        stages.config_from_dict("ppo", {**several, "sharding": "fsdp"})
    assert copies.value.errors["sharding"] == (
        "the ppo stage keeps a full copy of its models on every process (ddp); "
        "only sft, reward, contrastive shard theirs (fsdp)"
    )
    assert stages.config_from_dict("ppo", {**several, "sharding": "auto"}).sharding == "auto"


def test_auto_sharding_shards_only_a_stage_that_does_not_fit_one_device(tiny_model_dir, monkeypatch):
    from training.engine import memory
    from training.engine.finetuning_methods import load_model_ref

    model, _ = load_model_ref(ModelRef(tiny_model_dir), torch.device("cpu"))
    config = sft.SftStageConfig(batch_size=4, processes=2, max_length=64, device="cpu")
    assert not sharding.uses_fsdp(
        config, model, "cpu", kind="sft", available=1
    )  # one process: nothing to shard over
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun tells each rank
    load = sharding.stage_load(config, "cpu", kind="sft")
    assert load.micro_batch_rows == 2  # each rank's share of the global micro-batch
    needs = memory.training_memory(sharding.model_shape(model), load, gradient_checkpointing=False).total
    assert not sharding.uses_fsdp(config, model, "cpu", kind="sft", available=2 * needs)
    assert sharding.uses_fsdp(config, model, "cpu", kind="sft", available=needs // 4)
    ddp = sft.SftStageConfig(batch_size=4, processes=2, max_length=64, device="cpu", sharding="ddp")
    assert not sharding.uses_fsdp(ddp, model, "cpu", kind="sft", available=needs // 4)  # as asked


LAUNCHER_SCRIPT = """
import sys
from pathlib import Path
from tests.engine.test_cancel import conversations
from training.engine import sft, stages
from training.engine.common import ModelRef, StageInputs
from training.engine.launcher import LaunchSettings

config = sft.SftStageConfig(
    max_steps=200, batch_size=4, learning_rate=1e-3, max_length=64, checkpoint_every=1000, device="cpu", processes=2
)
inputs = StageInputs(conversations(), ModelRef(Path(sys.argv[1])), Path(sys.argv[2]))
stages.run(config, inputs, LaunchSettings(poll_s=0.05))
"""


def test_ranks_whose_launcher_is_killed_stop_at_the_next_micro_batch_and_keep_a_checkpoint(
    tiny_model_dir, tmp_path
):
    """A gpu worker killed mid-stage (SIGKILL, OOM killer) leaves no rank training on: they see their launcher gone,
    stop together as on a cancel and checkpoint, so the resume after the stale-heartbeat check loses nothing."""
    out_dir = tmp_path / "out"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER_SCRIPT, str(tiny_model_dir), str(out_dir)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        job_dir = None
        while time.monotonic() < deadline and job_dir is None:
            for _rank, (_pid, folder) in rank_processes_of(launcher.pid).items():
                events = folder / distributed.EVENTS_FILE
                if events.exists() and events.read_text().count('"type": "step"') >= 2:
                    job_dir = folder
            time.sleep(0.05)
        assert job_dir is not None, "the stage never reported two steps"
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 30
    while rank_processes_of(launcher.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rank_processes_of(launcher.pid) == {}
    [step] = saved_steps(out_dir)
    assert 2 <= step < 200 and not out_dir.exists()
    assert not job_dir.exists()  # rank 0 removed the job folder its launcher could not


# ----------------------------------------------------------------------------------------------------------------
# PPO on several processes. The whitening and the learning run their ranks here (torch.multiprocessing, gloo over a
# file store) rather than through the launcher, so that each rank can hand back what it computed; the cancel and
# resume go through the launcher (torchrun), as a worker runs it.


def in_two_processes(worker, store: Path, *args) -> None:
    """`worker(rank, *args)` on ranks 0 and 1 of a gloo process group; raises if a rank fails."""
    torch.multiprocessing.spawn(join_and_run, args=(worker, str(store), args), nprocs=2, join=True)


def join_and_run(rank: int, worker, store: str, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(
        1
    )  # two ranks share the machine's cores, as torchrun's OMP_NUM_THREADS=1 makes them
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


def whiten_share(
    rank: int, values: torch.Tensor, mask: torch.Tensor, rows_of_rank_0: int, out_dir: Path
) -> None:
    share = slice(0, rows_of_rank_0) if rank == 0 else slice(rows_of_rank_0, None)
    mean, variance = distributed.masked_moments(values[share], mask[share])
    save_file(
        {
            "whitened": masked_whiten(values[share], mask[share]),
            "scaled": masked_whiten(values[share], mask[share], shift_mean=False),
            "moments": torch.stack([mean, variance]),
        },
        str(out_dir / f"rank-{rank}.safetensors"),
    )


def test_whitening_on_two_processes_equals_one_process_whitening_the_concatenated_batch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(6, 5, generator=generator) * 3 + 1
    values[3:] += 4  # rank 1's rows sit elsewhere, and
    mask = torch.ones(6, 5)
    mask[0, 2:] = mask[1, 4:] = mask[4, 1:] = mask[5, 3:] = 0  # the ranks hold different numbers of tokens
    in_two_processes(whiten_share, tmp_path / "store", values, mask, 3, tmp_path)

    ranks = [load_file(str(tmp_path / f"rank-{rank}.safetensors")) for rank in (0, 1)]
    whole = mask.bool()
    expected_mean, expected_variance = values[whole].mean(), values[whole].var(unbiased=False)
    for rank in ranks:  # both ranks hold the statistics of all 19 tokens
        torch.testing.assert_close(rank["moments"], torch.stack([expected_mean, expected_variance]))
    for name, one_process in (
        ("whitened", masked_whiten(values, mask)),
        ("scaled", masked_whiten(values, mask, False)),
    ):
        torch.testing.assert_close(torch.cat([rank[name] for rank in ranks]), one_process, msg=name)
    # Each rank whitening alone would give something else: the test can tell the two apart.
    alone = torch.cat([masked_whiten(values[:3], mask[:3]), masked_whiten(values[3:], mask[3:])])
    assert not torch.allclose(alone, masked_whiten(values, mask), atol=0.1)


def ppo_on_rank(rank: int, config: ppo.PPOConfig, base_dir: Path, out_root: Path) -> None:
    """One rank of a PPO stage, with a stop agreement as the launcher's ranks have (nothing asks it to stop), that
    also keeps this rank's final weights and metrics: only rank 0's would be written otherwise."""
    write_artifact = ppo.save_completed_stage

    def keep_this_rank_weights(model, tokenizer, config, inputs, **kwargs):
        weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        save_file(weights, str(out_root / f"policy-rank-{rank}.safetensors"))
        (out_root / f"rank-{rank}").mkdir()
        kwargs["write_more"](out_root / f"rank-{rank}")  # the value head and the metrics history
        return write_artifact(model, tokenizer, config, inputs, **kwargs)

    ppo.save_completed_stage = keep_this_rank_weights
    stop = distributed.StopAgreement(out_root / "never-written", torch.device("cpu"), launcher_pid=None)
    reports: list = []
    result = ppo.run(
        config, StageInputs(prompt_data(), ModelRef(base_dir), out_root / "ppo", reports.append, stop)
    )
    assert result.status == "completed"
    phases = [report.detail for report in reports if isinstance(report, PhaseProgress)]
    assert "on each of 2 processes" in phases[0]


def test_ppo_on_two_processes_raises_the_rule_reward_and_keeps_the_ranks_weights_equal(
    few_words_policy_dir, tmp_path
):
    config = learning_config(reward_source="rules", rules=[SAY_YES_RULE], processes=2, device="cpu")
    in_two_processes(ppo_on_rank, tmp_path / "store", config, few_words_policy_dir, tmp_path)

    assert (tmp_path / "ppo" / "model.safetensors").is_file()  # rank 0 wrote the artifact
    histories = [
        json.loads((tmp_path / f"rank-{rank}" / ppo.METRICS_FILE).read_text())["history"] for rank in (0, 1)
    ]
    assert histories[0] == histories[1]  # every metric is global: the ranks report the same numbers
    reports = [StepMetrics(entry["step"], config.max_steps, entry) for entry in histories[0]]
    first, last = (
        mean_of(reports, "reward_mean", slice(0, 3)),
        mean_of(reports, "reward_mean", slice(-3, None)),
    )
    assert last > first + 0.2, (first, last)  # seeds 0–2 gained 0.60, 0.49, 0.50 (one process: 0.32–0.65)
    assert max(entry["kl"] for entry in histories[0]) < 10.0  # seeds 0–2 peaked at 3.1–5.8

    policies = [load_file(str(tmp_path / f"policy-rank-{rank}.safetensors")) for rank in (0, 1)]
    critics = [load_file(str(tmp_path / f"rank-{rank}" / ppo.VALUE_HEAD_FILE)) for rank in (0, 1)]
    for one, other in ((policies[0], policies[1]), (critics[0], critics[1])):
        assert one.keys() == other.keys()
        for name, weight in one.items():
            torch.testing.assert_close(other[name], weight, rtol=0, atol=0, msg=name)
    assert critics[0]["linear.weight"].abs().sum() > 0  # the critic was trained (it starts at zero)


@pytest.mark.slow
def test_ppo_cancelled_on_two_processes_resumes_on_two_like_an_uninterrupted_run(
    few_words_policy_dir, tmp_path
):
    config = small_config(max_steps=4, checkpoint_every=100, processes=2, device="cpu")
    base = ModelRef(few_words_policy_dir)

    def metrics_of(progress: list) -> list[StepMetrics]:
        return [report for report in progress if isinstance(report, StepMetrics)]

    straight_progress: list = []
    straight = stages.run(
        config, StageInputs(prompt_data(), base, tmp_path / "straight", straight_progress.append), FAST_POLL
    )
    assert straight.status == "completed" and len(metrics_of(straight_progress)) == 4

    progress: list = []
    out_dir = tmp_path / "cancelled"

    def stop_after_step_two() -> bool:
        return any(report.step >= 2 for report in metrics_of(progress))

    cancelled = stages.run(
        config, StageInputs(prompt_data(), base, out_dir, progress.append, stop_after_step_two), FAST_POLL
    )
    assert cancelled.status == "cancelled" and not out_dir.exists()
    assert 2 <= cancelled.steps_completed < 4
    assert saved_steps(out_dir) == [cancelled.steps_completed]  # rank 0 kept the last completed iteration

    resumed_progress: list = []
    resumed = stages.run(
        config, StageInputs(prompt_data(), base, out_dir, resumed_progress.append), FAST_POLL
    )
    resumed_reports = metrics_of(resumed_progress)
    assert [report.step for report in resumed_reports] == list(range(cancelled.steps_completed + 1, 5))
    # Both ranks went on from the checkpoint with their own sampling streams: as if never interrupted.
    assert_same_as_uninterrupted(resumed, resumed_reports, straight, metrics_of(straight_progress))
    history = json.loads((out_dir / ppo.METRICS_FILE).read_text())["history"]
    assert [entry["step"] for entry in history] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------------------------
# PPO sharded (FSDP2): the policy, its critic, the frozen reference copy and the reward model sharded over the ranks.
# Compared with PPO under DDP on as many processes: PPO's rollout and its minibatches depend on the layout (each rank
# samples its own stream and takes its own rows' means), so it is the DDP run of the same layout, not one process,
# that a sharded run must equal: the same steps on the same rows, with the weights held as shards instead of copies.


def ppo_sharding_config(**overrides) -> ppo.PPOConfig:
    # Mixed rewards: the rule, and the few-words model read as a reward model (its new score head comes from the
    # seed, the same in every run), so the sharded reward model scores too. Two micro-batches an optimizer step on
    # each rank: their gradients are reduce-scattered one by one.
    values = dict(
        max_steps=3,
        batch_size=4,
        mini_batch_size=4,
        gradient_accumulation_steps=2,
        checkpoint_every=100,
        reward_source="mixed",
        processes=2,
        device="cpu",
    )
    return small_config(**{**values, **overrides})


def ppo_step_metrics(progress: list) -> list[StepMetrics]:
    return [report for report in progress if isinstance(report, StepMetrics)]


def run_ppo(config: ppo.PPOConfig, base: ModelRef, out_dir: Path, should_stop=None) -> tuple:
    progress: list = []
    inputs = StageInputs(
        prompt_data(), base, out_dir, progress.append, should_stop or (lambda: False), reward_model=base
    )
    return stages.run(config, inputs, FAST_POLL), ppo_step_metrics(progress)


def test_ppo_sharded_on_two_processes_trains_as_under_ddp_and_saves_a_plain_policy_and_critic(
    few_words_policy_dir, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="training.engine.sharding")
    base = ModelRef(few_words_policy_dir)
    runs = {}
    for mode in ("ddp", "fsdp"):
        # Two iterations: the second samples from the policy the first updated. From the third on, the last-bit
        # differences of the two reduction orders (1e-7 at iteration 2: each micro-batch's loss is scaled by its
        # token share, not an exact 1/2) can flip a sampled token, and the rollouts part ways.
        result, reports = run_ppo(ppo_sharding_config(sharding=mode, max_steps=2), base, tmp_path / mode)
        assert result.status == "completed" and [report.step for report in reports] == [1, 2]
        runs[mode] = (result, reports, tmp_path / mode)
    # It did shard: rank 0 holds about half of the policy, of the reference copy and of the reward model.
    held = re.findall(r"sharded over 2 processes; this one holds ([\d.]+)% of its", caplog.text)
    assert len(held) == 3 and all(45 <= float(share) <= 55 for share in held), held

    (ddp, ddp_reports, ddp_dir), (fsdp, fsdp_reports, fsdp_dir) = runs["ddp"], runs["fsdp"]
    assert_same_as_uninterrupted(fsdp, fsdp_reports, ddp, ddp_reports)  # every metric of every iteration
    assert ddp_reports[-1].values["value_loss"] > 0 and ddp_reports[-1].values["grad_norm"] > 0
    # The artifact: the whole policy and critic, as the DDP run wrote them, and a model folder that loads.
    for weights_file in ("model.safetensors", ppo.VALUE_HEAD_FILE):
        expected, written = (load_file(str(folder / weights_file)) for folder in (ddp_dir, fsdp_dir))
        assert written.keys() == expected.keys()
        for name, weight in expected.items():
            assert written[name].shape == weight.shape, name
            torch.testing.assert_close(written[name], weight, rtol=1e-3, atol=1e-5, msg=name)
    parent = load_file(str(few_words_policy_dir / "model.safetensors"))
    trained = load_file(str(fsdp_dir / "model.safetensors"))
    assert any(not torch.equal(parent[name], trained[name]) for name in parent)  # the policy was trained
    assert load_file(str(fsdp_dir / ppo.VALUE_HEAD_FILE))["linear.weight"].abs().sum() > 0
    history = json.loads((fsdp_dir / ppo.METRICS_FILE).read_text())["history"]
    assert [entry["step"] for entry in history] == [1, 2]


@pytest.mark.slow
def test_ppo_sharded_cancelled_on_two_processes_checkpoints_whole_tensors_and_resumes_like_an_uninterrupted_run(
    few_words_policy_dir, tmp_path
):
    config = ppo_sharding_config(max_steps=4, sharding="fsdp")
    base = ModelRef(few_words_policy_dir)
    straight, straight_reports = run_ppo(config, base, tmp_path / "straight")
    assert straight.status == "completed" and len(straight_reports) == 4

    progress: list = []
    out_dir = tmp_path / "cancelled"

    def stop_after_step_two() -> bool:
        return any(report.step >= 2 for report in ppo_step_metrics(progress))

    inputs = StageInputs(
        prompt_data(), base, out_dir, progress.append, stop_after_step_two, reward_model=base
    )
    cancelled = stages.run(config, inputs, FAST_POLL)
    assert cancelled.status == "cancelled" and not out_dir.exists()
    assert 2 <= cancelled.steps_completed < 4
    [path] = checkpoint_dir_for(out_dir).iterdir()
    checkpoint = checkpoints.read(path)
    assert checkpoint.step == cancelled.steps_completed
    # Whole tensors (rank 0 gathered them), the layout of one process: the policy's, the critic's and AdamW's.
    parent = load_file(str(few_words_policy_dir / "model.safetensors"))
    embedding = parent["model.embed_tokens.weight"]
    assert checkpoint.tensors["parameter.policy.model.embed_tokens.weight"].shape == embedding.shape
    assert checkpoint.tensors["parameter.value_head.linear.weight"].shape == (1, embedding.shape[1])
    moments = [key for key in checkpoint.tensors if key.startswith("optimizer.") and key.endswith(".exp_avg")]
    assert {checkpoint.tensors[key].shape for key in moments} >= {embedding.shape, (1, embedding.shape[1])}
    assert "generator.sampling.rank1" in checkpoint.tensors  # rank 1's own sampling stream

    resumed, resumed_reports = run_ppo(config, base, out_dir)
    assert [report.step for report in resumed_reports] == list(range(cancelled.steps_completed + 1, 5))
    # Each rank took its shard of the checkpoint and went on with its own sampling stream: as if never interrupted.
    assert_same_as_uninterrupted(resumed, resumed_reports, straight, straight_reports)
    for weights_file in ("model.safetensors", ppo.VALUE_HEAD_FILE):
        expected, written = (
            load_file(str(folder / weights_file)) for folder in (tmp_path / "straight", out_dir)
        )
        for name, weight in expected.items():
            torch.testing.assert_close(written[name], weight, rtol=1e-3, atol=1e-5, msg=name)
