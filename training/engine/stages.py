"""One entry point over all stages: kind → (config dataclass, stage module), and configs from JSON.

The web form, the CLI, the API and the Celery task all build stage configs through `config_from_dict`, which
reports every bad field by name (`StageConfigError.errors`), so the advanced JSON editor can show field-level errors
and nothing is enqueued on invalid input. All checks live in the config dataclasses themselves (types from their
annotations, ranges in `LIMITS`, cross-field rules in `errors()`, see `common.field_errors`), so a config built in
Python is checked exactly like one from JSON; this module only turns JSON into their arguments.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal

from training.engine.common import (
    PeftSettings,
    StageConfig,
    StageConfigError,
    StageInputs,
    StageResult,
    type_error,
)

if TYPE_CHECKING:
    from training.engine.launcher import LaunchSettings

StageKind = Literal["sft", "reward", "ppo", "contrastive"]


@dataclass(frozen=True)
class StageSpec:
    kind: str
    module: str  # training.engine.<module>, imported lazily: torch/TRL load only where a stage runs
    config_class: str
    data_format: Literal["sft", "pairwise", "prompts"]  # which snapshot file the stage trains on
    produces: Literal["policy", "reward"]
    # Runs on several processes (`processes` > 1): DDP through the Trainer, or `distributed.average_gradients` in an
    # own loop (contrastive, PPO).
    distributed: bool = False
    # Can shard its model over the processes (`sharding` "fsdp", FSDP2): the Trainer stages, and the contrastive
    # and PPO stages in their own loops.
    shards: bool = False


STAGES: dict[str, StageSpec] = {
    "sft": StageSpec("sft", "sft", "SftStageConfig", "sft", "policy", distributed=True, shards=True),
    "reward": StageSpec(
        "reward", "reward_model", "RewardStageConfig", "pairwise", "reward", distributed=True, shards=True
    ),
    "ppo": StageSpec("ppo", "ppo", "PPOConfig", "prompts", "policy", distributed=True, shards=True),
    "contrastive": StageSpec(
        "contrastive",
        "contrastive",
        "ContrastiveStageConfig",
        "pairwise",
        "policy",
        distributed=True,
        shards=True,
    ),
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
    processes_check(kind, config)
    return config


def processes_check(kind: str, config: StageConfig) -> None:
    """StageConfigError when a stage that runs on one process only asks for several, or one that keeps a full copy
    of its models on every process asks to shard them."""
    if config.processes > 1 and not stage_spec(kind).distributed:
        on_several = ", ".join(name for name, spec in STAGES.items() if spec.distributed)
        raise StageConfigError(
            {"processes": f"the {kind} stage runs on one process; only {on_several} run on several"}
        )
    if config.sharding == "fsdp" and not stage_spec(kind).shards:
        sharded = ", ".join(name for name, spec in STAGES.items() if spec.shards)
        raise StageConfigError(
            {
                "sharding": f"the {kind} stage keeps a full copy of its models on every process (ddp); only "
                f"{sharded} shard theirs (fsdp)"
            }
        )


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


def run(config: StageConfig, inputs: StageInputs, launch: LaunchSettings | None = None) -> StageResult:
    """Run the stage `config` belongs to on `inputs`: every stage has the same `run(config, inputs)`. A stage that
    asks for several processes runs as a torch.distributed job of child processes (`launcher`, with `launch`)."""
    if config.processes > 1:
        from training.engine.launcher import run_distributed

        processes_check(kind_of(config), config)
        return run_distributed(config, inputs, launch)
    stage_run: Callable[[StageConfig, StageInputs], StageResult] = import_module(
        f"training.engine.{stage_spec(kind_of(config)).module}"
    ).run
    return stage_run(config, inputs)


# --- validation -------------------------------------------------------------------------------------------
def _build(cls, values: dict, *, prefix: str, errors: dict[str, str]):
    """The config `cls` from JSON `values`, or None with every problem recorded in `errors` by dotted field name.

    Only JSON is handled here (objects become nested configs, `_from_json` converts values); the config
    dataclasses check types, ranges and cross-field rules themselves, in one pass that reports every bad field.
    """
    if not isinstance(values, dict):
        errors[prefix.rstrip(".") or "__all__"] = "must be an object"
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [name for name in values if name not in fields]
    for name in unknown:
        errors[f"{prefix}{name}"] = f"unknown field; known fields: {', '.join(sorted(fields))}"
    kwargs, nested_failed = {}, False
    for name, value in values.items():
        if name not in fields:
            continue
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
            nested = _build(annotation, value, prefix=f"{prefix}{name}.", errors=errors)
            if nested is None:
                nested_failed = True  # its errors are recorded; its default stands in to check the rest
            else:
                kwargs[name] = nested
            continue
        kwargs[name] = _from_json(value, annotation)
    try:
        config = cls(**kwargs)
    except StageConfigError as exc:
        for field, message in exc.errors.items():
            errors.setdefault(f"{prefix}{field}", message)
        return None
    return None if unknown or nested_failed else config


def _from_json(value, annotation):
    """`value` as the field's Python type where JSON cannot say it (floats written as integers, tuples as lists);
    anything else unchanged, for the config's own checks to judge."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is not type(None) and type_error(value, option) is None:
                return _from_json(value, option)
        return value
    if annotation is float and type_error(value, float) is None:
        return float(value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is list and isinstance(value, tuple):
        return list(value)
    return value


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
