"""How many GPUs a worker lends a stage, checked when a run is launched and when a worker claims a stage.

A stage config's `processes` (default 1) asks for a torch.distributed job of that many processes, one per GPU
(`training.engine.launcher`). Each gpu worker owns TRAINING_GPUS_PER_WORKER GPUs (unset: all it sees); a stage that
asks for more fails at launch when the gpu workers' heartbeats say none owns that many, and at the latest when a
worker claims it, with the numbers, before anything is loaded.
"""

from __future__ import annotations

from django.conf import settings

from core.models import WorkerHeartbeat
from core.services import worker_gpus_owned
from training.engine import launcher
from training.estimates import device_kind


def stage_processes_error(*, processes: int, device) -> str | None:
    """Why a stage asking for `processes` cannot run on this worker's `device`, None when it can."""
    if processes <= 1:
        return None
    owned = worker_gpus_owned(visible=launcher.processes_available(device))
    return launcher.processes_error(processes, device=device, owned=owned)


def launch_settings() -> launcher.LaunchSettings:
    return launcher.LaunchSettings(collective_timeout_s=settings.TRAINING_DISTRIBUTED_TIMEOUT_S)


def stages_fit_workers(*, stages: list[tuple[str, str, dict]], errors: dict[str, list[str]]) -> None:
    """Record a `<stage>.processes` error for each stage asking for more GPUs than the largest gpu worker owns (as
    its heartbeat says; nothing is checked while no GPU worker has reported)."""
    workers = [
        worker
        for worker in WorkerHeartbeat.objects.filter(queue="gpu")
        if device_kind(worker.device) == "cuda"
    ]
    if not workers:
        return
    largest = max(worker.device_count for worker in workers)
    for kind, _method, config in stages:
        if config.get("processes", 1) > largest:
            errors.setdefault(f"{kind}.processes", []).append(
                f"This stage asks for {config['processes']} GPUs but the largest gpu worker owns {largest} "
                "(TRAINING_GPUS_PER_WORKER). Ask for fewer, or add a worker that owns more GPUs."
            )
