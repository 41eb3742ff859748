"""What the Trainer-based stages (SFT, reward model) share: one training run of a TRL trainer under the contract.

The stage contract (common.py) asks for live progress, cancel within one micro-batch, and resume from the last
checkpoint in the one layout of `checkpoints.py`. With a `transformers.Trainer` that is a callback (progress,
cancel, when to save) and a subclass that writes and reads its checkpoints through `checkpoints.py` instead of the
Trainer's own files (pickled training arguments, `torch.save`d optimizer and RNG state).

On several processes the model is either replicated (DDP, accelerate's) or sharded with FSDP2 before the Trainer
sees it (`sharding.py`, `StageConfig.sharding`); a sharded model's checkpoints and artifact are gathered in full onto
rank 0, in the same layout as on one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from training.engine import checkpoints, distributed, fast_paths, sharding
from training.engine.common import (
    StageConfig,
    StageInputs,
    StageResult,
    StepMetrics,
    check_finite_training,
    checkpoint_dir_for,
    pick_device,
)
from training.engine.finetuning_methods import (
    Task,
    save_completed_stage,
    trainable_parameters,
)

# The Trainer reads its state from this file of the folder it resumes from.
TRAINER_STATE_FILE = "trainer_state.json"


class ProgressAndCancelCallback(TrainerCallback):
    """Forwards every log to `on_progress`; after each micro-batch asks `should_stop` and stops if told to.

    A cancel between the micro-batches of a step (gradient accumulation) drops that half-accumulated step: its
    gradients are never applied, so the weights, optimizer and scheduler are still those of the last completed
    step. The cancel then saves a checkpoint of that step (when checkpoints are on), so a resumed run continues
    exactly where the cancelled one stopped instead of at the previous multiple of `checkpoint_every`.
    """

    def __init__(self, inputs: StageInputs, config: StageConfig):
        self.on_progress = inputs.on_progress
        self.should_stop = inputs.should_stop
        self.total_steps = config.max_steps
        self.checkpoints_enabled = config.checkpoint_every > 0
        self.learning_rate = config.learning_rate
        self.cancelled = False
        self.start_step = 0  # where this run began (a resumed one: at its checkpoint)
        self.first_step_values: dict[str, float] = {}  # the first per-step log of this run: "did loss fall?"
        self.last_step_values: dict[str, float] = {}  # the latest per-step log (loss, accuracy, …)
        self.summary: dict[str, float] = {}  # the end-of-training log (runtime, samples/s, mean loss)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step
        return control

    def on_substep_end(self, args, state, control, **kwargs):
        return self._stop_if_asked(state, control)  # between two micro-batches of one optimizer step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False  # the last step: the artifact follows, no checkpoint (as every stage)
            return control  # and the finished work is kept, whatever a late cancel says
        return self._stop_if_asked(state, control)

    def _stop_if_asked(self, state, control):
        if self.should_stop():
            self.cancelled = True
            control.should_training_stop = True
            # The Trainer saves at the end of the interrupted epoch, at `global_step`: the last completed step.
            control.should_save = self.checkpoints_enabled and state.global_step > self.start_step
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


def with_stage_checkpoints(trainer_class: type) -> type:
    """`trainer_class` (SFTTrainer, RewardTrainer) saving and resuming through `checkpoints.py`.

    The Trainer still decides when (its `save_steps`, our callback on cancel) and still skips the batches a resumed
    run has seen (from `trainer_state.json`); these four methods replace only what it writes and reads. They are
    private Trainer methods, stable across transformers 4.x and 5.x; `tests/engine/test_cancel.py` would catch a
    change (a resume that does not reproduce an uninterrupted run). A fifth, `_defer_fsdp_gradient_reduction`, is
    the Trainer's (transformers 5.x) for a model sharded before it sees it; the FSDP tests in
    `tests/engine/test_distributed.py` (gradient accumulation, a resume) would catch a change there.
    """

    class StageCheckpointTrainer(trainer_class):
        resume_from: checkpoints.Checkpoint | None = (
            None  # set before train(resume_from_checkpoint=its folder)
        )

        def _save_checkpoint(self, model, trial) -> None:
            self.store_flos()
            parameters, optimizer_state = trainable_parameters(self.model), None
            if sharding.is_sharded(self.model):  # every rank gathers; rank 0 writes the whole tensors
                parameters = sharding.full_parameters(parameters)
                optimizer_state = sharding.full_optimizer_state(self.optimizer)
            checkpoint = checkpoints.capture(
                self.state.global_step,
                parameters=parameters,
                optimizer=self.optimizer,
                optimizer_state=optimizer_state,
                scheduler=self.lr_scheduler,
                documents={TRAINER_STATE_FILE: dataclasses.asdict(self.state)},
            )
            checkpoints.write(Path(self.args.output_dir), checkpoint)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
            parameters = trainable_parameters(self.model)
            if sharding.is_sharded(self.model):  # each rank keeps its shard of the whole saved tensors
                sharding.restore_parameters(parameters, self.resume_from.parameters(parameters))
            else:
                self.resume_from.restore_parameters(parameters)

        def _load_optimizer_and_scheduler(self, checkpoint) -> None:
            if checkpoint is not None:
                if sharding.is_sharded(self.model):
                    sharding.load_full_optimizer_state(self.optimizer, self.resume_from.optimizer_state())
                else:
                    self.resume_from.restore_optimizer(self.optimizer)
                self.resume_from.restore_scheduler(self.lr_scheduler)

        @contextlib.contextmanager
        def _defer_fsdp_gradient_reduction(self):
            # The Trainer's own (for models sharded by `from_pretrained`) reads a `distributed_config` that our
            # sharded models lack. Not deferring at all: each micro-batch's gradients are reduce-scattered at once,
            # so they stay sharded through gradient accumulation (FSDP's memory saving) at one more reduction each.
            yield

        def _load_rng_state(self, checkpoint) -> None:
            if checkpoint is not None:
                self.resume_from.restore_rng()

    StageCheckpointTrainer.__name__ = StageCheckpointTrainer.__qualname__ = f"Stage{trainer_class.__name__}"
    return StageCheckpointTrainer


@dataclass
class TrainerRun:
    trainer: object
    callback: ProgressAndCancelCallback
    task: Task

    def cancelled_result(self) -> StageResult | None:
        """The stage's result when it was cancelled (no artifact), else None."""
        if not self.callback.cancelled:
            return None
        return StageResult(
            status="cancelled",
            artifact_path=None,
            metrics=self.callback.final_metrics(),
            steps_completed=self.trainer.state.global_step,
        )

    def completed_result(
        self, tokenizer, config: StageConfig, inputs: StageInputs, **artifact
    ) -> StageResult:
        """Write the trained model's artifact (`artifact`: the stage's name and metrics) and report it."""
        model = self.trainer.model
        if sharding.is_sharded(model):
            model = self.unsharded_model(config, inputs)  # None on the ranks that write nothing
        return save_completed_stage(
            model,
            tokenizer,
            config,
            inputs,
            steps_completed=self.trainer.state.global_step,
            **artifact,
        )

    def unsharded_model(self, config: StageConfig, inputs: StageInputs):
        """The sharded model whole on rank 0's CPU, None elsewhere (`sharding.unsharded_model`)."""
        return sharding.unsharded_model(self.trainer.model, config, inputs.base, self.task)


