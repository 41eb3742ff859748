"""Cancel within one micro-batch: a stop request between the micro-batches of a step (gradient accumulation)
stops the stage before that step completes, keeps a checkpoint of the last completed step, and a resume
finishes the run exactly as an uninterrupted one would have. Work is counted in forward passes, not seconds."""

from __future__ import annotations

import pytest
from datasets import Dataset

from training.engine import checkpoints, contrastive, reward_model, sft
from training.engine.common import ModelRef, PeftSettings, StageInputs, StepMetrics, checkpoint_dir_for

MICRO_BATCHES = 4  # gradient_accumulation_steps of every stage here
COMMON = dict(
    max_steps=3,
    batch_size=1,
    gradient_accumulation_steps=MICRO_BATCHES,
    learning_rate=1e-3,
    max_length=64,
    checkpoint_every=100,  # no periodic checkpoint: the only one is the one a cancel saves
    device="cpu",
)


def conversations() -> Dataset:
    return Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": f"Count to {n}"},
                    {"role": "assistant", "content": "1 2 3"},
                ]
            }
            for n in range(16)
        ]
    )


def preference_pairs() -> Dataset:
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"Say something about {n}"}],
                "chosen": [{"role": "assistant", "content": f"{n} is great"}],
                "rejected": [{"role": "assistant", "content": f"{n} is awful"}],
            }
            for n in range(16)
        ]
    )


# kind: (stage module, its config, its data, forward passes per micro-batch, the loss in its metrics)
STAGES = {
    "sft": (sft, sft.SftStageConfig(**COMMON), conversations, 1, "train_loss"),
    "reward": (
        reward_model,
        reward_model.RewardStageConfig(**COMMON, held_out_fraction=0.0),
        preference_pairs,
        1,
        "train_loss",
    ),
    # DPO: the frozen reference's pass, then the policy's, in every micro-batch.
    "contrastive": (contrastive, contrastive.ContrastiveStageConfig(**COMMON), preference_pairs, 2, "loss"),
    # The checkpoint holds only what is trained: LoRA pairs, or a bottleneck adapter and the new score head.
    "sft-lora": (
        sft,
        sft.SftStageConfig(**COMMON, peft=PeftSettings(method="lora", lora_r=4)),
        conversations,
        1,
        "train_loss",
    ),
    "reward-adapter": (
        reward_model,
        reward_model.RewardStageConfig(
            **COMMON, held_out_fraction=0.0, peft=PeftSettings(method="adapter", adapter_bottleneck=8)
        ),
        preference_pairs,
        1,
        "train_loss",
    ),
}


def saved_steps(out_dir) -> list[int]:
    """Steps of the complete checkpoints. A rank killed while saving leaves its `.tmp-step-*` staging folder, which
    no resume reads (`checkpoints.latest`) and the next save removes."""
    folders = list(checkpoint_dir_for(out_dir).iterdir())
    assert all(
        checkpoints.FOLDER_PATTERN.fullmatch(f.name) or f.name.startswith(".tmp-step-") for f in folders
    )
    return [checkpoints.read(f).step for f in folders if checkpoints.FOLDER_PATTERN.fullmatch(f.name)]


@pytest.mark.parametrize("kind", STAGES)
def test_a_cancel_between_micro_batches_stops_before_the_step_ends_and_resume_finishes_the_same(
    kind, tiny_model_dir, tmp_path, forward_calls
):
    module, config, data, forwards_per_micro_batch, loss = STAGES[kind]
    base = ModelRef(tiny_model_dir)
    straight = module.run(config, StageInputs(data(), base, tmp_path / "straight"))
    assert straight.status == "completed" and straight.steps_completed == 3

    forward_calls.count = 0
    # Step 1 takes MICRO_BATCHES micro-batches; the stop request comes when step 2's first one has run.
    stop_at = (MICRO_BATCHES + 1) * forwards_per_micro_batch
    out_dir = tmp_path / "cancelled"
    cancelled = module.run(
        config, StageInputs(data(), base, out_dir, should_stop=lambda: forward_calls.count >= stop_at)
    )
    assert cancelled.status == "cancelled" and cancelled.artifact_path is None and not out_dir.exists()
    assert cancelled.steps_completed == 1
    assert forward_calls.count == stop_at  # not one forward pass after the stop request
    assert saved_steps(out_dir) == [1]  # the last completed step, saved by the cancel

    forward_calls.count = 0
    progress: list[StepMetrics] = []
    resumed = module.run(config, StageInputs(data(), base, out_dir, progress.append))
    assert resumed.status == "completed" and resumed.steps_completed == 3
    assert [report.step for report in progress if loss.removeprefix("train_") in report.values] == [2, 3]
    assert forward_calls.count >= 2 * MICRO_BATCHES * forwards_per_micro_batch  # step 2 again, from its start
    assert resumed.metrics[loss] == pytest.approx(straight.metrics[loss], rel=1e-4, abs=1e-6)
