"""FSDP2 for the Trainer stages (SFT, reward model): each process holds a shard of the weights, gradients and AdamW
state instead of a full copy, so a full fine-tune bigger than one GPU trains over several.

`StageConfig.sharding` says how a stage on several processes holds its model: "ddp" (a full copy on every process,
the gradients averaged), "fsdp" (`fully_shard` on every decoder layer and on the whole model: the parameters are
DTensors sharded over the processes, each layer's full weights gathered for its forward and backward pass and freed
after), or "auto" (DDP when the stage fits one device as `memory.plan` estimates it, else FSDP). The contrastive
stage shards too, in its own loop (its reference model as well), and so does PPO in its own (`ppo.shard_models`: the
policy, its critic as a group of its own, a full fine-tune's frozen reference and the frozen reward model).

Code that reads the root group's parameters (the embeddings, the final norm, the output layer) outside the model's
own forward, as `fast_paths.response_log_probs` and the LoRA mixture's router do, runs through `in_root_forward`:
as part of a forward of the root, so they are gathered for it and their gradients reduce-scattered after the backward
pass.

The model is sharded here, before the Trainer sees it, and handed over as a model that is distributed already
(transformers' `is_distributed_loading_by_transformers`, so accelerate neither wraps it in DDP nor shards it again):
accelerate's own FSDP plugin is switched off on a CPU (it serves only GPU-like devices), and the CPU with gloo is where
the tests run. The checkpoints keep the one layout of `checkpoints.py`: the trained parameters and the optimizer's
state are gathered in full onto rank 0, which writes them; a resume gives every rank its own shard of them again, so a
checkpoint does not depend on the number of processes. The artifact is a normal model folder: the full state dict is
gathered onto rank 0's CPU and loaded into a plain copy of the model, which is saved as on one process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import nn

from training.engine import distributed, fast_paths, memory
from training.engine.common import ModelRef, StageConfig, pick_device
from training.engine.finetuning_methods import base_dtype_for, load_model_ref, prepare_model

Result = TypeVar("Result")
ROOT_FORWARD_METHOD = "_call_in_root_forward"

logger = logging.getLogger(__name__)


def uses_fsdp(
    config: StageConfig, model: nn.Module, device, *, kind: str, available: int | None = None
) -> bool:
    """Whether this stage shards its model: `sharding` "fsdp", or "auto" when it does not fit one device
    (`available` bytes; default: `device_memory(device)`). Outside a distributed job (one process) nothing is
    sharded. Every rank decides the same (same model, same config, devices of the same kind)."""
    if distributed.world_size() == 1 or config.sharding == "ddp":
        return False
    if config.sharding == "fsdp":
        return True
    fits, estimate = memory.plan(
        model_shape(model),
        stage_load(config, device, kind=kind),
        device_memory=device_memory(device) if available is None else available,
    )
    if not fits:
        logger.info(
            "sharding 'auto': the stage needs %s on one device, more than it has: FSDP", estimate.describe()
        )
    return not fits


def model_shape(model: nn.Module) -> memory.ModelShape:
    return memory.ModelShape.from_config(
        model.config.to_dict(), sum(parameter.numel() for parameter in model.parameters())
    )


def stage_load(config: StageConfig, device, *, kind: str) -> memory.StageLoad:
    return memory.StageLoad(
        kind=kind,
        method=config.peft.method,
        micro_batch_rows=memory.micro_batch_rows(
            kind,
            batch_size=config.batch_size,
            processes=distributed.world_size(),
            mini_batch_size=getattr(config, "mini_batch_size", None),
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        ),
        sequence_tokens=config.max_length,
        device_kind=torch.device(device).type,
        reward_model=getattr(config, "reward_source", "reward_model") != "rules",
        rollout_rows=max(1, config.batch_size // distributed.world_size()) if kind == "ppo" else 0,
    )


def device_memory(device) -> int:
    """What one process may plan to use: its GPU's memory, or on a CPU its share of the machine's memory (the
    ranks of a CPU job share one host)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host // distributed.world_size()


