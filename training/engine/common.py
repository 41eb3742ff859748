"""The stage contract shared by every training stage (see docs/engine.md):

    <stage module>.run(config: <Stage>Config, inputs: StageInputs) -> StageResult

`stages.run(config, inputs)` picks the module from the config's class. Pure: no Django, no Celery.
`inputs.on_progress` feeds live charts (StepMetrics after each step; PhaseProgress inside long steps),
`inputs.should_stop` makes cancel cooperative (asked between micro-batches, and in PPO before every forward pass of
its rollouts and scoring, so a cancel lands within seconds), checkpoints under `checkpoint_dir_for(out_dir)`
(`checkpoints.py`) make resume work (a cancel saves the last completed step), and the artifact is written into a
staging folder that is renamed to `out_dir` only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import tempfile
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from datasets import Dataset

PeftMethod = Literal["full", "lora", "adapter"]
BaseDtype = Literal["auto", "float32", "bfloat16"]
Sharding = Literal["auto", "ddp", "fsdp"]


class StageConfigError(ValueError):
    """Invalid stage configuration; `errors` maps a dotted field name (or "__all__") to a message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))


class StageFailure(RuntimeError):
    """A stage stopped for a reason its user can act on; the message is shown as it is, without a traceback."""


class DeviceUnavailableError(StageFailure):
    """The stage's `device` does not exist on this worker (e.g. "cuda" on a CPU-only machine)."""


class TrainingDivergedError(StageFailure):
    """The loss (or the gradient norm) became NaN or infinite: training cannot recover, so the stage stops."""


@dataclass(frozen=True)
class Bounds:
    """The realistic range of a numeric config field: values outside it are refused at launch, by field name."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: `low` itself is refused ("greater than")
    high_open: bool = False

    def error(self, value) -> str | None:
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return None  # types are checked where JSON is converted (stages._convert)
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"must be {'greater than' if self.low_open else 'at least'} {_shown(self.low)}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"must be {'less than' if self.high_open else 'at most'} {_shown(self.high)}"
        return None


def _shown(number: float) -> str:
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e15 else f"{number:g}"


def field_errors(config) -> dict[str, str]:
    """Type and range errors of a config dataclass, by field name.

    Types come from the field annotations (`type_error`), ranges from the `LIMITS` of its class and of every class
    it extends; a field of the wrong type is not range-checked. Every config dataclass checks itself with this
    when it is built, in Python or from JSON (`stages.config_from_dict` only converts JSON values).
    """
    errors = {}
    hints = typing.get_type_hints(type(config))
    for config_field in dataclasses.fields(config):
        annotation, value = hints[config_field.name], getattr(config, config_field.name)
        if dataclasses.is_dataclass(annotation):
            message = None if isinstance(value, annotation) else "must be an object"
        else:
            message = type_error(value, annotation)
        if message is not None:
            errors[config_field.name] = message
    limits: dict[str, Bounds] = {}
    for klass in reversed(type(config).__mro__):
        limits.update(vars(klass).get("LIMITS", {}))
    for name, bounds in limits.items():
        if name in errors or not hasattr(config, name):  # e.g. `log_every`, which only some stages have
            continue
        message = bounds.error(getattr(config, name))
        if message is not None:
            errors[name] = message
    return errors


def type_error(value, annotation) -> str | None:
    """Why `value` does not fit a field annotated `annotation`, in words; None when it fits (ints fit floats)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        messages = [type_error(value, option) for option in args if option is not type(None)]
        return None if None in messages else " or ".join(messages)
    if origin is Literal:
        return None if value in args else f"must be one of {', '.join(repr(arg) for arg in args)}"
    if annotation is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if annotation is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return "must be a number"
        try:
            return None if math.isfinite(float(value)) else "must be a finite number"
        except OverflowError:  # an integer beyond any float
            return "must be a finite number"
    if annotation is str:
        return None if isinstance(value, str) else "must be a string"
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return "must be a list"
        item_type = args[0] if args else object
        if item_type is str and not all(isinstance(item, str) for item in value):
            return "must be a list of strings"
        if (item_type is dict or typing.get_origin(item_type) is dict) and not all(
            isinstance(item, dict) for item in value
        ):
            return "must be a list of objects"
        return None
    if origin is dict or annotation is dict:
        return None if isinstance(value, dict) else "must be an object"
    return None


