"""The stage contract shared by every training stage (see ../shared/design.md):

    run_stage(config: <Stage>Config, data: datasets.Dataset, base: ModelRef, out_dir: Path,
              on_progress: Callable[[StepMetrics], None], should_stop: Callable[[], bool]) -> StageResult

Pure: no Django, no Celery. `on_progress` feeds live charts, `should_stop` makes cancel cooperative (checked once
per optimizer step), checkpoints under `checkpoint_dir_for(out_dir)` make resume work, and the artifact is written
into a staging folder that is renamed to `out_dir` only when complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

PeftMethod = Literal["full", "lora", "adapter"]


@dataclass
class PeftSettings:
    """How a stage adapts the base: all weights, LoRA (PEFT), or a bottleneck adapter (ours, `adapters.py`)."""

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
    peft: PeftSettings = field(default_factory=PeftSettings)

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
class StageResult:
    status: Literal["completed", "cancelled"]
    artifact_path: Path | None  # None when cancelled: no artifact is left behind
    metrics: dict[str, float]
    steps_completed: int


ProgressCallback = Callable[[StepMetrics], None]
StopCallback = Callable[[], bool]


class StageCancelled(Exception):
    """Raised inside a training loop when `should_stop()` says so; stages turn it into a cancelled result."""


def pick_device(preference: str = "auto"):
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


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


def write_json(path: Path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