def train(
    trainer_class: type,
    arguments_class: type,
    config: StageConfig,
    inputs: StageInputs,
    *,
    model,
    tokenizer,
    train_dataset,
    task: Task,
    **stage_arguments,
) -> TrainerRun:
    """Train `model` with a TRL trainer under the stage contract, resuming from the newest checkpoint if any.
    `task` is how the stage loaded its model ("causal_lm" or "reward"): a sharded model's artifact is rebuilt so."""
    checkpoint_dir = checkpoint_dir_for(inputs.out_dir)
    callback = ProgressAndCancelCallback(inputs, config)
    device = pick_device(config.device)
    arguments = trainer_arguments(config, checkpoint_dir)
    if sharding.uses_fsdp(config, model, device, kind="sft" if task == "causal_lm" else "reward"):
        model = sharding.shard_model(model, device)
        # The Trainer refuses checkpoints of a model that is sharded before it sees it unless it saves "only the
        # model"; it saves nothing itself here: `_save_checkpoint` above writes the weights and the optimizer.
        arguments["save_only_model"] = True
    elif fast_paths.use_compiled_layers(config, device):
        # Not under FSDP: its gathers run as hooks around each layer, which compiling the layer in place would put
        # inside the compiled code (not tried on a GPU yet), so a sharded stage runs its layers eagerly.
        fast_paths.compile_decoder_layers(model)
    trainer = with_stage_checkpoints(trainer_class)(
        model=model,
        args=arguments_class(**arguments, **stage_arguments),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    # With tqdm off, the Trainer prints every log dict to stdout; the stage reports through `on_progress` instead.
    trainer.remove_callback(PrinterCallback)
    resume = checkpoints.latest(checkpoint_dir)
    trainer.resume_from = checkpoints.read(resume) if resume is not None else None
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return TrainerRun(trainer, callback, task)


LOADER_WORKERS_ON_CUDA = 2


def dataloader_workers_for(device) -> int:
    """Data-loader processes of a Trainer stage on `device`."""
    return LOADER_WORKERS_ON_CUDA if device.type == "cuda" else 0


def trainer_arguments(config: StageConfig, checkpoint_dir: Path) -> dict:
    """Keyword arguments every TRL config of ours gets (SFTConfig and RewardConfig both subclass TrainingArguments)."""
    device = pick_device(config.device)
    checkpoint_every = config.checkpoint_every
    loader_workers = dataloader_workers_for(device)
    return {
        "output_dir": str(checkpoint_dir),
        "max_steps": config.max_steps,
        "per_device_train_batch_size": distributed.per_process_batch(config.batch_size),  # same global batch
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "data_seed": config.seed,
        "max_length": config.max_length,
        # Checkpoints (with optimizer and scheduler state) make resume exact; "no" when disabled.
        "save_strategy": "steps" if checkpoint_every > 0 else "no",
        "save_steps": checkpoint_every if checkpoint_every > 0 else 500,
        "logging_steps": config.log_every,
        "logging_strategy": "steps",
        # The Trainer's default logs the mean of earlier losses in place of a NaN one, which hides a divergence.
        "logging_nan_inf_filter": False,
        "report_to": [],
        # TRL turns gradient checkpointing on by default; where a batch fits without it, it only costs time.
        "gradient_checkpointing": config.gradient_checkpointing,
        # Non-reentrant checkpointing needs no input that requires grad, so it works under LoRA and adapters too.
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "bf16": device.type == "cuda",
        "optim": fast_paths.trainer_optimizer_name(device),
        "use_cpu": device.type == "cpu",
        "disable_tqdm": True,
        # The next batch is collated while the GPU runs this one (on CUDA): collated in the training process, it sat
        # between two steps with the GPU idle (an H200, SFT on 256 rows: 0.215 → 0.16 s a step, gpu_stages
        # 2026-12-04). None on a CPU, where loader processes would take cores from the training threads.
        "dataloader_num_workers": loader_workers,
        "dataloader_persistent_workers": loader_workers > 0,
        "ddp_find_unused_parameters": False,  # several processes: every trained parameter gets a gradient
        "remove_unused_columns": True,
    }
