"""Run a stage as a torch.distributed job of `config.processes` processes, from the process that asked for it.

`stages.run` comes here when a stage asks for more than one process (one per GPU; gloo processes on a CPU). The
processes are started and watched by torch's elastic launcher (`python -m torch.distributed.run`, torchrun, as a
child process): it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and a free MASTER_PORT for each, and when one
exits with an error or is killed it stops the others and exits non-zero. This module only prepares the job folder
(`distributed.py` describes it), then until torchrun exits: forwards rank 0's progress and log lines to the caller's
`on_progress` and loggers, and turns the caller's `should_stop` into the stop file that every rank checks.

A job that fails raises StageFailure: the rank's own reason when it raised one (a NaN loss), else which rank died
and how; the stage's checkpoints stay, so a resume continues from the last one. The launcher never waits forever:
a dead rank ends the job through torchrun at once, a hung collective through the process group's timeout, and
if the launcher itself is interrupted it stops torchrun and kills any rank still running.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from training.engine import common, distributed
from training.engine.common import StageConfig, StageFailure, StageInputs, StageResult

logger = logging.getLogger(__name__)

LAUNCHER_LOG = "torchrun.log"
LOG_TAIL_CHARS = 3000
# Python's fatal-error report ends with every loaded extension module on one line.
FATAL_ERROR_MODULES = re.compile(r"Extension modules: .*?\(total: \d+\)\n?", re.DOTALL)
# torchrun's summary of a failed job: a block per failed rank with its exit code.
RANK_EXIT = re.compile(r"rank\s*:\s*(\d+) \(local_rank.*?\n\s*exitcode\s*:\s*(-?\d+)")


@dataclass(frozen=True)
class LaunchSettings:
    collective_timeout_s: float = (
        1800.0  # a rank waiting this long in a collective (a peer hangs) fails the job
    )
    poll_s: float = 0.2  # how often the launcher forwards progress and asks should_stop
    shutdown_s: float = 15.0  # after SIGTERM, how long torchrun may take to stop its ranks before SIGKILL


class DistributedStageError(StageFailure):
    """A process of a distributed stage died or failed; the others were stopped. Resumable from its checkpoints."""


def processes_available(device) -> int:
    """How many processes a stage can run on `device` here: the GPUs this process sees, or the CPU's cores."""
    import torch

    if device.type == "cuda":
        return torch.cuda.device_count()
    return os.cpu_count() or 1


def processes_error(processes: int, *, device, owned: int) -> str | None:
    """Why a stage of `processes` processes cannot run on a worker that owns `owned` GPUs (or CPU cores) of
    `device`'s kind, None when it can."""
    if processes <= owned:
        return None
    what = "GPU(s)" if device.type == "cuda" else "CPU core(s)"
    return (
        f"the stage asks for {processes} processes but this worker owns {owned} {what} "
        "(TRAINING_GPUS_PER_WORKER); lower `processes` or run it on a worker with more GPUs"
    )