MAX_SEED = 2**32 - 1  # numpy's seed range; torch's is wider
# Devices a stage can train on. "auto" picks CUDA when the worker has it; "meta" holds no data, so it cannot train.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")
MODULE_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


@dataclass
class PeftSettings:
    """How a stage adapts the base: all weights, LoRA (PEFT), or a bottleneck adapter (ours, `adapters.py`)."""

    LIMITS: ClassVar[dict[str, Bounds]] = {
        "lora_r": Bounds(1, 1024),
        "lora_alpha": Bounds(1, 8192),
        "lora_dropout": Bounds(0, 1, high_open=True),
        "adapter_bottleneck": Bounds(1, 65536),
    }

    method: PeftMethod = "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    adapter_bottleneck: int = 64
    adapter_name: str = "default"
    # The frozen base's weights under LoRA or an adapter (`finetuning_methods.base_dtype_for`): auto is bf16 on
    # CUDA, fp32 elsewhere. Trained parameters are fp32 whatever this says.
    base_dtype: BaseDtype = "auto"

    def __post_init__(self) -> None:
        errors = field_errors(self)
        if "base_dtype" not in errors and self.method == "full" and self.base_dtype == "bfloat16":
            errors["base_dtype"] = (
                "full fine-tuning trains every weight, in fp32 (bf16 autocast on CUDA); bfloat16 is for the frozen "
                "base under lora or adapter"
            )
        if "lora_target_modules" not in errors:
            if not self.lora_target_modules:
                errors["lora_target_modules"] = "name at least one module, e.g. q_proj"
            elif bad := [
                name for name in self.lora_target_modules if not MODULE_NAME_PATTERN.fullmatch(name)
            ]:
                errors["lora_target_modules"] = f"not a module name: {', '.join(map(repr, bad))}"
        if "adapter_name" not in errors and not re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_]{0,63}", self.adapter_name
        ):
            errors["adapter_name"] = "must be a name of letters, digits and _ (at most 64)"
        if errors:
            raise StageConfigError(errors)


def lora_target_matches(module_name: str, target: str) -> bool:
    """PEFT's rule for a list of target modules: the module's full name is the target or ends with ".target"."""
    return module_name == target or module_name.endswith("." + target)


def unmatched_lora_targets(module_names: Iterable[str], targets: Iterable[str]) -> list[str]:
    names = list(module_names)
    return [target for target in targets if not any(lora_target_matches(name, target) for name in names)]


def unmatched_targets_message(missing: list[str], module_names: Iterable[str]) -> str:
    """What to say when LoRA targets match nothing: the missing names and the model's own choices."""
    choices = sorted({name.rsplit(".", 1)[-1] for name in module_names})
    return (
        f"no module of the base model is named {', '.join(map(repr, missing))}; "
        f"its linear modules are {', '.join(choices)}"
    )