def shard_model(model: nn.Module, device) -> nn.Module:
    """`fully_shard` every decoder layer, then the whole model (the embeddings, the final norm and the output layer
    or score head form the root's group), in place; returns the model, marked for the Trainer as distributed.

    Each layer's parameters are gathered just before its forward pass and freed after it (`reshard_after_forward`),
    and gathered again for its backward pass: the peak holds one layer's full weights besides the shards. On CUDA the
    gathers and the matmuls run in bf16 with gradients reduced in fp32, as autocast would compute them anyway."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if torch.device(device).type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    for layer in fast_paths.decoder_layers(model):
        fully_shard(layer, reshard_after_forward=True, mp_policy=policy)
    fully_shard(model, reshard_after_forward=True, mp_policy=policy)
    held = sum(parameter.to_local().numel() for parameter in model.parameters())
    total = sum(parameter.numel() for parameter in model.parameters())
    logger.info(
        "FSDP: the model's parameters, gradients and optimizer state are sharded over %d processes; "
        "this one holds %.1f%% of its %d parameters",
        distributed.world_size(),
        100 * held / total,
        total,
    )
    # transformers' Trainer then leaves the wrapping to the model (no DDP around DTensor parameters, no second
    # sharding by accelerate) and only prepares autocast.
    # (Read through PEFT's wrappers from the transformers model inside.)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner._is_distributed_loading_by_transformers = True
    return model


def shard_head(module: nn.Module) -> nn.Module:
    """`fully_shard` a small trained module that lives outside the model (PPO's critic) as a group of its own, in
    fp32: its gradients are reduce-scattered by its own backward hook like the model's, and as DTensors on the same
    mesh they are clipped together with the model's (`clip_grad_norm`). A [1, hidden] weight leaves rank 1 of 2 an
    empty shard; FSDP2 shards unevenly."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(module, reshard_after_forward=True)
    return module


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` for plain or sharded (DTensor) gradients: the norm of the whole gradient
    over all ranks (a sharded one's partial norms reduced first, as torchtitan does), the gradients scaled in
    place; returns that norm as a plain tensor, the same on every rank."""
    from torch.distributed.tensor import DTensor

    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if not any(isinstance(grad, DTensor) for grad in grads):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def in_root_forward(model: nn.Module, function: Callable[..., Result], *args, **kwargs) -> Result:
    """`function(*args, **kwargs)`, which reads the parameters of `model`'s root group without calling its forward,
    run as a forward of the root (`register_fsdp_forward_method`): FSDP gathers the root's parameters before it and
    hooks its outputs, so the backward pass reduce-scatters their gradients. On a model that is not sharded: the
    plain call. Without gradients (a reference pass, an evaluation) the root's parameters are freed after it, as no
    backward pass follows to free them."""
    if not is_sharded(model):
        return function(*args, **kwargs)
    from torch.distributed.fsdp import register_fsdp_forward_method

    if ROOT_FORWARD_METHOD not in vars(model):
        setattr(model, ROOT_FORWARD_METHOD, _call.__get__(model))
        register_fsdp_forward_method(model, ROOT_FORWARD_METHOD)
    result = getattr(model, ROOT_FORWARD_METHOD)(function, *args, **kwargs)
    if not torch.is_grad_enabled():
        model.reshard()
    return result


def _call(model: nn.Module, function: Callable[..., Result], *args, **kwargs) -> Result:
    return function(*args, **kwargs)


def _full(tensor: torch.Tensor) -> torch.Tensor | None:
    """The whole of `tensor` on rank 0's CPU, None on the other ranks: a DTensor is gathered from every rank (each
    calling it, in the same order), one tensor at a time, so no rank holds more than its shards and one whole tensor
    on its device. (`checkpoints.capture` copies it: later training does not change the copy.)"""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu") if distributed.is_main_process() else None


def _shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` split as `like` (a DTensor parameter) is: this rank's shard, cut locally (every rank holds `full`)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    full = full.to(device=like.device, dtype=like.dtype)
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def full_parameters(parameters: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`parameters` (a sharded model's trained ones, by name) whole on rank 0's CPU, empty on the other ranks
    (which write no checkpoint); every rank calls it."""
    gathered = {name: _full(parameter) for name, parameter in parameters.items()}
    return gathered if distributed.is_main_process() else {}


def restore_parameters(parameters: Mapping[str, nn.Parameter], saved: Mapping[str, torch.Tensor]) -> None:
    """Copy `saved` (whole tensors, on every rank) into the sharded `parameters`, each rank its own shard."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for name, parameter in parameters.items():
            shard = _shard_like(saved[name], parameter)
            if isinstance(parameter, DTensor):
                parameter.to_local().copy_(shard.to_local())
            else:
                parameter.copy_(shard)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with every sharded state tensor (AdamW's moments) gathered whole on the CPU: the
    state dict one process would have, the same parameter indices, on rank 0 (the other ranks get no per-parameter
    state: they write no checkpoint). Every rank calls it."""
    state_dict = optimizer.state_dict()
    gathered = {
        index: {key: _full(value) if torch.is_tensor(value) else value for key, value in values.items()}
        for index, values in state_dict["state"].items()
    }
    return {
        "state": gathered if distributed.is_main_process() else {},
        "param_groups": state_dict["param_groups"],
    }


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """Load a whole optimizer state (`full_optimizer_state`'s, from a checkpoint) into the optimizer of a sharded
    model: each per-parameter tensor of its parameter's shape becomes this rank's shard of it."""
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    sharded_state = {}
    for index, values in state_dict["state"].items():
        parameter = parameters[int(index)]
        sharded_state[index] = {
            key: _shard_like(value, parameter)
            if torch.is_tensor(value) and value.shape == parameter.shape
            else value
            for key, value in values.items()
        }
    optimizer.load_state_dict({"state": sharded_state, "param_groups": state_dict["param_groups"]})


def whole_training_state(
    parameters: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer, *, sharded: bool
) -> tuple[Mapping[str, torch.Tensor], dict | None]:
    """(parameters, optimizer state) for `checkpoints.capture` of an own-loop stage: as they are (None: the
    optimizer's own state dict), or on a sharded model gathered whole onto rank 0 (every rank calls it)."""
    if not sharded:
        return parameters, None
    return full_parameters(parameters), full_optimizer_state(optimizer)


def restore_training_state(
    checkpoint, parameters: Mapping[str, nn.Parameter], optimizer: torch.optim.Optimizer, *, sharded: bool
) -> None:
    """The trained `parameters` and the optimizer's state from a `checkpoints.Checkpoint` (whole tensors): copied
    in, or on a sharded model each rank's shard of them."""
    if sharded:
        restore_parameters(parameters, checkpoint.parameters(parameters))
        load_full_optimizer_state(optimizer, checkpoint.optimizer_state())
    else:
        checkpoint.restore_parameters(parameters)
        checkpoint.restore_optimizer(optimizer)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded model on rank 0's CPU (an empty dict on the other ranks); every rank calls
    it. One tensor at a time is gathered, so no device holds more than its shards and one full tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_model(
    model: nn.Module, config: StageConfig, base: ModelRef, task: str, adapter_name: str | None = None
) -> nn.Module | None:
    """The sharded `model` as a plain one on rank 0's CPU (None elsewhere), every rank calling it: its whole state
    dict gathered, loaded into a fresh copy of the model built as the stage built it from `base` (`task`, the same
    PEFT wrapping, `adapter_name` for the adapters it carries), which `save_completed_stage` writes as on one process (a LoRA adapter merged, a bottleneck
    adapter alone)."""
    state = full_model_state(model)
    if not distributed.is_main_process():
        return None
    plain, _ = load_model_ref(
        base,
        pick_device("cpu"),
        task=task,
        dtype=base_dtype_for(pick_device(config.device), config.peft),
        adapter_name=adapter_name,
    )
    plain = prepare_model(plain, config.peft)
    plain.load_state_dict(state, strict=True)
    return plain
