"""What the Trainer-based stages (SFT, reward model) share: progress/cancel callback, arguments, checkpoints.

The stage contract (common.py) asks for live progress, cancel within one micro-batch, and resume from the last
checkpoint. With a `transformers.Trainer` that is one callback plus `resume_from_checkpoint`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import TrainerCallback

from training.engine.common import (
    ProgressCallback,
    StageConfig,
    StepMetrics,
    StopCallback,
    check_finite_training,
    pick_device,
)


class ProgressAndCancelCallback(TrainerCallback):
    """Forwards every log to `on_progress`; after each micro-batch asks `should_stop` and stops if told to.

    A cancel between the micro-batches of a step (gradient accumulation) drops that half-accumulated step: its
    gradients are never applied, so the weights, optimizer and scheduler are still those of the last completed
    step. The cancel then saves a checkpoint of that step (when checkpoints are on), so a resumed run continues
    exactly where the cancelled one stopped instead of at the previous multiple of `checkpoint_every`.
    """

    def __init__(
        self,
        on_progress: ProgressCallback,
        should_stop: StopCallback,
        total_steps: int,
        checkpoints_enabled: bool,
        learning_rate: float,
    ):
        self.on_progress = on_progress
        self.learning_rate = learning_rate
        self.should_stop = should_stop
        self.total_steps = total_steps
        self.checkpoints_enabled = checkpoints_enabled
        self.cancelled = False
        self.first_step_values: dict[str, float] = {}  # the first per-step log of this run: "did loss fall?"
        self.last_step_values: dict[str, float] = {}  # the latest per-step log (loss, accuracy, …)
        self.summary: dict[str, float] = {}  # the end-of-training log (runtime, samples/s, mean loss)

    def on_substep_end(self, args, state, control, **kwargs):
        return self._stop_if_asked(control)  # between two micro-batches of one optimizer step

    def on_step_end(self, args, state, control, **kwargs):
        return self._stop_if_asked(control)

    def _stop_if_asked(self, control):
        if self.should_stop():
            self.cancelled = True
            control.should_training_stop = True
            # The Trainer saves at the end of the interrupted epoch, at `global_step`: the last completed step.
            control.should_save = self.checkpoints_enabled
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = {
            key: float(value)
            for key, value in (logs or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        if not values:
            return control
        if "train_runtime" in values:
            self.summary = values
        else:
            self.first_step_values = self.first_step_values or values
            self.last_step_values = values
        self.on_progress(StepMetrics(step=state.global_step, total_steps=self.total_steps, values=values))
        # Raised out of trainer.train(): a NaN loss never recovers, so the stage fails now, with the reason.
        check_finite_training(values, step=state.global_step, learning_rate=self.learning_rate)
        return control

    def final_metrics(self) -> dict[str, float]:
        """The last step's log as `train_*`, plus the run's throughput; what a StageResult reports."""
        metrics = {f"train_{key}": value for key, value in self.last_step_values.items() if key != "epoch"}
        if "loss" in self.first_step_values:
            metrics["train_first_loss"] = self.first_step_values["loss"]
        for key in ("train_runtime", "train_samples_per_second", "train_steps_per_second"):
            if key in self.summary:
                metrics[key] = self.summary[key]
        return metrics


def quiet(trainer):
    """With tqdm off, Trainer prints every log dict to stdout; the stage reports through `on_progress` instead."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def trainer_arguments(config: StageConfig, checkpoint_dir: Path, log_every: int) -> dict:
    """Keyword arguments every TRL config of ours gets (SFTConfig and RewardConfig both subclass TrainingArguments)."""
    device = pick_device(config.device)
    checkpoint_every = config.checkpoint_every
    return {
        "output_dir": str(checkpoint_dir),
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "data_seed": config.seed,
        "max_length": config.max_length,
        # Checkpoints (with optimizer and scheduler state) make resume exact; "no" when disabled.
        "save_strategy": "steps" if checkpoint_every > 0 else "no",
        "save_steps": checkpoint_every if checkpoint_every > 0 else 500,
        "save_only_model": False,
        "logging_steps": log_every,
        "logging_strategy": "steps",
        # The Trainer's default logs the mean of earlier losses in place of a NaN one, which hides a divergence.
        "logging_nan_inf_filter": False,
        "report_to": [],
        # TRL turns gradient checkpointing on by default; at our sizes it only costs time (recomputes activations).
        "gradient_checkpointing": False,
        "bf16": device.type == "cuda",
        "use_cpu": device.type == "cpu",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "remove_unused_columns": True,
    }


def latest_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete `checkpoint-N` folder a previous (cancelled or crashed) run of this stage left, if any.

    A worker killed while the Trainer writes a checkpoint leaves a folder without `trainer_state.json`, which the
    Trainer writes last (after weights, optimizer and RNG state); such a folder is skipped, not resumed from.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    complete = [
        (int(match.group(1)), path)
        for path in checkpoint_dir.iterdir()
        if (match := re.fullmatch(r"checkpoint-(\d+)", path.name))
        and _readable_json(path / "trainer_state.json")
    ]
    return str(max(complete)[1]) if complete else None


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def numeric_log_history(trainer) -> list[dict[str, float]]:
    return [
        {key: float(value) for key, value in entry.items() if isinstance(value, int | float)}
        for entry in trainer.state.log_history
    ]