@dataclass
class StageConfig:
    """Fields every stage config has; each stage subclasses it with its own hyperparameters."""

    max_steps: int = 100
    learning_rate: float = 1e-4
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    seed: int = 0
    checkpoint_every: int = 50  # optimizer steps; 0 disables checkpoints
    device: str = "auto"  # "auto" picks CUDA when present, else CPU
    # Recompute activations in the backward pass: far less memory, about a third slower. Launch turns it on where
    # the memory plan needs it (engine.memory); the SFT, reward and contrastive stages use it.
    gradient_checkpointing: bool = False
    # CUDA only (ignored on CPU): compile each decoder layer (fast_paths.py). About 40 s of compilation, then
    # 2.4× faster SFT steps on an H200 (benchmarks/RESULTS.md); False for short runs or a debugging session.
    compile: bool = True
    # One process per GPU as a torch.distributed job (DDP) when above 1 (`launcher.py`); `batch_size` stays the
    # global micro-batch, split evenly over the processes. On a CPU worker: gloo processes.
    processes: int = 1
    # How several processes hold the model (`sharding.py`): "ddp" a full copy each, "fsdp" a shard each of the
    # weights, gradients and optimizer state (FSDP2: full fine-tunes too big for one GPU), "auto"
    # DDP when the stage fits one device (engine.memory's estimate), else FSDP.
    sharding: Sharding = "auto"
    peft: PeftSettings = field(default_factory=PeftSettings)

    LIMITS: ClassVar[dict[str, Bounds]] = {
        "max_steps": Bounds(1, 1_000_000),
        "learning_rate": Bounds(0, 1, low_open=True),
        "batch_size": Bounds(1, 4096),
        "gradient_accumulation_steps": Bounds(1, 1024),
        "max_length": Bounds(1, 131_072),
        "seed": Bounds(0, MAX_SEED),
        "checkpoint_every": Bounds(0, 1_000_000),  # 0 disables checkpoints
        "log_every": Bounds(1, 1_000_000),  # in the stages that have it
        "processes": Bounds(1, 64),
    }

    def __post_init__(self) -> None:
        errors = self.errors()
        if errors:
            raise StageConfigError(errors)

    def errors(self) -> dict[str, str]:
        """Every bad value by field name; stages extend it with their cross-field rules."""
        errors = field_errors(self)
        if "device" not in errors and not DEVICE_PATTERN.fullmatch(self.device):
            errors["device"] = "must be 'auto', 'cpu', 'cuda', 'cuda:N' (a GPU index) or 'mps'"
        if "processes" not in errors and self.processes > 1:
            if "batch_size" not in errors and self.batch_size % self.processes:
                errors["batch_size"] = (
                    f"must split evenly over the {self.processes} processes (the global micro-batch)"
                )
            if "device" not in errors and self.device not in ("auto", "cpu", "cuda"):
                errors["device"] = (
                    "must be 'auto', 'cuda' or 'cpu' on several processes (each takes its own GPU)"
                )
        if "processes" not in errors and self.processes == 1 and self.sharding == "fsdp":
            errors["sharding"] = (
                "fsdp shards the model over several processes: set processes to 2 or more, or sharding to 'auto'"
            )
        return errors

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelRef:
    """A complete model folder (config, safetensors, tokenizer) from the registry, optionally with an adapter."""

    path: Path
    name: str = ""
    adapter_path: Path | None = None


@dataclass(frozen=True)
class StepMetrics:
    step: int
    total_steps: int
    values: dict[str, float]


@dataclass(frozen=True)
class PhaseProgress:
    """Where a long step is (PPO: rollout → scoring → update), sent through `on_progress` before the step's own
    StepMetrics. Its numbers come from shapes and the config, never from a device sync."""

    step: int  # the step in progress, counted from 1
    total_steps: int
    phase: str  # a short name: "rollout", "scoring", "update"
    detail: str  # what the phase works on, in words, e.g. "16 prompts, up to 64 new tokens each"
    tokens: int = 0  # tokens the phase processes (an upper bound where padding is unknown without a sync)


@dataclass(frozen=True)
class StageResult:
    status: Literal["completed", "cancelled"]
    artifact_path: Path | None  # None when cancelled: no artifact is left behind
    metrics: dict[str, float]
    steps_completed: int


ProgressCallback = Callable[[StepMetrics | PhaseProgress], None]
StopCallback = Callable[[], bool]


def ignore_progress(progress: StepMetrics | PhaseProgress) -> None:
    """The default `on_progress`: nobody watches (a notebook, a benchmark)."""


