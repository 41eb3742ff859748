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

from training.engine.common import (
    Bounds,
    ModelRef,
    StageConfig,
    StageInputs,
    StageResult,
    checkpoint_dir_for,
    pick_device,
    seed_everything,
    staged_output,
)
from training.engine.data import conversation_text, preference_pairs, split_held_out
from training.engine.finetuning_methods import (
    autocast_for,
    load_model_ref,
    prepare_model,
    save_stage_artifact,
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
    from trl import RewardConfig, RewardTrainer

    from training.engine.hf_stage import (
        ProgressAndCancelCallback,
        latest_checkpoint,
        quiet,
        trainer_arguments,
    )

    seed_everything(config.seed)
    device = pick_device(config.device)
    base, out_dir = inputs.base, inputs.out_dir
    pairs = preference_pairs(inputs.data, config.margin_per_rank)
    columns = ["prompt", "chosen", "rejected"]
    if config.use_margin and "margin" in pairs.column_names:
        columns.append("margin")
    pairs = pairs.select_columns(columns)
    train_pairs, held_out_pairs = split_held_out(pairs, config.held_out_fraction, config.seed)

    model, tokenizer = load_model_ref(base, device, task="reward")
    model = prepare_model(model, config.peft)
    checkpoint_dir = checkpoint_dir_for(out_dir)
    callback = ProgressAndCancelCallback(
        inputs.on_progress,
        inputs.should_stop,
        config.max_steps,
        config.checkpoint_every > 0,
        config.learning_rate,
    )
    arguments = RewardConfig(
        **trainer_arguments(config, checkpoint_dir, config.log_every),
        center_rewards_coefficient=config.center_rewards_coefficient,
        disable_dropout=True,
    )
    trainer = quiet(
        RewardTrainer(
            model=model,
            args=arguments,
            train_dataset=train_pairs,
            processing_class=tokenizer,
            callbacks=[callback],
        )
    )
    trainer.train(resume_from_checkpoint=latest_checkpoint(checkpoint_dir))
    steps_completed = trainer.state.global_step
    metrics = callback.final_metrics()
    if callback.cancelled:
        return StageResult(
            status="cancelled", artifact_path=None, metrics=metrics, steps_completed=steps_completed
        )

    model = trainer.model
    if held_out_pairs is not None:
        held_out = pairwise_accuracy(
            model, tokenizer, held_out_pairs, config.eval_batch_size, config.max_length
        )
        metrics.update({f"held_out_{key}": value for key, value in held_out.items()})
        metrics["held_out_pairs"] = float(len(held_out_pairs))
    metrics["train_pairs"] = float(len(train_pairs))
    with staged_output(out_dir) as staging:
        save_stage_artifact(
            model,
            tokenizer,
            config.peft,
            staging,
            stage=STAGE_NAME,
            base=base,
            config=config.to_dict(),
            metrics=metrics,
        )
    return StageResult(
        status="completed", artifact_path=Path(out_dir), metrics=metrics, steps_completed=steps_completed
    )
