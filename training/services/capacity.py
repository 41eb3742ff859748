"""Will a round fit the gpu workers' memory? Checked at launch from engine.memory's estimate, so a configuration
that cannot fit is refused with the numbers (not an out-of-memory error an hour in), and gradient checkpointing is
turned on for the stages that fit only with it. A stage on several processes that shards its model (`sharding`
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
        )
        fits, estimate = memory.plan(shape, load, device_memory=worker.device_memory_bytes)
        if (
            processes > 1
            and stage_spec(kind).shards
            and (sharding == "fsdp" or (sharding == "auto" and not fits))
        ):
            sharded = dataclasses.replace(load, model_shards=processes)
            fits, estimate = memory.plan(shape, sharded, device_memory=worker.device_memory_bytes)
        if not fits:
            hints = "a smaller batch_size or max_length" + (", or LoRA" if method == "full" else "")
            errors.setdefault(f"{kind}.batch_size", []).append(
                f"This stage needs {estimate.describe()} but the gpu worker's {where} ({worker.device}) has "
                f"{worker.device_memory_bytes / memory.GIB:.0f} GiB. Use {hints}."
            )
        elif estimate.gradient_checkpointing:
            config["gradient_checkpointing"] = True