def never_stop() -> bool:
    """The default `should_stop`: nothing cancels the stage."""
    return False


@dataclass(frozen=True)
class StageInputs:
    """Everything a stage runs on besides its config; the same for every stage."""

    data: Dataset  # the snapshot rows of the stage's data format (stages.STAGES[kind].data_format)
    base: ModelRef  # the model the stage starts from
    out_dir: Path  # where the finished artifact appears; checkpoints live beside it (checkpoint_dir_for)
    on_progress: ProgressCallback = ignore_progress
    should_stop: StopCallback = never_stop
    reward_model: ModelRef | None = None  # scores PPO's rollouts (reward_source "reward_model" or "mixed")


class StageCancelled(Exception):
    """Raised inside a training loop when `should_stop()` says so; stages turn it into a cancelled result."""


def stop_if_asked(should_stop: StopCallback | None) -> None:
    """Raise StageCancelled when `should_stop` (if any) says so: a cancel point inside a long loop."""
    if should_stop is not None and should_stop():
        raise StageCancelled()


def pick_device(preference: str = "auto"):
    """The torch device for `preference`; DeviceUnavailableError (with the reason) when this machine lacks it."""
    import torch

    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and "LOCAL_RANK" in os.environ:  # a rank of a distributed job: its own GPU
        preference = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if not isinstance(preference, str) or not DEVICE_PATTERN.fullmatch(preference):
        raise DeviceUnavailableError(
            f"device {preference!r} is not a training device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    device = torch.device(preference)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {preference!r} is not available on this worker: it has no usable CUDA GPU "
                "(launch with device 'auto' or 'cpu', or run the stage on a GPU worker)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(
                f"device {preference!r} is not available on this worker: it has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"device {preference!r} is not available on this worker (no Apple GPU)")
    return device


def json_safe(value):
    """`value` with every NaN or infinite float replaced by None: JSON has no NaN, and Postgres refuses it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def check_finite_training(values: dict, *, step: int, learning_rate: float) -> None:
    """Stop at the first NaN or infinite loss (or gradient norm): every later step would be NaN too.

    Step 1's loss comes from the untouched base model, so a NaN there points at the weights or the data, not at
    the learning rate.
    """
    for name in sorted(values, key=lambda name: (name == "grad_norm", name)):  # a loss says more
        value = values[name]
        if not (name.endswith("loss") or name == "grad_norm") or value is None or math.isfinite(value):
            continue
        shown = "NaN" if math.isnan(value) else "infinite"
        if step <= 1 and name.endswith("loss"):
            advice = "before any update could cause it: check the base model's weights and the data"
        else:
            advice = f"lower the learning rate (it is {learning_rate:g})"
        raise TrainingDivergedError(f"{name} became {shown} at step {step}; {advice}")


def training_dtype(device) -> object:
    """bf16 on CUDA (where it is fast and stable), fp32 on CPU (where bf16 matmuls are slow)."""
    import torch

    return torch.bfloat16 if device.type == "cuda" else torch.float32


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def checkpoint_dir_for(out_dir: Path) -> Path:
    """Checkpoints live beside the artifact folder, never inside it, and survive a failed or cancelled stage."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoints")


@contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield a staging folder beside `out_dir`; rename it into place only if the block finishes without error."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; artifacts are immutable")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


STAGE_MANIFEST = "stage.json"  # in every artifact: its stage, layout, base, config and metrics


def read_stage_manifest(path: Path) -> dict | None:
    """The `stage.json` of the artifact folder `path`, or None when it has none (a base model)."""
    manifest = Path(path) / STAGE_MANIFEST
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def write_json(path: Path, payload: dict) -> None:
    """Standard JSON (NaN and infinities as null), so every reader, Postgres included, accepts the file."""
    Path(path).write_text(json.dumps(json_safe(payload), indent=2, sort_keys=True, default=str))
