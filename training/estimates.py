"""How long a round takes: an estimate before it starts, refined from the run's own steps while it runs.

Work is counted in FLOPs per optimizer step: about 6·N per trained token (forward and backward; 4·N with LoRA or an
adapter, which skip the frozen weights' gradients) and 2·N per forward-only token (Kaplan et al. 2020), with N the
base model's parameters and the token counts from the config and the data's mean row length (its row count matters
where a stage goes over all of it: the reward model's held-out evaluation). Speed is the FLOP/s
that this installation's finished stages of the same kind reached on the same kind of device (the median of the
last few); with none yet, a stated assumption per device kind. Loading and saving the models adds a fixed overhead.
Read-only: no writes, no torch.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet
from django.utils import timezone

from core.models import WorkerHeartbeat
from training.engine import stages as engine_stages
from training.models import StageRun, TrainingRun
from training.services.datasets import DataSize, snapshot_file_sizes

CHARS_PER_TOKEN = 4.0  # English text with a BPE tokenizer, JSON punctuation included
# Sustained FLOP/s assumed until a stage of that kind has finished on the device: 2 CPU cores in fp32, one
# datacenter GPU in bf16 at a realistic utilisation, an Apple GPU.
FALLBACK_FLOP_S = {"cpu": 5e10, "cuda": 1e14, "mps": 5e12}
# PPO's rollouts decode token by token (small matrix products), so they reach a fraction of the training speed.
FALLBACK_EFFICIENCY = {"ppo": 0.25}
OVERHEAD_S = {"cpu": 15.0, "cuda": 20.0, "mps": 15.0}  # loading the models, saving the artifact
MEASURED_STAGES = 5  # the newest finished stages of a kind that set its measured speed
RATIO_BOUNDS = (0.1, 10.0)  # how far a run's own steps may move the estimate of its later stages
DEVICE_NAMES = {"cpu": "CPU", "cuda": "GPU", "mps": "Apple GPU"}


def device_kind(device: str) -> str:
    """ "cuda:0", "cuda:NVIDIA H200", "cuda" → "cuda"; anything unknown counts as a CPU."""
    kind = (device or "").split(":", 1)[0].strip().lower()
    return kind if kind in FALLBACK_FLOP_S else "cpu"


def expected_device_kind(config_device: str = "auto") -> str:
    """The device a stage will train on: its config's, else the gpu workers' (their newest heartbeat), else the
    device of the newest stage that ran, else a CPU."""
    if config_device and config_device != "auto":
        return device_kind(config_device)
    heartbeat = WorkerHeartbeat.objects.filter(queue="gpu").order_by("-last_seen").first()
    if heartbeat is not None and heartbeat.device:
        return device_kind(heartbeat.device)
    last = StageRun.objects.exclude(device="").order_by("-started_at").first()
    return device_kind(last.device) if last else "cpu"


def sequence_tokens(kind: str, config: dict, size: DataSize | None) -> int:
    """Tokens of one training sequence: the data's mean row length, cut at max_length (max_length without data).

    Pairwise rows hold a prompt and two answers, about two sequences' worth; PPO's sequence is the prompt (a
    prompts row) plus up to max_new_tokens.
    """
    max_length = int(config["max_length"])
    if size is None or size.rows == 0:
        return max_length
    tokens = size.chars_per_row / CHARS_PER_TOKEN
    if kind == "ppo":
        new = int(config["max_new_tokens"])
        return int(min(tokens, max_length - new)) + new
    if engine_stages.stage_spec(kind).data_format == "pairwise":
        tokens /= 2
    return max(1, int(min(tokens, max_length)))


def flops_per_step(kind: str, config: dict, num_parameters: int, tokens: int) -> float:
    n = max(int(num_parameters), 1)
    trained = (6 if (config.get("peft") or {}).get("method", "full") == "full" else 4) * n
    forward = 2 * n
    rows = int(config["batch_size"]) * int(config["gradient_accumulation_steps"])
    if kind == "sft":
        return trained * rows * tokens
    if kind == "reward":
        return trained * rows * 2 * tokens  # chosen and rejected
    if kind == "contrastive":
        return (trained + forward) * rows * 2 * tokens  # the reference scores both answers too
    if kind == "ppo":
        batch = int(config["batch_size"])
        rollout = forward * batch * tokens
        scoring = forward * batch * tokens * 3  # the reward model, then the policy and the reference
        update = trained * batch * tokens * int(config["ppo_epochs"])
        return rollout + scoring + update
    raise ValueError(f"unknown stage kind {kind!r}")


def evaluation_flops(
    kind: str, config: dict, num_parameters: int, size: DataSize | None, tokens: int
) -> float:
    """Work done once at the end: the reward model scores its held-out pairs (both answers, forward only)."""
    if kind != "reward" or size is None:
        return 0.0
    held_out = int(size.rows * float(config.get("held_out_fraction", 0.0)))
    return 2 * max(int(num_parameters), 1) * held_out * 2 * tokens


def _metric_times(stage: StageRun) -> list[tuple[int, float]]:
    return [
        (point["step"], point["at"]) for point in stage.metrics or [] if "at" in point and "step" in point
    ]


def measured_seconds_per_step(stage: StageRun, *, now: datetime | None = None) -> float | None:
    """Seconds per step of this stage so far: between its first and latest timed steps, else since it started
    (which counts the loading too), None before its first step."""
    times = _metric_times(stage)
    if len(times) >= 2 and times[-1][0] > times[0][0]:
        return (times[-1][1] - times[0][1]) / (times[-1][0] - times[0][0])
    if stage.step <= 0 or stage.started_at is None:
        return None
    if times:
        end = times[-1][1]
    else:
        end = (stage.finished_at or now or timezone.now()).timestamp()
    return max(end - stage.started_at.timestamp(), 0.0) / stage.step


def _data_format(kind: str) -> str:
    return engine_stages.stage_spec(kind).data_format


def _stage_work(stage: StageRun, sizes: dict[str, DataSize]) -> float:
    num_parameters = stage.run.base_model.num_parameters
    tokens = sequence_tokens(stage.kind, stage.config, sizes.get(_data_format(stage.kind)))
    return flops_per_step(stage.kind, stage.config, num_parameters, tokens)


def _finished_stages(kind: str, device: str) -> QuerySet[StageRun]:
    return (
        StageRun.objects.filter(kind=kind, status=StageRun.Status.SUCCEEDED, device__startswith=device)
        .exclude(started_at=None)
        .exclude(finished_at=None)
        .select_related("run__base_model")
        .order_by("-finished_at")
    )


def measured_flop_s(kind: str, device: str) -> tuple[float, int] | None:
    """(median FLOP/s, how many stages) of the newest finished stages of `kind` on `device`, or None."""
    rates = []
    for stage in _finished_stages(kind, device)[:MEASURED_STAGES]:
        seconds = measured_seconds_per_step(stage)
        if not seconds:
            continue
        sizes = snapshot_file_sizes(content_hash=stage.run.dataset_hash, counts=stage.run.dataset_counts)
        rates.append(_stage_work(stage, sizes) / seconds)
    return (statistics.median(rates), len(rates)) if rates else None


@dataclass(frozen=True)
class StageEstimate:
    kind: str
    steps: int
    seconds_per_step: float
    overhead_seconds: float
    basis: str  # where the speed comes from, in words

    @property
    def seconds(self) -> float:
        return self.overhead_seconds + self.steps * self.seconds_per_step


@dataclass(frozen=True)
class RunEstimate:
    device: str
    stages: list[StageEstimate]

    @property
    def seconds(self) -> float:
        return sum(stage.seconds for stage in self.stages)


def stage_estimate(
    *, kind: str, config: dict, num_parameters: int, sizes: dict[str, DataSize], device: str
) -> StageEstimate:
    size = sizes.get(_data_format(kind))
    tokens = sequence_tokens(kind, config, size)
    work = flops_per_step(kind, config, num_parameters, tokens)
    name = DEVICE_NAMES[device]
    measured = measured_flop_s(kind, device)
    if measured is not None:
        speed, count = measured
        basis = f"measured on {count} earlier {kind} stage{'s' if count > 1 else ''} on this {name}"
    else:
        speed = FALLBACK_FLOP_S[device] * FALLBACK_EFFICIENCY.get(kind, 1.0)
        basis = (
            f"assumed {format_flop_s(speed)} for {kind} on a {name} (no {kind} stage has finished on one yet)"
        )
    evaluation = evaluation_flops(kind, config, num_parameters, size, tokens) / speed
    return StageEstimate(
        kind=kind,
        steps=int(config["max_steps"]),
        seconds_per_step=work / speed,
        overhead_seconds=OVERHEAD_S[device] + evaluation,
        basis=basis,
    )


def launch_estimate(
    *,
    stages: list[tuple[str, dict]],
    num_parameters: int,
    sizes: dict[str, DataSize],
    device: str | None = None,
) -> RunEstimate:
    """The estimate of a round before it starts: `stages` are (kind, validated config) in order."""
    device = device or expected_device_kind(stages[0][1].get("device", "auto") if stages else "auto")
    return RunEstimate(
        device=device,
        stages=[
            stage_estimate(
                kind=kind, config=config, num_parameters=num_parameters, sizes=sizes, device=device
            )
            for kind, config in stages
        ],
    )


@dataclass(frozen=True)
class StageEta:
    stage: StageRun
    seconds_left: float | None  # None: finished, or nothing to go on
    measured: (
        bool  # True: from this stage's own steps; False: the estimate (or the estimate scaled by the run)
    )
    seconds_per_step: float | None
    overran: bool = False  # before its first step, and already longer than estimated


@dataclass(frozen=True)
class RunEta:
    seconds_left: float | None
    stages: dict[int, StageEta]  # by stage pk


def run_eta(*, run: TrainingRun, stages: list[StageRun] | None = None, now: datetime | None = None) -> RunEta:
    """Time left per stage and for the run: a running stage from its own steps (the estimate before its first),
    stages still pending from their estimates scaled by how this run's measured steps compare with theirs."""
    now = now or timezone.now()
    stages = sorted(stages if stages is not None else run.stages.all(), key=lambda stage: stage.position)
    finished = run.status in (
        TrainingRun.Status.SUCCEEDED,
        TrainingRun.Status.FAILED,
        TrainingRun.Status.CANCELLED,
    )
    sizes = snapshot_file_sizes(content_hash=run.dataset_hash, counts=run.dataset_counts)
    device = next((device_kind(s.device) for s in stages if s.device), None)
    device = device or expected_device_kind(stages[0].config.get("device", "auto") if stages else "auto")
    etas: dict[int, StageEta] = {}
    ratio = 1.0
    total = 0.0
    for stage in stages:
        if finished or stage.status in (
            StageRun.Status.SUCCEEDED,
            StageRun.Status.FAILED,
            StageRun.Status.CANCELLED,
        ):
            if stage.status == StageRun.Status.SUCCEEDED and (seconds := measured_seconds_per_step(stage)):
                ratio = _ratio(seconds, _estimate_for(stage, sizes, device))
            continue
        estimate = _estimate_for(stage, sizes, device)
        if stage.status == StageRun.Status.RUNNING:
            seconds = measured_seconds_per_step(stage, now=now)
            if seconds is not None:
                ratio = _ratio(seconds, estimate)
                left = max(stage.total_steps - stage.step, 0) * seconds
                eta = StageEta(stage, left, measured=True, seconds_per_step=seconds)
            else:
                elapsed = (now - stage.started_at).total_seconds() if stage.started_at else 0.0
                planned = estimate.seconds * ratio
                eta = StageEta(
                    stage,
                    max(planned - elapsed, 0.0),
                    measured=False,
                    seconds_per_step=estimate.seconds_per_step * ratio,
                    overran=elapsed > planned,
                )
        else:
            eta = StageEta(
                stage,
                estimate.seconds * ratio,
                measured=False,
                seconds_per_step=estimate.seconds_per_step * ratio,
            )
        etas[stage.pk] = eta
        total += eta.seconds_left or 0.0
    return RunEta(seconds_left=None if finished or not etas else total, stages=etas)


def _estimate_for(stage: StageRun, sizes: dict[str, DataSize], device: str) -> StageEstimate:
    # A stored config may be partial (runs launched before a field existed): the stage's defaults fill it in.
    config = {
        **engine_stages.config_defaults(stage.kind),
        **stage.config,
        "max_steps": stage.total_steps or stage.config.get("max_steps", 1),
    }
    return stage_estimate(
        kind=stage.kind,
        config=config,
        num_parameters=stage.run.base_model.num_parameters,
        sizes=sizes,
        device=device,
    )


def _ratio(measured_seconds: float, estimate: StageEstimate) -> float:
    if estimate.seconds_per_step <= 0:
        return 1.0
    low, high = RATIO_BOUNDS
    return min(max(measured_seconds / estimate.seconds_per_step, low), high)


def format_duration(seconds: float) -> str:
    """45 s, 12 min, 1 h 05 min: the precision a person plans with."""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{max(round(seconds), 1)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_flop_s(value: float) -> str:
    for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOP/s"
