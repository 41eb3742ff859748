"""Checkpoints of every stage, in one layout: safetensors for tensors, JSON for the rest, no pickle.

    <out_dir>.checkpoints/step-00000012/
        tensors.safetensors  "parameter.<name>"      the trainable parameters (LoRA, adapter, value head, or all)
                             "optimizer.<i>.<key>"   the optimizer's per-parameter state (Adam's moments and step)
                             "generator.<name>"      the stage's own random generators (PPO's sampling, shuffling)
                             "rng.torch", "rng.cuda.<i>"  the global torch random states
        state.json           {"format", "step", "optimizer": param groups + non-tensor state, "scheduler",
                              "rng": Python's and numpy's random states, "stage": what the stage adds (PPO: its
                              KL coefficient and metrics history)}
        trainer_state.json   Trainer-based stages only: the Trainer's own state, which it reads on resume

A stage captures its state (`capture`, a copy on the CPU), writes it (`write`: into a temporary folder renamed into
place, so a killed worker never leaves a half checkpoint; the older ones are removed), and on resume reads the
newest (`latest` → `read`) and restores its parts (`Checkpoint.restore_*`). Every stage writes one every
`checkpoint_every` steps and when it is cancelled (the last completed step), never at its final step: the artifact
follows. Loading runs no code: safetensors holds only tensors, JSON only data.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training.engine import distributed
from training.engine.common import json_safe

FORMAT = "stage-checkpoint/1"
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
FOLDER_PATTERN = re.compile(r"step-(\d+)")


@dataclass
class Checkpoint:
    """One checkpoint in memory: tensors (on the CPU) and JSON state, as `capture` took them or `read` found them."""

    step: int
    tensors: dict[str, torch.Tensor]
    state: dict
    documents: dict[str, dict] = field(default_factory=dict)  # further JSON files, by file name
    path: Path | None = None  # where it was read from

    @property
    def stage_state(self) -> dict:
        return self.state.get("stage") or {}

    def parameters(self, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The saved parameters by name; ValueError unless they are exactly those of `expected` (the model's)."""
        saved = _with_prefix(self.tensors, "parameter.")
        if set(saved) != set(expected):
            missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
            raise ValueError(
                f"checkpoint {self.path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        return saved

    def restore_parameters(self, parameters: Mapping[str, torch.nn.Parameter]) -> None:
        saved = self.parameters(parameters)
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(saved[name])

    def optimizer_state(self) -> dict:
        """The optimizer's state dict as `optimizer.state_dict()` gave it (tensors on the CPU)."""
        saved = self.state["optimizer"]
        per_parameter: dict[int, dict] = {
            int(index): dict(values) for index, values in saved["state"].items()
        }
        for key, tensor in _with_prefix(self.tensors, "optimizer.").items():
            index, name = key.split(".", 1)
            per_parameter.setdefault(int(index), {})[name] = tensor
        groups = [
            {key: value if key == "params" else _tuples(value) for key, value in group.items()}
            for group in saved["param_groups"]
        ]
        return {"state": per_parameter, "param_groups": groups}

    def restore_optimizer(self, optimizer) -> None:
        optimizer.load_state_dict(self.optimizer_state())

    def restore_scheduler(self, scheduler) -> None:
        if scheduler is not None and self.state.get("scheduler") is not None:
            scheduler.load_state_dict(self.state["scheduler"])

    def restore_rng(self, generators: Mapping[str, torch.Generator] | None = None) -> None:
        """The global Python, numpy and torch random states, and the stage's own `generators`."""
        python_state = self.state["rng"]["python"]
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
        name, keys, position, has_gauss, cached = self.state["rng"]["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
        torch.set_rng_state(self.tensors["rng.torch"])
        cuda_count = len(_with_prefix(self.tensors, "rng.cuda."))
        if cuda_count and torch.cuda.is_available() and torch.cuda.device_count() == cuda_count:
            torch.cuda.set_rng_state_all([self.tensors[f"rng.cuda.{index}"] for index in range(cuda_count)])
        for name, generator in (generators or {}).items():
            generator.set_state(self.tensors[f"generator.{name}"])


def capture(
    step: int,
    *,
    parameters: Mapping[str, torch.Tensor],
    optimizer,
    optimizer_state: dict | None = None,
    scheduler=None,
    generators: Mapping[str, torch.Generator] | None = None,
    stage_state: dict | None = None,
    documents: dict[str, dict] | None = None,
) -> Checkpoint:
    """Everything a resume after `step` needs, copied to the CPU (later training does not change the copy).
    `optimizer_state` stands in for `optimizer.state_dict()` where that holds only this process's shards (FSDP:
    the whole state gathered by `sharding.full_optimizer_state`)."""
    tensors = {f"parameter.{name}": _cpu_copy(tensor) for name, tensor in parameters.items()}
    optimizer_state = optimizer_state if optimizer_state is not None else optimizer.state_dict()
    json_state: dict[str, dict] = {}
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = _cpu_copy(value)
            else:
                json_state.setdefault(str(index), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = cuda_state
    for name, generator in (generators or {}).items():
        tensors[f"generator.{name}"] = generator.get_state()
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    state = {
        "format": FORMAT,
        "step": step,
        "optimizer": {"param_groups": optimizer_state["param_groups"], "state": json_state},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {
            "python": [python_state[0], list(python_state[1]), python_state[2]],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *(_plain(value) for value in numpy_state[2:])],
        },
        "stage": stage_state or {},
    }
    return Checkpoint(step=step, tensors=tensors, state=state, documents=dict(documents or {}))


def write(checkpoint_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` as `step-N` under `checkpoint_dir` and remove the older ones (and any half-written one).

    In a distributed job only rank 0 writes (every rank holds the same state under DDP); the others return at once.
    """
    checkpoint_dir = Path(checkpoint_dir)
    target = checkpoint_dir / f"step-{checkpoint.step:08d}"
    if not distributed.is_main_process():
        return target
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-step-", dir=checkpoint_dir))
    try:
        save_file(
            {key: tensor.contiguous() for key, tensor in checkpoint.tensors.items()},
            str(staging / TENSORS_FILE),
        )
        for name, document in {STATE_FILE: checkpoint.state, **checkpoint.documents}.items():
            # No `default=`: a value JSON cannot hold is an error here, not a string that a resume misreads.
            (staging / name).write_text(json.dumps(json_safe(document), indent=1, sort_keys=True))
        if target.exists():  # the same step again (a cancel right after a periodic checkpoint): same state
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for older in checkpoint_dir.iterdir():
        if older != target and (FOLDER_PATTERN.fullmatch(older.name) or older.name.startswith(".tmp-step-")):
            shutil.rmtree(older, ignore_errors=True)
    return target


def latest(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint folder under `checkpoint_dir`, if any."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    complete = [
        (int(match.group(1)), path)
        for path in checkpoint_dir.iterdir()
        if (match := FOLDER_PATTERN.fullmatch(path.name)) and _complete(path)
    ]
    return max(complete)[1] if complete else None


def read(path: Path) -> Checkpoint:
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint")
    documents = {
        child.name: json.loads(child.read_text())
        for child in path.iterdir()
        if child.suffix == ".json" and child.name != STATE_FILE
    }
    tensors = load_file(str(path / TENSORS_FILE), device="cpu")
    return Checkpoint(step=state["step"], tensors=tensors, state=state, documents=documents, path=path)


def _complete(path: Path) -> bool:
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return state.get("format") == FORMAT and (path / TENSORS_FILE).is_file()


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


def _with_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def _tuples(value):
    """JSON turned the optimizer's tuples (Adam's betas) into lists; torch's own defaults are tuples."""
    return tuple(value) if isinstance(value, list) else value


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
