"""One entry point over all stages: kind → (config dataclass, run_stage), and config validation from JSON.

The web form, the CLI and the Celery task all build stage configs through `config_from_dict`, which reports
every bad field by name (`StageConfigError.errors`), so the advanced JSON editor can show field-level errors and
nothing is enqueued on invalid input.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Literal

from training.engine.common import (
    ModelRef,
    PeftSettings,
    ProgressCallback,
    StageConfig,
    StageResult,
    StopCallback,
)

StageKind = Literal["sft", "reward", "ppo", "contrastive"]


@dataclass(frozen=True)
class StageSpec:
    kind: str
    module: str  # training.engine.<module>, imported lazily: torch/TRL load only where a stage runs
    config_class: str
    data_format: Literal["sft", "pairwise", "prompts"]  # which snapshot file the stage trains on
    produces: Literal["policy", "reward"]


STAGES: dict[str, StageSpec] = {
    "sft": StageSpec("sft", "sft", "SftStageConfig", "sft", "policy"),
    "reward": StageSpec("reward", "reward", "RewardStageConfig", "pairwise", "reward"),
    "ppo": StageSpec("ppo", "ppo", "PPOConfig", "prompts", "policy"),
    "contrastive": StageSpec("contrastive", "contrastive", "ContrastiveStageConfig", "pairwise", "policy"),
}


class StageConfigError(ValueError):
    """Invalid stage configuration; `errors` maps a dotted field name (or "__all__") to a message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))


def stage_spec(kind: str) -> StageSpec:
    try:
        return STAGES[kind]
    except KeyError:
        raise StageConfigError(
            {"kind": f"unknown stage {kind!r}; choose one of {', '.join(STAGES)}"}
        ) from None


def config_class(kind: str) -> type[StageConfig]:
    spec = stage_spec(kind)
    return getattr(import_module(f"training.engine.{spec.module}"), spec.config_class)


def config_from_dict(kind: str, values: dict[str, Any] | None) -> StageConfig:
    """Build and validate a stage config; unknown fields and wrong types are errors, missing ones take defaults."""
    cls = config_class(kind)
    errors: dict[str, str] = {}
    config = _build(cls, values or {}, prefix="", errors=errors)
    if errors:
        raise StageConfigError(errors)
    return config


def config_defaults(kind: str) -> dict[str, Any]:
    return config_class(kind)().to_dict()


def run(
    kind: str,
    config: StageConfig,
    data,
    base: ModelRef,
    out_dir: Path,
    on_progress: ProgressCallback,
    should_stop: StopCallback,
    reward_model: ModelRef | None = None,
) -> StageResult:
    spec = stage_spec(kind)
    run_stage: Callable[..., StageResult] = import_module(f"training.engine.{spec.module}").run_stage
    extra = {"reward_model": reward_model} if kind == "ppo" else {}
    return run_stage(config, data, base, out_dir, on_progress, should_stop, **extra)


# --- validation -------------------------------------------------------------------------------------------
_POSITIVE = {"max_steps", "batch_size", "gradient_accumulation_steps", "max_length", "lora_r", "lora_alpha",
             "adapter_bottleneck", "mini_batch_size", "ppo_epochs", "max_new_tokens", "eval_batch_size",
             "reward_batch_size"}  # fmt: skip
_NON_NEGATIVE = {"checkpoint_every", "seed", "log_every"}


def _build(cls, values: dict, *, prefix: str, errors: dict[str, str]):
    if not isinstance(values, dict):
        errors[prefix.rstrip(".") or "__all__"] = "must be an object"
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in values:
        if name not in fields:
            errors[f"{prefix}{name}"] = f"unknown field; known fields: {', '.join(sorted(fields))}"
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            continue
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, prefix=f"{prefix}{name}.", errors=errors)
            continue
        converted, message = _convert(value, annotation)
        if message is None:
            message = _range_error(name, converted)
        if message is not None:
            errors[f"{prefix}{name}"] = message
        else:
            kwargs[name] = converted
    if any(key.startswith(prefix) for key in errors):
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a stage's own __post_init__ checks
        from training.engine.rewards import RuleSpecError

        field = "rules" if isinstance(exc, RuleSpecError) else "__all__"
        errors[f"{prefix}{field}"] = str(exc)
        return None


def _range_error(name: str, value) -> str | None:
    if name in _POSITIVE and isinstance(value, int | float) and value <= 0:
        return "must be greater than 0"
    if name in _NON_NEGATIVE and isinstance(value, int | float) and value < 0:
        return "must be 0 or more"
    if name == "learning_rate" and value <= 0:
        return "must be greater than 0"
    if name.endswith("_fraction") and isinstance(value, float) and not 0 <= value < 1:
        return "must be in [0, 1)"
    return None


def _convert(value, annotation) -> tuple[Any, str | None]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None, None
        options = [arg for arg in args if arg is not type(None)]
        messages = []
        for option in options:
            converted, message = _convert(value, option)
            if message is None:
                return converted, None
            messages.append(message)
        return None, " or ".join(messages)
    if origin is Literal:
        if value in args:
            return value, None
        return None, f"must be one of {', '.join(repr(a) for a in args)}"
    if annotation is bool:
        return (value, None) if isinstance(value, bool) else (None, "must be true or false")
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (None, "must be an integer")
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return (float(value), None) if ok else (None, "must be a number")
    if annotation is str:
        return (value, None) if isinstance(value, str) else (None, "must be a string")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return None, "must be a list"
        item_type = args[0] if args else Any
        if item_type is str and not all(isinstance(item, str) for item in value):
            return None, "must be a list of strings"
        if item_type is dict or typing.get_origin(item_type) is dict:
            if not all(isinstance(item, dict) for item in value):
                return None, "must be a list of objects"
        return (tuple(value) if origin is tuple else list(value)), None
    if origin is dict or annotation is dict:
        return (value, None) if isinstance(value, dict) else (None, "must be an object")
    return value, None


__all__ = [
    "STAGES",
    "PeftSettings",
    "StageConfigError",
    "config_defaults",
    "config_from_dict",
    "run",
    "stage_spec",
]
