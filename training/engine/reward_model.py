"""Reward-model stage: TRL `RewardTrainer` (Bradley-Terry on chosen vs rejected), plus loading and scoring.

Loss per pair: -log σ(r(chosen) − r(rejected) − margin). The optional margin comes from the rank distance of the two
responses in a k-way ranking (`data.pairs_from_ranking`); ties give no pair. A held-out split (never trained on)
reports pairwise accuracy and the mean reward margin, the numbers that say whether the model learned the preference.

Used by PPO and the sampling service:
    model, tokenizer = load_reward_model(path, device)
    rewards = score_texts(model, tokenizer, prompts_messages, completions, batch_size=16)  # float32, one per text
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from datasets import Dataset

from training.engine import hf_stage
from training.engine.common import (
    Bounds,
    ModelRef,
    StageConfig,
    StageInputs,
    StageResult,
    pick_device,
    seed_everything,
)
from training.engine.data import conversation_text, preference_pairs, split_held_out
from training.engine.finetuning_methods import (
    autocast_for,
    base_dtype_for,
    load_model_ref,
    prepare_model,
)

STAGE_NAME = "reward"


@dataclass
class RewardStageConfig(StageConfig):
    learning_rate: float = 5e-5
    held_out_fraction: float = 0.1  # of the pairs, kept out of training to measure accuracy
    margin_per_rank: float = 0.0  # ranking rows: margin = this × rank distance; 0 turns the margin off
    use_margin: bool = True  # use a "margin" column when the data has one
    center_rewards_coefficient: float | None = None  # pulls mean reward towards 0 (TRL's option)
    eval_batch_size: int = 16
    log_every: int = 1  # optimizer steps between progress reports

    LIMITS: ClassVar[dict[str, Bounds]] = {
        "held_out_fraction": Bounds(0, 1, high_open=True),
        "margin_per_rank": Bounds(0, 100),
        "center_rewards_coefficient": Bounds(0, 100),
        "eval_batch_size": Bounds(1, 4096),
    }


def load_reward_model(path: Path, device="cpu", dtype=None):
    """A trained reward model (full folder or bottleneck-adapter artifact), in eval mode, with its tokenizer."""
    model, tokenizer = load_model_ref(ModelRef(path=Path(path)), device, task="reward", dtype=dtype)
    return model.eval(), tokenizer


@torch.no_grad()
def score_texts(
    model,
    tokenizer,
    prompts_messages: list[list[dict]],
    completions: list,
    batch_size: int = 16,
    max_length: int | None = None,
) -> torch.Tensor:
    """Scalar reward for each (prompt messages, completion) pair; completions are strings or assistant messages.

    Texts are formatted exactly as RewardTrainer formats them (chat template of prompt + completion). Long texts are
    cut from the left so the completion's end, where the score is read, is always kept. Returns float32 on the
    model's device.
    """
    if len(prompts_messages) != len(completions):
        raise ValueError(f"{len(prompts_messages)} prompts but {len(completions)} completions")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = [
        conversation_text(tokenizer, prompt, completion)
        for prompt, completion in zip(prompts_messages, completions, strict=True)
    ]
    previous_truncation_side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    scores = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                add_special_tokens=False,
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            with autocast_for(device):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            scores.append(logits[:, 0].float())
    finally:
        tokenizer.truncation_side = previous_truncation_side
        model.train(was_training)
    return torch.cat(scores) if scores else torch.empty(0, device=device)


def pairwise_accuracy(
    model, tokenizer, pairs: Dataset, batch_size: int = 16, max_length: int | None = None
) -> dict:
    """How often chosen outscores rejected, and by how much on average (ties count as wrong)."""
    prompts = list(pairs["prompt"])
    chosen = score_texts(model, tokenizer, prompts, list(pairs["chosen"]), batch_size, max_length)
    rejected = score_texts(model, tokenizer, prompts, list(pairs["rejected"]), batch_size, max_length)
    margins = chosen - rejected
    return {"accuracy": float((margins > 0).float().mean()), "mean_margin": float(margins.mean())}


def run(config: RewardStageConfig, inputs: StageInputs) -> StageResult:
    from trl import (  # TRL loads in a worker that runs a stage, not wherever this is
        RewardConfig,
        RewardTrainer,
    )

    seed_everything(config.seed)
    device = pick_device(config.device)
    pairs = preference_pairs(inputs.data, config.margin_per_rank)
    columns = ["prompt", "chosen", "rejected"]
    if config.use_margin and "margin" in pairs.column_names:
        columns.append("margin")
    pairs = pairs.select_columns(columns)
    train_pairs, held_out_pairs = split_held_out(pairs, config.held_out_fraction, config.seed)

    model, tokenizer = load_model_ref(
        inputs.base, device, task="reward", dtype=base_dtype_for(device, config.peft)
    )
    model = prepare_model(model, config.peft)
    run = hf_stage.train(
        RewardTrainer,
        RewardConfig,
        config,
        inputs,
        model=model,
        tokenizer=tokenizer,
        train_dataset=train_pairs,
        task="reward",
        center_rewards_coefficient=config.center_rewards_coefficient,
        disable_dropout=True,
    )
    if (cancelled := run.cancelled_result()) is not None:
        return cancelled

    model = run.trainer.model
    metrics = run.callback.final_metrics()
    if held_out_pairs is not None:
        held_out = pairwise_accuracy(
            model, tokenizer, held_out_pairs, config.eval_batch_size, config.max_length
        )
        metrics.update({f"held_out_{key}": value for key, value in held_out.items()})
        metrics["held_out_pairs"] = float(len(held_out_pairs))
    metrics["train_pairs"] = float(len(train_pairs))
    return run.completed_result(tokenizer, config, inputs, stage=STAGE_NAME, metrics=metrics)
