"""One rank of a stage that runs as a torch.distributed job (`StageConfig.processes` > 1), and what stages ask of it.

`launcher.run_distributed` starts the job with torch's elastic launcher (`torch.distributed.run`, i.e. torchrun),
which gives every process RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and stops all of them when
one fails. Each process runs `python -m training.engine.distributed JOB_DIR`: it reads the stage from the job folder
(plain JSON and a `datasets` folder, nothing unpickled), joins the process group (NCCL on CUDA, gloo on the CPU) and
runs the stage's own `run(config, inputs)`. Transformers' Trainer sees the torchrun environment and trains under DDP.

The job folder is the only channel between the launcher and its ranks:

    job.json             the stage: kind, config, base and reward model, out_dir, launcher pid, timeout
    data/                the stage's rows (`Dataset.save_to_disk`: Arrow files and JSON)
    stop                 appears when the launcher's `should_stop` says so; every rank checks it
    events.jsonl         rank 0 only: progress (StepMetrics, PhaseProgress) and log lines, one JSON object a line
    result.json          rank 0 only, when the stage returned: its StageResult
    error-rank-N.json    a rank that raised: the exception's type and message (the launcher reports the first)
    pid-rank-N           each rank's process id, so the launcher can make sure none outlives a failed job

Every rank answers `should_stop` the same way at the same call (an all-reduce of the stop flag), so all ranks stop
at the same micro-batch and no collective is left waiting. Checkpoints and artifacts are written by rank 0 only
(`is_main_process`, asked by `checkpoints.write` and `finetuning_methods.save_completed_stage`); a resume reads them
on every rank.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from datetime import timedelta
from importlib import import_module
from pathlib import Path

JOB_FORMAT = "distributed-stage/1"
JOB_FILE = "job.json"
DATA_FOLDER = "data"
STOP_FILE = "stop"
EVENTS_FILE = "events.jsonl"
RESULT_FILE = "result.json"
ERROR_FILE_PATTERN = "error-rank-{rank}.json"
PID_FILE_PATTERN = "pid-rank-{rank}"
# Loggers whose records rank 0 sends to the launcher, which logs them again in the worker (its log tail).
FORWARDED_LOGGERS = ("training.engine", "transformers.trainer", "trl")


def world_size() -> int:
    """Processes of the distributed job this process belongs to (1: not in one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True outside a distributed job and on rank 0: the one process that writes checkpoints and artifacts."""
    return rank() == 0


def per_process_batch(global_batch: int) -> int:
    """Each rank's share of a global micro-batch (`StageConfig.batch_size`; its config check makes it divide)."""
    return max(1, global_batch // world_size())


def shard(rows: list) -> list:
    """This rank's contiguous share of a global batch (all of it outside a distributed job), as the Trainer's
    sharded data loader splits one: rank r of n gets the r-th n-th."""
    size, index = world_size(), rank()
    return rows[index * len(rows) // size : (index + 1) * len(rows) // size]


def average_gradients(parameters) -> None:
    """What DDP does to the gradients, for the stages with their own loop: each becomes the mean over the ranks, so
    every rank takes the same optimizer step (outside a distributed job: nothing). Call it after the backward
    passes of a step's micro-batches, on every rank."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.AVG if _nccl() else dist.ReduceOp.SUM)
            if not _nccl():  # gloo has no average
                parameter.grad.div_(world_size())


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """`values` (a step's metrics) averaged over the ranks, every rank calling it; unchanged outside a job."""
    if world_size() == 1 or not values:
        return values
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")
    names = sorted(values)
    summed = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return {name: float(total) / world_size() for name, total in zip(names, summed.tolist(), strict=True)}


def masked_moments(values, mask):
    """Mean and (biased) variance of `values` where `mask` is 1, over the entries of every rank together, every
    rank calling it: one all-reduce of (sum, sum of squares, count), so each rank gets what one process would
    compute over the concatenation of the ranks' batches (PPO's global whitening). Outside a job it reduces
    nothing. Both come back as 0-d tensors in `values`' dtype on its device; summed in float64, so the one-pass
    variance E[x²] − E[x]² loses nothing that matters at float32."""
    import torch

    values64, mask64 = values.double(), mask.double()
    sums = torch.stack([(values64 * mask64).sum(), (values64.square() * mask64).sum(), mask64.sum()])
    if world_size() > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    total, squares, count = sums.unbind()
    count = count.clamp(min=1)
    mean = total / count
    variance = (squares / count - mean.square()).clamp(min=0)
    return mean.to(values.dtype), variance.to(values.dtype)


def all_ranks_agree(flag: bool, device) -> bool:
    """True when `flag` is true on every rank (every rank calling it at the same point); `flag` outside a job.
    For a loop whose length each rank would otherwise decide alone (a rollout ending when its rows have ended),
    so that all ranks run it equally long and the collectives inside it keep matching up."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    agreed = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


def gather_from_ranks(value) -> list:
    """Every rank's `value` (a small picklable object, a random generator's state), in rank order, on every rank
    (each calling it); `[value]` outside a job. For state that differs between ranks but that rank 0 alone
    writes into a checkpoint."""
    if world_size() == 1:
        return [value]
    import torch.distributed as dist

    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _nccl() -> bool:
    import torch.distributed as dist

    return dist.get_backend() == "nccl"


def process_group_init(device, timeout_s: float) -> None:
    """Join the torchrun job's process group: NCCL between GPUs, gloo on the CPU. A collective that waits longer
    than `timeout_s` (a peer died or hangs) raises instead of hanging the job."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s), device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))


class StopAgreement:
    """The ranks' `should_stop`: stop when the launcher asks (the stop file) or is gone, decided together.

    Every rank calls it at the same points of the same loop (the Trainer's micro-batches), so the all-reduce
    (maximum of the ranks' flags) matches up, and every rank sees the same answer: all stop at the same micro-batch,
    within one optimizer step of the request. Once the answer is yes it stays yes without another collective.
    """

    def __init__(self, stop_file: Path, device, launcher_pid: int | None):
        self.stop_file = stop_file
        self.device = device
        self.launcher_pid = launcher_pid
        self.stopped = False

    def __call__(self) -> bool:
        if self.stopped:
            return True
        import torch
        import torch.distributed as dist

        asked = self.stop_file.exists() or not _alive(self.launcher_pid)
        flag = torch.tensor([1 if asked else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stopped = bool(flag.item())
        return self.stopped


def _alive(pid: int | None) -> bool:
    """Whether the launcher still runs: without it nobody records the result, so the ranks stop (and checkpoint)."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class EventLog:
    """Rank 0's progress and log lines, appended to `events.jsonl` one complete line at a time."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, event: dict) -> None:
        from training.engine.common import json_safe

        with self.path.open("a", encoding="utf-8") as events:
            events.write(json.dumps(json_safe(event)) + "\n")

    def on_progress(self, progress) -> None:
        from training.engine.common import PhaseProgress

        kind = "phase" if isinstance(progress, PhaseProgress) else "step"
        self.write({"type": kind, **asdict(progress)})


class _ForwardedLogs(logging.Handler):
    def __init__(self, events: EventLog):
        super().__init__(level=logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.events.write(
                {
                    "type": "log",
                    "logger": record.name,
                    "level": record.levelno,
                    "message": record.getMessage(),
                }
            )
        except Exception:  # a log line must never fail the stage
            self.handleError(record)


def write_json_atomically(path: Path, payload: dict) -> None:
    from training.engine.common import json_safe

    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(json_safe(payload), sort_keys=True))
    os.replace(partial, path)


def model_ref_to_json(ref) -> dict | None:
    if ref is None:
        return None
    return {
        "path": str(ref.path),
        "name": ref.name,
        "adapter_path": str(ref.adapter_path) if ref.adapter_path else None,
    }


def model_ref_from_json(values: dict | None):
    from training.engine.common import ModelRef

    if values is None:
        return None
    adapter = values.get("adapter_path")
    return ModelRef(
        path=Path(values["path"]), name=values["name"], adapter_path=Path(adapter) if adapter else None
    )


def run_rank(job_dir: Path) -> None:
    """Run this process's rank of the stage in `job_dir` (see the module's docstring for the folder's files)."""
    from datasets import load_from_disk

    from training.engine import stages
    from training.engine.common import StageInputs, ignore_progress, pick_device

    this_rank = int(os.environ["RANK"])
    (job_dir / PID_FILE_PATTERN.format(rank=this_rank)).write_text(str(os.getpid()))
    try:
        job = json.loads((job_dir / JOB_FILE).read_text())
        if job.get("format") != JOB_FORMAT:
            raise ValueError(f"{job_dir} holds no {JOB_FORMAT} job")
        config = stages.config_from_dict(job["kind"], job["config"])
        device = pick_device(config.device)  # cuda:LOCAL_RANK on a GPU worker
        process_group_init(device, float(job["timeout_s"]))
        events = EventLog(job_dir / EVENTS_FILE) if is_main_process() else None
        if events is not None:
            handler = _ForwardedLogs(events)
            for name in FORWARDED_LOGGERS:
                logging.getLogger(name).addHandler(handler)
            logging.getLogger("training.engine").setLevel(logging.INFO)
        inputs = StageInputs(
            data=load_from_disk(str(job_dir / DATA_FOLDER)),
            base=model_ref_from_json(job["base"]),
            out_dir=Path(job["out_dir"]),
            on_progress=events.on_progress if events is not None else ignore_progress,
            should_stop=StopAgreement(job_dir / STOP_FILE, device, job.get("launcher_pid")),
            reward_model=model_ref_from_json(job.get("reward_model")),
        )
        # The stage module itself: `stages.run` would launch a distributed job again.
        result = import_module(f"training.engine.{stages.stage_spec(job['kind']).module}").run(config, inputs)
        if is_main_process():
            write_json_atomically(
                job_dir / RESULT_FILE,
                {
                    "status": result.status,
                    "artifact_path": str(result.artifact_path) if result.artifact_path else None,
                    "metrics": result.metrics,
                    "steps_completed": result.steps_completed,
                },
            )
    except BaseException as exc:
        write_json_atomically(
            job_dir / ERROR_FILE_PATTERN.format(rank=this_rank),
            {
                "rank": this_rank,
                "type": type(exc).__name__,
                "message": str(exc),
                "at": time.time(),
                "traceback": traceback.format_exc()[-4000:],
            },
        )
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        if this_rank == 0 and not _alive(_launcher_pid(job_dir)):
            shutil.rmtree(job_dir, ignore_errors=True)  # nobody else is left to remove it


def _launcher_pid(job_dir: Path) -> int | None:
    try:
        return json.loads((job_dir / JOB_FILE).read_text()).get("launcher_pid")
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import record

    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        raise SystemExit("usage: python -m training.engine.distributed JOB_DIR (started by torchrun)")
    record(run_rank)(Path(arguments[0]))
    # The rank's work is done and its files are written (atomically). Skip the interpreter's teardown: under load a
    # C++ thread of torch/gloo is now and then still joinable when its owner is destroyed there, and the process dies
    # of SIGABRT ("terminate called without an active exception") after a stage that succeeded, which fails the job.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