def run_distributed(
    config: StageConfig, inputs: StageInputs, settings: LaunchSettings | None = None
) -> StageResult:
    """Run the stage of `config` on `config.processes` processes; the same contract as a stage's own `run`."""
    from training.engine.stages import kind_of

    settings = settings or LaunchSettings()
    device = common.pick_device(config.device)
    if message := processes_error(config.processes, device=device, owned=processes_available(device)):
        raise common.DeviceUnavailableError(message)
    job_dir = Path(tempfile.mkdtemp(prefix="stage-job-"))
    process = None
    try:
        _write_job(job_dir, kind_of(config), config, inputs, settings)
        with (job_dir / LAUNCHER_LOG).open("wb") as log:
            process = subprocess.Popen(
                _torchrun_command(config.processes, job_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_rank_environment(),
            )
        events = _EventReader(job_dir / distributed.EVENTS_FILE)
        stop_requested = False
        while True:
            returncode = process.poll()  # first: every event written before the exit is read below
            events.forward(inputs.on_progress)
            if returncode is not None:
                break
            if not stop_requested and inputs.should_stop():
                (job_dir / distributed.STOP_FILE).touch()
                stop_requested = True
            time.sleep(settings.poll_s)
        if returncode != 0:
            raise _failure(job_dir, returncode, config.processes)
        return _result(job_dir)
    finally:
        if process is not None and process.poll() is None:
            _stop(process, settings.shutdown_s)
        _kill_leftover_ranks(job_dir)
        shutil.rmtree(job_dir, ignore_errors=True)


def _write_job(
    job_dir: Path, kind: str, config: StageConfig, inputs: StageInputs, settings: LaunchSettings
) -> None:
    inputs.data.save_to_disk(str(job_dir / distributed.DATA_FOLDER))
    job = {
        "format": distributed.JOB_FORMAT,
        "kind": kind,
        "config": config.to_dict(),
        "base": distributed.model_ref_to_json(inputs.base),
        "reward_model": distributed.model_ref_to_json(inputs.reward_model),
        "out_dir": str(Path(inputs.out_dir).absolute()),
        "launcher_pid": os.getpid(),
        "timeout_s": settings.collective_timeout_s,
    }
    distributed.write_json_atomically(job_dir / distributed.JOB_FILE, job)


def _torchrun_command(processes: int, job_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one host: a local rendezvous on a free port
        f"--nproc-per-node={processes}",
        "--max-restarts=0",  # a failed rank fails the stage; resume is the user's call
        "--monitor-interval=0.2",
        f"--log-dir={job_dir / 'torchelastic'}",  # removed with the job folder (its default is a new /tmp folder)
        "-m",
        "training.engine.distributed",
        str(job_dir),
    ]


def _rank_environment() -> dict[str, str]:
    """This process's environment, with the folder our packages come from first on the ranks' path."""
    environment = dict(os.environ)
    project_root = str(Path(distributed.__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(
        [project_root, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    )
    return environment


class _EventReader:
    """Reads rank 0's complete event lines as they appear and hands them on."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def forward(self, on_progress) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as events:
            events.seek(self.offset)
            chunk = events.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self.offset += len(complete)
        for line in complete.splitlines():
            _forward(json.loads(line), on_progress)


def _forward(event: dict, on_progress) -> None:
    kind = event.pop("type")
    if kind == "step":
        values = {key: float("nan") if value is None else value for key, value in event["values"].items()}
        on_progress(common.StepMetrics(step=event["step"], total_steps=event["total_steps"], values=values))
    elif kind == "phase":
        on_progress(common.PhaseProgress(**event))
    elif kind == "log":
        logging.getLogger(event["logger"]).log(event["level"], "%s", event["message"])


def _result(job_dir: Path) -> StageResult:
    path = job_dir / distributed.RESULT_FILE
    if not path.is_file():
        raise DistributedStageError("the distributed stage ended without a result from rank 0")
    result = json.loads(path.read_text())
    return StageResult(
        status=result["status"],
        artifact_path=Path(result["artifact_path"]) if result["artifact_path"] else None,
        metrics={key: float("nan") if value is None else value for key, value in result["metrics"].items()},
        steps_completed=result["steps_completed"],
    )


def _failure(job_dir: Path, returncode: int, processes: int) -> StageFailure:
    """The exception that says why the job failed: a rank's own StageFailure, else which rank died and how."""
    errors = sorted(
        (
            json.loads(path.read_text())
            for path in job_dir.glob(distributed.ERROR_FILE_PATTERN.format(rank="*"))
        ),
        key=lambda error: error["at"],
    )
    failure_classes = {
        name: value
        for name, value in vars(common).items()
        if isinstance(value, type) and issubclass(value, StageFailure)
    }
    if errors and errors[0]["type"] in failure_classes:  # a reason the user can act on, as the stage said it
        return failure_classes[errors[0]["type"]](errors[0]["message"])
    log_text = (job_dir / LAUNCHER_LOG).read_text(errors="replace")
    readable = FATAL_ERROR_MODULES.sub("", log_text)  # the list of loaded modules would fill the whole tail
    logger.warning("distributed stage failed; torchrun's output ends with:\n%s", readable[-LOG_TAIL_CHARS:])
    failed_rank, exit_code = _first_failed_rank(errors, _exit_codes(log_text))
    error = next((error for error in errors if error["rank"] == failed_rank), None)
    how = _exit_described(exit_code if exit_code is not None else returncode)
    reason = f": {error['type']}: {error['message']}" if error else ""
    who = f"rank {failed_rank}" if failed_rank is not None else "a rank"
    return DistributedStageError(
        f"{who} of the {processes}-process stage {how}{reason}; the other processes were stopped. "
        "Resume the stage to continue from its last checkpoint."
    )


def _exit_codes(log_text: str) -> dict[int, int]:
    """Each failed rank's exit code, from torchrun's summary (a negative code: the signal that ended it)."""
    codes: dict[int, int] = {}
    for match in RANK_EXIT.finditer(log_text):
        codes.setdefault(int(match.group(1)), int(match.group(2)))
    return codes


def _first_failed_rank(errors: list[dict], exit_codes: dict[int, int]) -> tuple[int | None, int | None]:
    """(rank, exit code) of the failure the others follow from. torchrun's own "root cause" is the first exit it
    noticed, which can be a peer it stopped itself; so: a rank that died without raising (killed, out of memory) and
    not by torchrun's SIGTERM, else the rank that raised first, else any rank that failed."""
    raised = {error["rank"] for error in errors}
    died = sorted(rank for rank, code in exit_codes.items() if rank not in raised and code != -signal.SIGTERM)
    if died:
        return died[0], exit_codes[died[0]]
    if errors:
        return errors[0]["rank"], exit_codes.get(errors[0]["rank"])
    if exit_codes:
        rank = min(exit_codes)
        return rank, exit_codes[rank]
    return None, None


def _exit_described(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _stop(process: subprocess.Popen, shutdown_s: float) -> None:
    """torchrun stops its ranks on SIGTERM; SIGKILL when it does not finish in time."""
    process.terminate()
    try:
        process.wait(timeout=shutdown_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _kill_leftover_ranks(job_dir: Path) -> None:
    """SIGKILL every rank of this job still alive (torchrun was killed before it could stop them). A process id is
    trusted only while its command line still names this job's folder, so a reused id is never hit."""
    for pid_file in job_dir.glob(distributed.PID_FILE_PATTERN.format(rank="*")):
        try:
            pid = int(pid_file.read_text())
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # gone already, or no /proc to make sure
        if str(job_dir).encode() in command_line:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
