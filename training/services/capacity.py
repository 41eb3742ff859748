"""Will a round fit the gpu workers' memory? Checked at launch from engine.memory's estimate, so a configuration
that cannot fit is refused with the numbers (not an out-of-memory error an hour in), gradient checkpointing is
turned on for the stages that fit only with it, and a PPO stage that fits only in smaller micro-batches gets more
`gradient_accumulation_steps`. A stage on several processes that shards its model (`sharding`
"fsdp", or "auto" when a full copy does not fit one GPU) is planned with a shard of the model per GPU."""

from __future__ import annotations

import dataclasses

from core.models import WorkerHeartbeat
from registry.models import ModelVersion
from training.engine import memory
from training.engine.stages import stage_spec
from training.estimates import device_kind


def gpu_worker_memory() -> WorkerHeartbeat | None:
    """The newest heartbeat of a `gpu`-queue worker that reported its memory (None: unknown, nothing is checked)."""
    return (
        WorkerHeartbeat.objects.filter(queue="gpu", device_memory_bytes__isnull=False)
        .order_by("-last_seen")
        .first()
    )


def _ppo_in_smaller_micro_batches(
    shape: memory.ModelShape,
    load: memory.StageLoad,
    estimate: memory.MemoryEstimate,
    config: dict,
    processes: int,
    worker: WorkerHeartbeat,
) -> tuple[bool, memory.MemoryEstimate]:
    """(fits, estimate) of a PPO stage that does not fit as configured, with its optimizer steps accumulated over
    more micro-batches: the smallest `gradient_accumulation_steps` that fits is set in `config` (the same step, as
    ppo_update weighs each micro-batch by its tokens; fewer rows a forward, so a little slower)."""
    per_process = max(1, int(config.get("mini_batch_size") or config["batch_size"]) // processes)
    for accumulation in range(int(config.get("gradient_accumulation_steps", 1)) + 1, per_process + 1):
        rows = memory.micro_batch_rows(
            "ppo",
            batch_size=config["batch_size"],
            processes=processes,
            mini_batch_size=per_process * processes,
            gradient_accumulation_steps=accumulation,
        )
        if rows == load.micro_batch_rows:
            continue  # the same largest micro-batch as the accumulation before
        load = dataclasses.replace(load, micro_batch_rows=rows)
        fits, estimate = memory.plan(shape, load, device_memory=worker.device_memory_bytes)
        if fits:
            config["gradient_accumulation_steps"] = accumulation
            return True, estimate
    return False, estimate  # of the smallest micro-batch tried: what even one row a forward needs


def stages_fit_memory(
    *, stages: list[tuple[str, str, dict]], base_model: ModelVersion, errors: dict[str, list[str]]
) -> None:
    """Record a `<stage>.batch_size` error for each stage that cannot fit; set `gradient_checkpointing` in the
    configs of those that fit only with it (the configs are the plan's, changed in place)."""
    worker = gpu_worker_memory()
    if worker is None or not base_model.num_parameters:
        return
    shape = memory.ModelShape.from_config(base_model.config or {}, base_model.num_parameters)
    if not (shape.hidden_size and shape.num_layers):
        return  # an architecture whose config we cannot read: the stage's own error handling decides
    kind_of_device = device_kind(worker.device)
    where = "GPU" if kind_of_device == "cuda" else "machine"
    for kind, method, config in stages:
        processes, sharding = config.get("processes", 1), config.get("sharding", "auto")
        rows = memory.micro_batch_rows(  # each GPU's share of a micro-batch
            kind,
            batch_size=config["batch_size"],
            processes=processes,
            mini_batch_size=config.get("mini_batch_size"),
            gradient_accumulation_steps=config.get("gradient_accumulation_steps", 1),
        )
        load = memory.StageLoad(
            kind,
            method,
            rows,
            config["max_length"],
            kind_of_device,
            reward_model=config.get("reward_source", "reward_model") != "rules",
            rollout_rows=max(1, int(config["batch_size"]) // processes) if kind == "ppo" else 0,
        )
        fits, estimate = memory.plan(shape, load, device_memory=worker.device_memory_bytes)
        if (
            processes > 1
            and stage_spec(kind).shards
            and (sharding == "fsdp" or (sharding == "auto" and not fits))
        ):
            load = dataclasses.replace(load, model_shards=processes)
            fits, estimate = memory.plan(shape, load, device_memory=worker.device_memory_bytes)
        if not fits and kind == "ppo":
            fits, estimate = _ppo_in_smaller_micro_batches(shape, load, estimate, config, processes, worker)
        if not fits:
            hints = ("a smaller max_length" if kind == "ppo" else "a smaller batch_size or max_length") + (
                ", or LoRA" if method == "full" else ""
            )
            errors.setdefault(f"{kind}.batch_size", []).append(
                f"This stage needs {estimate.describe()} but the gpu worker's {where} ({worker.device}) has "
                f"{worker.device_memory_bytes / memory.GIB:.0f} GiB. Use {hints}."
            )
        elif estimate.gradient_checkpointing:
            config["gradient_checkpointing"] = True
