"""SFT stage: TRL `SFTTrainer`, loss on assistant turns only.

TRL's `assistant_only_loss` needs `{% generation %}` markers in the chat template, and SmolLM2's template has none
(TRL ships patched training templates only for other model families). So conversations are turned into TRL's
prompt/completion format, one row per assistant turn (prompt = everything before that turn, completion = the turn),
and trained with `completion_only_loss`: every assistant turn is learned, no user or system token is, and the
completion includes the end-of-turn token so the model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from training.engine.common import (
    StageConfig,
    StageInputs,
    StageResult,
    checkpoint_dir_for,
    pick_device,
    seed_everything,
    staged_output,
)
from training.engine.finetuning_methods import load_model_ref, prepare_model, save_stage_artifact

STAGE_NAME = "sft"


@dataclass
class SftStageConfig(StageConfig):
    learning_rate: float = 2e-5
    # Packs several examples per row without padding. Exact only with an attention kernel that honours
    # per-sequence position ids (flash attention on CUDA); leave off on CPU.
    packing: bool = False
    log_every: int = 1  # optimizer steps between progress reports


def prompt_completion_rows(data: Dataset) -> Dataset:
    """SFT rows as prompt/completion pairs: `messages` rows give one pair per assistant turn; pairs pass through."""
    if "prompt" in data.column_names and "completion" in data.column_names:
        return data.select_columns(["prompt", "completion"])
    if "messages" not in data.column_names:
        raise ValueError(f"SFT rows need `messages` or `prompt` + `completion`; got {data.column_names}")
    rows = []
    for messages in data["messages"]:
        for index, message in enumerate(messages):
            if message["role"] == "assistant" and index > 0:
                rows.append({"prompt": messages[:index], "completion": [message]})
    if not rows:
        raise ValueError("no assistant turn to learn from in the SFT data")
    return Dataset.from_list(rows)


def run(config: SftStageConfig, inputs: StageInputs) -> StageResult:
    from trl import SFTConfig, SFTTrainer

    from training.engine.hf_stage import (
        ProgressAndCancelCallback,
        latest_checkpoint,
        quiet,
        trainer_arguments,
    )

    seed_everything(config.seed)
    device = pick_device(config.device)
    base, out_dir = inputs.base, inputs.out_dir
    rows = prompt_completion_rows(inputs.data)
    model, tokenizer = load_model_ref(base, device, task="causal_lm")
    model = prepare_model(model, config.peft)
    checkpoint_dir = checkpoint_dir_for(out_dir)
    callback = ProgressAndCancelCallback(
        inputs.on_progress,
        inputs.should_stop,
        config.max_steps,
        config.checkpoint_every > 0,
        config.learning_rate,
    )
    arguments = SFTConfig(
        **trainer_arguments(config, checkpoint_dir, config.log_every),
        completion_only_loss=True,
        packing=config.packing,
    )
    trainer = quiet(
        SFTTrainer(
            model=model, args=arguments, train_dataset=rows, processing_class=tokenizer, callbacks=[callback]
        )
    )
    trainer.train(resume_from_checkpoint=latest_checkpoint(checkpoint_dir))
    steps_completed = trainer.state.global_step
    metrics = callback.final_metrics()
    if callback.cancelled:
        return StageResult(
            status="cancelled", artifact_path=None, metrics=metrics, steps_completed=steps_completed
        )

    metrics["train_examples"] = float(len(rows))
    with staged_output(out_dir) as staging:
        save_stage_artifact(
            trainer.model,
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
