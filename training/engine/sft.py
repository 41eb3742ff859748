"""SFT stage: TRL `SFTTrainer`, loss on assistant turns only.

TRL's `assistant_only_loss` needs `{% generation %}` markers in the chat template, and SmolLM2's template has none
(TRL ships patched training templates only for other model families). So conversations are turned into TRL's
prompt/completion format, one row per assistant turn (prompt = everything before that turn, completion = the turn),
and trained with `completion_only_loss`: every assistant turn is learned, no user or system token is, and the
completion includes the end-of-turn token so the model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from training.engine import hf_stage
from training.engine.common import (
    StageConfig,
    StageInputs,
    StageResult,
    pick_device,
    seed_everything,
)
from training.engine.finetuning_methods import (
    base_dtype_for,
    load_model_ref,
    prepare_model,
)

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
    from trl import (  # TRL loads in a worker that runs a stage, not wherever this is imported
        SFTConfig,
        SFTTrainer,
    )

    seed_everything(config.seed)
    device = pick_device(config.device)
    rows = prompt_completion_rows(inputs.data)
    model, tokenizer = load_model_ref(
        inputs.base, device, task="causal_lm", dtype=base_dtype_for(device, config.peft)
    )
    model = prepare_model(model, config.peft)
    run = hf_stage.train(
        SFTTrainer,
        SFTConfig,
        config,
        inputs,
        model=model,
        tokenizer=tokenizer,
        train_dataset=rows,
        task="causal_lm",
        completion_only_loss=True,
        packing=config.packing,
    )
    if (cancelled := run.cancelled_result()) is not None:
        return cancelled
    metrics = {**run.callback.final_metrics(), "train_examples": float(len(rows))}
    return run.completed_result(tokenizer, config, inputs, stage=STAGE_NAME, metrics=metrics)
