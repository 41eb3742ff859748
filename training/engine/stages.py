"""One entry point over all stages: kind → (config dataclass, stage module), and config validation from JSON.

The web form, the CLI, the API and the Celery task all build stage configs through `config_from_dict`, which
reports every bad field by name (`StageConfigError.errors`), so the advanced JSON editor can show field-level errors
and nothing is enqueued on invalid input. Types are checked here, while converting JSON; ranges and cross-field rules
live in the config dataclasses themselves (`LIMITS` and `errors()`), so a config built in Python is checked too.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Literal

from training.engine.common import (
    PeftSettings,
    StageConfig,
    StageConfigError,
    StageInputs,
    StageResult,
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
    "reward": StageSpec("reward", "reward_model", "RewardStageConfig", "pairwise", "reward"),
    "ppo": StageSpec("ppo", "ppo", "PPOConfig", "prompts", "policy"),
    "contrastive": StageSpec("contrastive", "contrastive", "ContrastiveStageConfig", "pairwise", "policy"),
}


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


def kind_of(config: StageConfig) -> str:
    """The stage kind a config belongs to, from its class."""
    for spec in STAGES.values():
        if (
            type(config).__module__ == f"training.engine.{spec.module}"
            and type(config).__name__ == spec.config_class
        ):
            return spec.kind
    raise StageConfigError({"__all__": f"{type(config).__name__} is not the config of a stage"})


def run(config: StageConfig, inputs: StageInputs) -> StageResult:
    """Run the stage `config` belongs to on `inputs`: every stage has the same `run(config, inputs)`."""
    stage_run: Callable[[StageConfig, StageInputs], StageResult] = import_module(
        f"training.engine.{stage_spec(kind_of(config)).module}"
    ).run
    return stage_run(config, inputs)


# --- validation -------------------------------------------------------------------------------------------
def _build(cls, values: dict, *, prefix: str, errors: dict[str, str]):
    if not isinstance(values, dict):
        errors[prefix.rstrip(".") or "__all__"] = "must be an object"
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in values:
        if name not in fields:
            errors[f"{prefix}{name}"] = f"unknown field; known fields: {', '.join(sorted(fields))}"
    kwargs, nested_failed = {}, False
    for name, value in values.items():
        if name not in fields:
            continue
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            nested = _build(annotation, value, prefix=f"{prefix}{name}.", errors=errors)
            if nested is None:
                nested_failed = True  # its errors are recorded; its default stands in to check the rest
            else:
                kwargs[name] = nested
            continue
        converted, message = _convert(value, annotation)
        if message is not None:
            errors[f"{prefix}{name}"] = message
        else:
            kwargs[name] = converted
    # Fields of the wrong type take their defaults here, so the range checks still report every other field.
    own_errors = any(key.startswith(prefix) and "." not in key[len(prefix) :] for key in errors)
    try:
        config = cls(**kwargs)
        return None if own_errors or nested_failed else config
    except StageConfigError as exc:  # the dataclass's own range and cross-field checks, by field
        for field, message in exc.errors.items():
            errors.setdefault(f"{prefix}{field}", message)
        return None
    except (TypeError, ValueError) as exc:  # other checks of a stage's __post_init__
        if own_errors:
            return None
        from training.engine.reward_rules import RuleSpecError

        field = "rules" if isinstance(exc, RuleSpecError) else "__all__"
        errors[f"{prefix}{field}"] = str(exc)
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
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None, "must be a number"
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            return None, "must be a finite number"
        return (value, None) if math.isfinite(value) else (None, "must be a finite number")
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
    "StageInputs",
    "config_defaults",
    "config_from_dict",
    "kind_of",
    "run",
    "stage_spec",
]
